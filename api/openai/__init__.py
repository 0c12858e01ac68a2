"""The OpenAI-compatible surface: `/v1/images/generations`, `/v1/images/edits`, `/v1/chat/completions`.

Owns OpenAI's request and response shapes and their translation to our job bodies (`schemas`), OpenAI's error
shape (`errors`) and the routes (`routes`), each a synchronous view over an ordinary job. It submits through
`api.intake` and waits through `api.events`; it knows nothing of the worker gateway.
"""
