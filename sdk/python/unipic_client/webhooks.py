"""Verifying a webhook delivery: `verify(body, headers, secret)` returns a typed `WebhookEvent`.

Checks the Standard Webhooks signature (`webhook-signature: v1,<base64 HMAC-SHA256>`, several during a secret
rotation) and the timestamp (5 minutes of tolerance) with the `standardwebhooks` package, then parses the
body. It knows nothing of how deliveries are made; deduplicate on `event.id` (the `webhook-id`).
"""

from __future__ import annotations

from collections.abc import Mapping

from standardwebhooks.webhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError as _Invalid

from unipic_client.errors import WebhookVerificationError
from unipic_client.models import WebhookEvent


def verify(body: bytes | str, headers: Mapping[str, str], secret: str) -> WebhookEvent:
    """The event, if `body` was signed with `secret` (`whsec_...`) and is fresh; else
    `WebhookVerificationError`. Pass the raw body bytes as received, not re-encoded JSON."""
    lowered = {k.lower(): v for k, v in headers.items()}
    try:
        payload = Webhook(secret).verify(body, lowered)
    except _Invalid as exc:
        raise WebhookVerificationError(str(exc)) from None
    except (ValueError, TypeError) as exc:  # a malformed header or body
        raise WebhookVerificationError(f"malformed webhook: {exc}") from None
    return WebhookEvent.model_validate({**payload, "id": lowered.get("webhook-id")})
