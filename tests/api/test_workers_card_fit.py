"""GET /v1/workers shows a CUDA worker's card-fit choice (issue 20, item 5) beside its advertised limits."""

from __future__ import annotations

import secrets
from typing import Any

from storage.fleet.registry import WorkerRegistry
from workers.device.card_fit import choose


def test_workers_view_shows_the_card_fit_choice(client: Any, make_key: Any, session_factory: Any) -> None:
    # Given a worker that chose its limits from a 12 GB card and reports the choice in its heartbeat
    _, auth = make_key()
    choice = choose(11.5, ["generate", "edit", "understand"])
    registry = WorkerRegistry(session_factory)
    worker_id = f"card-fit-test:{secrets.token_hex(4)}"
    registry.register(worker_id=worker_id, hostname="test", pid=1, device="cuda", max_pixels=choice.max_pixels,
                      max_batch=choice.max_batch, queues=[])
    try:
        registry.heartbeat(worker_id, health={"streak": 0, "card_fit": choice.model_dump(mode="json")})

        # When the workers are listed
        rows = {w["id"]: w for w in client.get("/v1/workers", headers=auth).json()["data"]}

        # Then its choice is there
        shown = rows[worker_id]
        assert shown["max_pixels"] == 1024 * 1024
        assert shown["card_fit"]["batch_by_size"] == {"256": 8, "512": 8, "1024": 3}
        assert shown["card_fit"]["batch_pixel_budget"] == 3 * 1024 * 1024
    finally:
        registry.stop(worker_id)
