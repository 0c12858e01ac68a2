"""The client commands on the SDK, against the shared `unipic up --model tiny` stack: `-o` checked before
anything runs, short ids, idempotent `batch submit`, `--manifest`, `.env`, `--json`, uploads and webhooks
commands, `--version`, and no empty data dir made by a client command."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.support.stack import REPO, Stack, clean_env, unipic_argv

GEN = ("--size", "64", "--steps", "2")


def _ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, f"exit {result.returncode}\nstdout: {result.stdout}\nstderr: {result.stderr}"
    return result.stdout


def _job_count(stack: Stack) -> int:
    return len(json.loads(_ok(stack.cli("jobs", "list", "--limit", "200", "--json")))["data"])


def test_version_and_completion() -> None:
    version = subprocess.run(unipic_argv("--version"), capture_output=True, text=True, cwd=REPO, env=clean_env(),
                             check=False, timeout=60)
    assert version.returncode == 0 and "unipic-client" in version.stdout
    shown = subprocess.run(unipic_argv("--show-completion", "bash"), capture_output=True, text=True, cwd=REPO,
                           env=clean_env(), check=False, timeout=60)
    assert shown.returncode == 0 and "complete" in shown.stdout


@pytest.mark.system
def test_output_is_checked_before_the_job_runs(stack: Stack, tmp_path: Path) -> None:
    before = _job_count(stack)
    for args in (("-o", str(tmp_path / "x.gif")), ("-o", str(tmp_path / "x.png"), "--format", "webp"),
                 ("-o", str(tmp_path / "noext"))):
        refused = stack.cli("generate", "x", *args, *GEN)
        assert refused.returncode == 2 and "error:" in refused.stderr and "Traceback" not in refused.stderr
    assert _job_count(stack) == before  # nothing was submitted
    # a directory takes <job id>.png
    job = json.loads(_ok(stack.cli("generate", "into a dir", "-o", str(tmp_path), *GEN, "--json")))
    assert (tmp_path / f"{job['id']}.png").stat().st_size > 0


@pytest.mark.system
def test_short_ids_json_and_deliveries(stack: Stack, tmp_path: Path) -> None:
    job_id = _ok(stack.cli("generate", "short", "-o", str(tmp_path / "s.png"), *GEN, "--no-wait")).strip()
    waited = json.loads(_ok(stack.cli("jobs", "wait", job_id[:13], "--timeout", "120")))
    assert waited["id"] == job_id and waited["status"] == "succeeded"
    assert json.loads(_ok(stack.cli("jobs", "show", job_id[:13])))["id"] == job_id
    ambiguous = stack.cli("jobs", "show", "0")
    assert ambiguous.returncode == 1 and "at least 4" in ambiguous.stderr
    cancel = stack.cli("--json", "jobs", "cancel", job_id[:13])  # finished: 409, as JSON
    assert cancel.returncode == 1 and json.loads(cancel.stdout)["error"]["status"] == 409
    assert "data" in json.loads(_ok(stack.cli("deliveries", "list", job_id[:13])))


@pytest.mark.system
def test_batch_submit_is_idempotent_and_download_saves_the_manifest(stack: Stack, tmp_path: Path) -> None:
    items = tmp_path / "items.jsonl"
    items.write_text("".join(json.dumps({"kind": "generate", "prompt": f"b{i}", "custom_id": f"b{i}",
                                         "size": 64, "steps": 2}) + "\n" for i in range(2)))
    first = _ok(stack.cli("batch", "submit", str(items))).strip()
    again = _ok(stack.cli("batch", "submit", str(items))).strip()  # a re-run after a blip: same batch
    assert first == again
    final = json.loads(_ok(stack.cli("--json", "batch", "wait", first[:13], "--timeout", "120")))
    assert final["counts"]["succeeded"] == 2
    manifest = tmp_path / "m" / "manifest.jsonl"
    _ok(stack.cli("batch", "download", first[:13], str(tmp_path / "out"), "--manifest", str(manifest)))
    assert sorted(json.loads(line)["custom_id"] for line in manifest.read_text().splitlines()) == ["b0", "b1"]
    assert (tmp_path / "out" / "b0.png").exists()


@pytest.mark.system
def test_dotenv_upload_and_webhook_secret(stack: Stack, tmp_path: Path, png_file: Path) -> None:
    # Given a .env with the key in the working directory and no key in the environment
    (tmp_path / ".env").write_text(f"# the key\nexport UNIPIC_API_KEY='{stack.key}'\n")
    upload_id = _ok(stack.cli("upload", str(png_file), key="", cwd=tmp_path)).strip()
    assert upload_id.count(".") == 1
    secret = json.loads(_ok(stack.cli("webhooks", "secret", key="", cwd=tmp_path)))["secret"]
    assert secret.startswith("whsec_")


def test_client_commands_never_create_an_empty_data_dir(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    result = subprocess.run(unipic_argv("keys", "list"), capture_output=True, text=True, cwd=tmp_path,
                            env=clean_env(UNIPIC_DATA_DIR=str(missing)), check=False, timeout=60)
    assert result.returncode == 2 and "unipic up" in result.stderr
    assert not missing.exists()


@pytest.fixture
def png_file(tmp_path: Path) -> Path:
    from tests.support.api import png_bytes

    path = tmp_path / "in.png"
    path.write_bytes(png_bytes(64, 64))
    return path
