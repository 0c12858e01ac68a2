"""Standard Webhooks signatures: the `webhook-id`, `webhook-timestamp` and `webhook-signature` headers.

The signed content is `"{id}.{timestamp}.{body}"`; a signature is `v1,` + base64(HMAC-SHA256(secret, content))
where the secret's bytes are the base64-decoded part after `whsec_`. During a secret rotation the header carries
one signature per live secret, separated by spaces, so receivers holding either secret verify.
`verify` is the receiver's side, for clients and tools. This module knows nothing of HTTP or storage.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import time
from collections.abc import Mapping, Sequence

SECRET_PREFIX = "whsec_"
DEFAULT_TOLERANCE_SECONDS = 300


class SignatureError(ValueError):
    """A webhook whose headers are missing, stale, or whose signature matches none of the secrets."""


def secret_bytes(secret: str) -> bytes:
    """The HMAC key of a `whsec_<base64>` secret."""
    encoded = secret.removeprefix(SECRET_PREFIX)
    try:
        return base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValueError("a webhook secret is 'whsec_' followed by base64") from exc


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """One `v1,<base64>` signature of `body` for message `msg_id` sent at `timestamp` (Unix seconds)."""
    content = f"{msg_id}.{timestamp}.".encode() + body
    digest = hmac.new(secret_bytes(secret), content, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def signature_header(secrets: Sequence[str], msg_id: str, timestamp: int, body: bytes) -> str:
    """The `webhook-signature` value: one signature per secret (current first), space-separated."""
    if not secrets:
        raise ValueError("at least one secret is needed to sign")
    return " ".join(sign(s, msg_id, timestamp, body) for s in secrets)


def webhook_headers(secrets: Sequence[str], msg_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    """The three Standard Webhooks headers for one send."""
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": signature_header(secrets, msg_id, timestamp, body),
    }


def verify(
    secret: str,
    headers: Mapping[str, str],
    body: bytes,
    tolerance_seconds: int = DEFAULT_TOLERANCE_SECONDS,
    now: float | None = None,
) -> None:
    """Check a received webhook; raises `SignatureError` unless one `v1` signature matches and it is fresh."""
    lowered = {k.lower(): v for k, v in headers.items()}
    try:
        msg_id = lowered["webhook-id"]
        timestamp = int(lowered["webhook-timestamp"])
        received = lowered["webhook-signature"].split()
    except (KeyError, ValueError):
        raise SignatureError("missing or malformed webhook headers") from None
    current = time.time() if now is None else now
    if abs(current - timestamp) > tolerance_seconds:
        raise SignatureError("webhook timestamp outside the tolerance window")
    expected = sign(secret, msg_id, timestamp, body)
    if not any(hmac.compare_digest(expected, sig) for sig in received if sig.startswith("v1,")):
        raise SignatureError("no matching signature")
