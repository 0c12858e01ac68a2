"""The scheduling policy as the API shows it: batch priority defaults, queue position and estimates, and
`unipic keys set-weight`."""

from __future__ import annotations

import json
from typing import Any

from typer.testing import CliRunner

from cli.main import app as cli
from tests.support.api import generate_body


def test_batch_items_default_below_single_jobs_unless_they_say(client: Any, auth: dict[str, str], app: Any) -> None:
    items = [generate_body(custom_id="plain"), generate_body(custom_id="own", priority=5)]
    r = client.post("/v1/batches", json=items, headers=auth)
    assert r.status_code == 202, r.text
    jobs = {j.custom_id: j for j in app.state.services.batches.jobs(r.json()["id"])}
    assert jobs["plain"].priority == -10 and jobs["own"].priority == 5
    r = client.post("/v1/batches", json={"requests": [generate_body()], "priority": 20}, headers=auth)
    [job] = app.state.services.batches.jobs(r.json()["id"])
    assert job.priority == 20
    single = client.post("/v1/jobs", json=generate_body(), headers=auth).json()
    assert single["priority"] == 0


def test_a_queued_job_shows_its_position_and_estimate_fields(client: Any, auth: dict[str, str]) -> None:
    job = client.post("/v1/jobs", json=generate_body(), headers=auth).json()
    shown = client.get(f"/v1/jobs/{job['id']}", headers=auth).json()
    if shown["status"] == "queued":
        assert isinstance(shown["queue_position"], int) and "estimated_start_at" in shown
    batch = client.post("/v1/batches", json=[generate_body()], headers=auth).json()
    assert "estimated_completion_at" in client.get(f"/v1/batches/{batch['id']}", headers=auth).json()


def test_openapi_labels_the_estimates(client: Any) -> None:
    schemas = client.get("/openapi.json").json()["components"]["schemas"]
    assert "Estimate" in schemas["JobOut"]["properties"]["estimated_start_at"]["description"]
    assert "Estimate" in schemas["JobOut"]["properties"]["queue_position"]["description"]


def test_keys_set_weight(settings_env: dict[str, str], migrated: Any, key_store: Any) -> None:
    runner = CliRunner()
    env = {k: v for k, v in settings_env.items() if k.startswith("UNIPIC_")}
    made = json.loads(runner.invoke(cli, ["keys", "create", "--name", "w", "--weight", "3", "--json"],
                                    env=env).stdout)
    assert key_store.get(made["id"]).weight == 3.0
    r = runner.invoke(cli, ["keys", "set-weight", made["id"], "0.5"], env=env)
    assert r.exit_code == 0, r.output
    assert key_store.get(made["id"]).weight == 0.5
    assert runner.invoke(cli, ["keys", "set-weight", made["id"], "0"], env=env).exit_code == 2
    assert runner.invoke(cli, ["keys", "set-weight", "0190e3f2-0000-7000-8000-000000000000", "2"],
                         env=env).exit_code == 1
