"""`unipic_client.webhooks.verify` on a real delivery: the stack's webhook worker posts `batch.completed` to a
loopback receiver, and the SDK verifies it with the key's secret. The event links the results manifest."""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import pytest

from tests.support.stack import Stack
from tests.support.webhooks import Receiver
from unipic_client import Client, WebhookVerificationError
from unipic_client.webhooks import verify

pytestmark = pytest.mark.system


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


def test_verify_a_real_batch_completed_delivery(prod_stack: Stack, new_key: str, receiver: Receiver) -> None:
    with Client(prod_stack.url, new_key) as client:
        # Given a batch whose batch.completed event goes to our receiver
        batch = client.submit_batch([{"kind": "generate", "prompt": "w", "size": 64, "steps": 2}],
                                    webhook_url=receiver.url + "/hook", webhook_events=["batch.completed"])
        secret = client.webhook_secret()["secret"]
        # When it is delivered
        (delivery,) = receiver.wait_for(1, timeout=180)
    # Then the SDK verifies it into a typed event that links the manifest
    event = verify(delivery.body, delivery.headers, secret)
    assert event.type == "batch.completed" and event.id == delivery.headers["webhook-id"]
    assert event.batch is not None and event.batch.id == batch.id and event.batch.counts.succeeded == 1
    assert event.batch.manifest_url, "batch.completed must carry the manifest URL"
    manifest = httpx.get(event.batch.manifest_url, timeout=30)
    assert manifest.status_code == 200 and json.loads(manifest.text.splitlines()[0])["status"] == "succeeded"
    # and a tampered body, or another secret, is refused
    with pytest.raises(WebhookVerificationError):
        verify(delivery.body.replace(b"completed", b"complete!"), delivery.headers, secret)
    with pytest.raises(WebhookVerificationError):
        verify(delivery.body, delivery.headers, "whsec_" + "A" * 32)
