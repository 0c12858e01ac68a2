"""`POST /v1/batches` with an `Idempotency-Key`, and the batch list's counts."""

from __future__ import annotations

from typing import Any

from tests.support.api import generate_body


def test_same_key_and_body_returns_the_first_batch_and_enqueues_nothing_more(
        client: Any, auth: dict[str, str], redis_client: Any) -> None:
    # Given a batch submitted with an Idempotency-Key (1024 px: queue unipic.generate.l, no worker runs it)
    items = [generate_body(width=1024, height=1024, custom_id=f"k{i}") for i in range(3)]
    headers = {**auth, "Idempotency-Key": "batch-key-1"}
    first = client.post("/v1/batches", json=items, headers=headers)
    assert first.status_code == 202, first.text
    depth = redis_client.llen("unipic.generate.l")
    # When the same batch is sent again with the same key (a client retry after a network blip)
    again = client.post("/v1/batches", json=items, headers=headers)
    # Then the answer is the first batch (200), and no job or message was added
    assert again.status_code == 200, again.text
    assert again.json()["id"] == first.json()["id"] and again.json()["counts"]["queued"] == 3
    assert redis_client.llen("unipic.generate.l") == depth
    page = client.get("/v1/jobs", params={"batch_id": first.json()["id"]}, headers=auth).json()
    assert len(page["data"]) == 3


def test_same_key_with_another_body_is_409(client: Any, auth: dict[str, str]) -> None:
    headers = {**auth, "Idempotency-Key": "batch-key-2"}
    assert client.post("/v1/batches", json=[generate_body(width=1024, height=1024)],
                       headers=headers).status_code == 202
    r = client.post("/v1/batches", json=[generate_body(width=1024, height=1024, prompt="other")], headers=headers)
    assert r.status_code == 409 and r.json()["error"]["code"] == "idempotency_conflict"


def test_keys_are_per_owner(client: Any, make_key: Any) -> None:
    body = [generate_body(width=1024, height=1024)]
    ids = []
    for _ in range(2):
        _record, auth = make_key()
        r = client.post("/v1/batches", json=body, headers={**auth, "Idempotency-Key": "shared-key"})
        assert r.status_code == 202, r.text
        ids.append(r.json()["id"])
    assert ids[0] != ids[1]


def test_batch_list_shows_counts(client: Any, auth: dict[str, str]) -> None:
    # Given a batch of two queued jobs
    r = client.post("/v1/batches", json=[generate_body(width=1024, height=1024)] * 2, headers=auth)
    assert r.status_code == 202, r.text
    # When the batches are listed
    (listed,) = client.get("/v1/batches", headers=auth).json()["data"]
    # Then the list shows the same counts as GET /v1/batches/{id}
    assert listed["counts"]["queued"] == 2
    assert listed["counts"] == client.get(f"/v1/batches/{listed['id']}", headers=auth).json()["counts"]
