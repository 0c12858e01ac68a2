"""`unipic keys create|list|revoke` against the session database, and the keys it makes work on the API."""

from __future__ import annotations

import json
from typing import Any

from typer.testing import CliRunner

from cli.main import app as cli


def test_create_list_revoke(settings_env: dict[str, str], migrated: Any, client: Any) -> None:
    runner = CliRunner()
    env = {k: v for k, v in settings_env.items() if k.startswith("UNIPIC_")}
    # Given a key made by the CLI
    r = runner.invoke(cli, ["keys", "create", "--name", "ci", "--json"], env=env)
    assert r.exit_code == 0, r.output
    made = json.loads(r.stdout)
    assert set(made) == {"id", "key", "webhook_secret"} and made["key"].startswith("upk_")
    headers = {"Authorization": f"Bearer {made['key']}"}
    # Then the API accepts it, it is listed without its secret, and once revoked it is refused
    assert client.get("/v1/jobs", headers=headers).status_code == 200
    listed = json.loads(runner.invoke(cli, ["keys", "list", "--json"], env=env).stdout)
    assert made["id"] in [k["id"] for k in listed] and made["key"] not in json.dumps(listed)
    assert runner.invoke(cli, ["keys", "revoke", made["id"]], env=env).exit_code == 0
    assert client.get("/v1/jobs", headers=headers).status_code == 401
    assert runner.invoke(cli, ["keys", "revoke", "0190e3f2-0000-7000-8000-000000000000"], env=env).exit_code == 1
