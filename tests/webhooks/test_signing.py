"""Standard Webhooks signing (`workers.webhooks.payload.webhook_headers`, by the `standardwebhooks` package),
verified by the same package, and pinned to a vector computed by hand so a change in the package's output shows."""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import time

from tests.support.webhooks import standard_webhook_valid
from workers.webhooks.payload import webhook_headers


def new_secret() -> str:
    return "whsec_" + base64.b64encode(os.urandom(24)).decode()


def test_headers_verify() -> None:
    secret = new_secret()
    body = b'{"type":"job.succeeded","data":{"id":"x"}}'
    now = int(time.time())
    headers = webhook_headers([secret], "msg_1", now, body)
    assert (headers["webhook-id"], headers["webhook-timestamp"]) == ("msg_1", str(now))
    assert standard_webhook_valid(secret, headers, body)


def test_tampered_body_and_wrong_secret_fail() -> None:
    secret = new_secret()
    body = b'{"a":1}'
    headers = webhook_headers([secret], "msg_2", int(time.time()), body)
    assert not standard_webhook_valid(secret, headers, b'{"a":2}')
    assert not standard_webhook_valid(new_secret(), headers, body)


def test_stale_timestamp_fails() -> None:
    secret = new_secret()
    old = int(time.time()) - 3600
    headers = webhook_headers([secret], "msg_3", old, b"{}")
    assert not standard_webhook_valid(secret, headers, b"{}")
    assert standard_webhook_valid(secret, headers, b"{}", now=old + 10)  # fresh relative to its own time


def test_rotation_sends_one_signature_per_secret() -> None:
    current, previous = new_secret(), new_secret()
    headers = webhook_headers([current, previous], "msg_4", int(time.time()), b"{}")
    parts = headers["webhook-signature"].split(" ")
    assert len(parts) == 2 and all(p.startswith("v1,") for p in parts)
    assert standard_webhook_valid(current, headers, b"{}")
    assert standard_webhook_valid(previous, headers, b"{}")


def test_signatures_match_a_vector_computed_by_hand() -> None:
    # the example of the Standard Webhooks / Svix documentation, recomputed from the spec: base64 of
    # HMAC-SHA256 over "{id}.{timestamp}.{body}", keyed with the base64-decoded part of the secret after `whsec_`
    secret, msg_id, timestamp, body = ("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "msg_p5jXN8AQM9LWM0D4loKWxJek",
                                       1614265330, b'{"test": 2432232314}')
    key = base64.b64decode(secret.removeprefix("whsec_"))
    by_hand = "v1," + base64.b64encode(hmac.new(key, f"{msg_id}.{timestamp}.".encode() + body,
                                                hashlib.sha256).digest()).decode()
    assert by_hand == "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
    assert webhook_headers([secret], msg_id, timestamp, body) == {
        "webhook-id": msg_id, "webhook-timestamp": str(timestamp), "webhook-signature": by_hand}
