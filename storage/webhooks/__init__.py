"""Webhooks as stored data: endpoints, the outbox of events, and delivery attempts.

Owns `WebhookStore` (`store`, the one store over the webhook tables), its detached `records`, and the `outbox`
writer the job and batch stores call inside their own transactions (where an event goes and whether its target
subscribes). Signing, sending and backoff belong to `workers.webhooks`, which never touches tables.
"""
