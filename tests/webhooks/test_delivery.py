"""One POST to a checked address: Host kept, no redirects followed, answer snippet bounded."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from egress.url_guard import WebhookTarget
from tests.support.webhooks import Receiver
from workers.webhooks.delivery import SNIPPET_BYTES, post_webhook


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


def target(receiver: Receiver, host: str = "hooks.example.test", addresses: tuple[str, ...] = ("127.0.0.1",),
           path: str = "/in") -> WebhookTarget:
    return WebhookTarget(url=f"http://{host}:{receiver.port}{path}", scheme="http", host=host,
                         port=receiver.port, addresses=addresses)


def test_posts_to_the_checked_address_with_the_original_host(receiver: Receiver) -> None:
    result = post_webhook(target(receiver), {"webhook-id": "msg_1"}, b'{"x":1}', timeout=5)
    assert result.ok and result.status_code == 200 and result.snippet == "ok"
    got = receiver.wait_for(1)[0]
    assert got.path == "/in" and got.body == b'{"x":1}'
    assert got.headers["host"] == f"hooks.example.test:{receiver.port}"
    assert got.headers["webhook-id"] == "msg_1" and got.headers["content-type"] == "application/json"


def test_redirects_are_not_followed_and_snippet_is_bounded(receiver: Receiver) -> None:
    receiver.respond(302, {"location": "http://169.254.169.254/"}, b"x" * 5000)
    result = post_webhook(target(receiver), {}, b"{}", timeout=5)
    assert result.status_code == 302 and not result.ok
    assert result.snippet is not None and len(result.snippet) == SNIPPET_BYTES
    assert len(receiver.received) == 1


def test_retry_after_is_reported(receiver: Receiver) -> None:
    receiver.respond(503, {"retry-after": "120"})
    assert post_webhook(target(receiver), {}, b"{}", timeout=5).retry_after == "120"


def test_refused_connection_tries_the_next_address_then_reports(receiver: Receiver) -> None:
    closed = Receiver()
    closed.close()  # a port nobody listens on
    dead = target(closed)
    result = post_webhook(dead, {}, b"{}", timeout=5)
    assert result.status_code is None and result.error and "connect" in result.error
    both = WebhookTarget(url=f"http://h.test:{receiver.port}/in", scheme="http", host="h.test",
                         port=receiver.port, addresses=("127.0.0.2", "127.0.0.1"))
    # the receiver listens on 127.0.0.1 only, so 127.0.0.2 refuses and the second address is used
    assert post_webhook(both, {}, b"{}", timeout=5).ok
