"""Rules for outbound HTTP to user-given URLs (webhook targets): what the service may connect to.

A leaf package: standard library only, importing nothing of ours, so the API (checking a URL when a client
names it) and the webhook worker (checking it again right before each delivery) share one guard.
"""
