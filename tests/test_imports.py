"""Import directions hold: the API process never loads torch, and the import-linter contracts pass."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _run(args: list[str]) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(args, check=False, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


def test_api_app_does_not_import_torch() -> None:
    code = "import api.app, sys; assert 'torch' not in sys.modules, 'torch imported by api.app'"
    result = _run([sys.executable, "-c", code])
    assert result.returncode == 0, result.stderr[-3000:]


def test_storage_and_torch_free_workers_do_not_import_torch() -> None:
    code = ("import importlib, sys\n"
            "for name in ('storage.jobs.store', 'storage.batches.store', 'storage.keys', 'storage.objects.base',\n"
            "             'storage.objects.s3', 'storage.objects.local', 'storage.ephemeral', 'storage.migrate'):\n"
            "    importlib.import_module(name)\n"
            "assert 'torch' not in sys.modules\n")
    result = _run([sys.executable, "-c", code])
    assert result.returncode == 0, result.stderr[-3000:]


def test_import_linter_contracts() -> None:
    lint = Path(sys.executable).with_name("lint-imports")
    result = _run([str(lint), "--config", str(REPO / "pyproject.toml")])
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
