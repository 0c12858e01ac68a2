"""Standard Webhooks signing, checked against the independent verifier in `receiver.py`."""

from __future__ import annotations

import base64
import os
import time

import pytest

from tests.support.webhooks import standard_webhook_valid
from workers.webhooks.signing import SignatureError, secret_bytes, sign, verify, webhook_headers


def new_secret() -> str:
    return "whsec_" + base64.b64encode(os.urandom(24)).decode()


def test_headers_verify_with_an_independent_implementation() -> None:
    secret = new_secret()
    body = b'{"type":"job.succeeded","data":{"id":"x"}}'
    headers = webhook_headers([secret], "msg_1", int(time.time()), body)
    assert headers["webhook-id"] == "msg_1"
    assert standard_webhook_valid(secret, headers, body)
    verify(secret, headers, body)


def test_tampered_body_and_wrong_secret_fail() -> None:
    secret = new_secret()
    body = b'{"a":1}'
    headers = webhook_headers([secret], "msg_2", int(time.time()), body)
    assert not standard_webhook_valid(secret, headers, b'{"a":2}')
    assert not standard_webhook_valid(new_secret(), headers, body)
    with pytest.raises(SignatureError):
        verify(secret, headers, b'{"a":2}')


def test_stale_timestamp_fails() -> None:
    secret = new_secret()
    old = int(time.time()) - 3600
    headers = webhook_headers([secret], "msg_3", old, b"{}")
    assert not standard_webhook_valid(secret, headers, b"{}")
    with pytest.raises(SignatureError):
        verify(secret, headers, b"{}")
    verify(secret, headers, b"{}", now=old + 10)  # fresh relative to its own time


def test_rotation_sends_one_signature_per_secret() -> None:
    current, previous = new_secret(), new_secret()
    headers = webhook_headers([current, previous], "msg_4", int(time.time()), b"{}")
    parts = headers["webhook-signature"].split(" ")
    assert len(parts) == 2 and all(p.startswith("v1,") for p in parts)
    assert standard_webhook_valid(current, headers, b"{}")
    assert standard_webhook_valid(previous, headers, b"{}")


def test_published_standard_webhooks_vector() -> None:
    # the example from the Standard Webhooks / Svix documentation
    secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    sig = sign(secret, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, b'{"test": 2432232314}')
    assert sig == "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
    assert secret_bytes(secret) == base64.b64decode("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")


def test_malformed_secret_is_refused() -> None:
    with pytest.raises(ValueError):
        sign("whsec_not base64!", "m", 1, b"")
