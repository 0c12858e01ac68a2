"""The webhook routes over the real app: delivery log, replay, endpoints, default URL, secret rotation, SSRF."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import update

from storage.tables import WebhookEvent
from tests.support.claims import claim_job, lease_keys
from tests.support.webhooks import Clock, Receiver, standard_webhook_valid
from workers.webhooks.dispatcher import WebhookDispatcher

Key = tuple[Any, dict[str, str]]


@pytest.fixture(scope="module")
def api(migrated: Any) -> Iterator[Any]:
    from api.app import create_app

    app = create_app(migrated.model_copy(update={"rate_limit_per_minute": 100_000}))
    with TestClient(app, raise_server_exceptions=False) as client:
        yield app, client


@pytest.fixture(scope="module")
def client(api: Any) -> TestClient:
    return api[1]


@pytest.fixture
def make_key(api: Any, session_factory: Any) -> Iterator[Callable[[], Key]]:
    made: list[str] = []

    def make() -> Key:
        record, plaintext = api[0].state.services.keys.create("webhooks-test")
        made.append(record.id)
        return record, {"Authorization": f"Bearer {plaintext}"}

    yield make
    with session_factory.begin() as s:
        s.execute(update(WebhookEvent).where(WebhookEvent.owner_id.in_(made), WebhookEvent.status == "pending")
                  .values(status="dropped"))


@pytest.fixture
def deliver(settings: Any, session_factory: Any, object_store: Any, clock: Clock) -> WebhookDispatcher:
    return WebhookDispatcher(settings, session_factory, object_store, clock=clock)


def submit(client: TestClient, auth: dict[str, str], **fields: Any) -> dict[str, Any]:
    body = {"kind": "generate", "prompt": "a red cube", "width": 256, "height": 256, "steps": 4, **fields}
    response = client.post("/v1/jobs", json=body, headers=auth)
    assert response.status_code == 202, response.text
    return response.json()


def finish(job_store: Any, job_id: str) -> None:
    # the API may still be stamping `last_enqueued_at` from a background thread: the claim waits for that row
    # lock when nothing else is claimable (the policy's liveness rule), so no retry is needed
    [claim] = claim_job(job_store, job_id, "worker-routes")
    assert job_store.complete(claim, lease_keys(claim))


def test_deliveries_and_replay_are_scoped_to_the_caller(
    client: TestClient, make_key: Callable[[], Key], receiver: Receiver, job_store: Any,
    deliver: WebhookDispatcher,
) -> None:
    (_, alice), (_, bob) = make_key(), make_key()
    job = submit(client, alice, webhook_url=receiver.url + "/a", webhook_events=["job.succeeded"])
    finish(job_store, job["id"])
    assert deliver.dispatch_due() == {"delivered": 1}
    log = client.get(f"/v1/jobs/{job['id']}/deliveries", headers=alice)
    assert log.status_code == 200, log.text
    (event,) = log.json()["data"]
    assert event["type"] == "job.succeeded" and event["status"] == "delivered" and event["attempts"] == 1
    assert event["attempt_log"][0]["status_code"] == 200
    assert event["id"] == receiver.received[0].headers["webhook-id"]
    # another key sees nothing of it
    assert client.get(f"/v1/jobs/{job['id']}/deliveries", headers=bob).status_code == 404
    assert client.post(f"/v1/webhook-events/{event['id']}/replay", headers=bob).json()["error"]["code"] == "not_found"
    assert client.post("/v1/webhook-events/nonsense/replay", headers=alice).status_code == 404
    # replay queues it now; the dispatcher sends it again with the same id
    replay = client.post(f"/v1/webhook-events/{event['id']}/replay", headers=alice)
    assert replay.status_code == 202 and replay.json()["status"] == "pending"
    assert deliver.dispatch_due() == {"delivered": 1}
    assert [r.headers["webhook-id"] for r in receiver.wait_for(2)] == [event["id"]] * 2
    assert client.get("/v1/jobs/x/deliveries").status_code == 401


def test_default_endpoint_receives_jobs_without_their_own_url_and_can_be_reenabled(
    client: TestClient, make_key: Callable[[], Key], receiver: Receiver, job_store: Any,
    deliver: WebhookDispatcher,
) -> None:
    (_, alice), (_, bob) = make_key(), make_key()
    url = receiver.url + "/default"
    put = client.put("/v1/webhook-endpoints/default", json={"url": url}, headers=alice)
    assert put.status_code == 200, put.text
    assert put.json()["url"] == url and "job.succeeded" in put.json()["events"]
    endpoint_id = put.json()["endpoint"]["id"]
    (listed,) = client.get("/v1/webhook-endpoints", headers=alice).json()["data"]
    assert listed["id"] == endpoint_id and listed["is_default"] and listed["enabled"]
    assert client.get("/v1/webhook-endpoints", headers=bob).json()["data"] == []
    # a job without webhook_url reports to the default; the receiver answers 410 Gone
    receiver.respond(410)
    job = submit(client, alice)
    finish(job_store, job["id"])
    deliver.dispatch_due()
    (listed,) = client.get("/v1/webhook-endpoints", headers=alice).json()["data"]
    assert not listed["enabled"] and listed["disabled_reason"] == "410 Gone"
    assert client.post(f"/v1/webhook-endpoints/{endpoint_id}/enable", headers=bob).status_code == 404
    enabled = client.post(f"/v1/webhook-endpoints/{endpoint_id}/enable", headers=alice)
    assert enabled.status_code == 200 and enabled.json()["enabled"]
    second = submit(client, alice)
    finish(job_store, second["id"])
    deliver.dispatch_due()
    assert receiver.received[-1].json["data"]["id"] == second["id"]


def test_rotation_route_returns_the_new_secret_and_both_sign(
    client: TestClient, make_key: Callable[[], Key], receiver: Receiver, job_store: Any,
    deliver: WebhookDispatcher, clock: Clock,
) -> None:
    _, alice = make_key()
    old = client.get("/v1/webhook-secret", headers=alice).json()
    assert old["secret"].startswith("whsec_") and old["previous_secret_expires_at"] is None
    rotated = client.post("/v1/webhook-secret/rotate", headers=alice)
    assert rotated.status_code == 200
    new = rotated.json()
    assert new["secret"] != old["secret"] and new["previous_secret_expires_at"] is not None
    job = submit(client, alice, webhook_url=receiver.url + "/rot", webhook_events=["job.succeeded"])
    finish(job_store, job["id"])
    deliver.dispatch_due()
    got = receiver.wait_for(1)[0]
    now = clock().timestamp()
    assert standard_webhook_valid(old["secret"], got.headers, got.body, now=now)
    assert standard_webhook_valid(new["secret"], got.headers, got.body, now=now)


@pytest.mark.parametrize("url", [
    "https://127.0.0.1/hook", "https://10.0.0.5/hook", "https://169.254.169.254/latest/meta-data",
    "https://[::1]/hook", "https://localhost/hook", "http://example.com/plain-http",
])
def test_unsafe_urls_are_refused_at_submission(migrated: Any, url: str, strict_client: Any) -> None:
    client, auth = strict_client
    job = client.post("/v1/jobs", json={"kind": "generate", "prompt": "x", "webhook_url": url}, headers=auth)
    assert job.status_code == 422 and job.json()["error"]["code"] == "unsafe_webhook_url", job.text
    assert job.json()["error"]["field"] == "webhook_url"
    default = client.put("/v1/webhook-endpoints/default", json={"url": url}, headers=auth)
    assert default.status_code == 422 and default.json()["error"]["code"] == "unsafe_webhook_url"


@pytest.fixture(scope="module")
def strict_client(migrated: Any) -> Iterator[tuple[TestClient, dict[str, str]]]:
    """An app with the production defaults: no allowlist, https only."""
    from api.app import create_app

    app = create_app(migrated.model_copy(update={"webhook_allowlist": [], "webhook_allow_http": False,
                                                 "rate_limit_per_minute": 100_000}))
    _, plaintext = app.state.services.keys.create("strict")
    with TestClient(app, raise_server_exceptions=False) as client:
        yield client, {"Authorization": f"Bearer {plaintext}"}
