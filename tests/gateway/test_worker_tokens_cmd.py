"""`unipic worker-tokens create|list|revoke` against the session's database, as an operator runs it."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

from tests.support import REPO


def _unipic(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cli.main", "worker-tokens", *args], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=120, check=False)


def test_create_list_revoke(settings_env: dict[str, str], migrated: Any, session_factory: Any) -> None:
    from storage.fleet.tokens import WorkerTokenStore

    env = {**settings_env, "PYTHONPATH": str(REPO)}
    created = _unipic(env, "create", "--name", "cli-4090", "--kinds", "generate,edit", "--max-pixels", "262144",
                      "--json")
    assert created.returncode == 0, created.stderr
    out = json.loads(created.stdout)
    assert out["token"].startswith("wk_") and out["kinds"] == ["generate", "edit"] and out["max_pixels"] == 262144
    store = WorkerTokenStore(session_factory)
    assert store.authenticate(out["token"]) is not None
    listed = json.loads(_unipic(env, "list", "--json").stdout)
    assert any(row["id"] == out["id"] and out["token"] not in json.dumps(row) for row in listed)
    assert _unipic(env, "revoke", out["id"]).returncode == 0
    assert store.authenticate(out["token"]) is None
    bad = _unipic(env, "create", "--name", "x", "--kinds", "paint")
    assert bad.returncode == 2 and "kinds" in bad.stderr
