"""What a new user meets in the CLI (issue 27): `-o` fully checked before anything is submitted, Ctrl-C while
waiting says how to follow the job (or cancels it with `--cancel-on-interrupt`), and `ask` says what it asked
for. The CLI runs as a subprocess against the module's app served by uvicorn, with no worker: submitted jobs stay
queued, so a wait can be interrupted deterministically."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.api import png_bytes
from tests.support.serving import serve_app
from tests.support.stack import REPO, clean_env, free_port, unipic_argv

DEAD_URL = "http://127.0.0.1:9"  # nothing listens: a command that tried to submit would fail to connect
GEN = ("--size", "256", "--steps", "2")


PORT = free_port()


@pytest.fixture(scope="module")
def app(api_settings: Any) -> Any:
    """The module's app, whose links (manifests) name the server below."""
    from api.app import create_app

    return create_app(api_settings.model_copy(update={"public_url": f"http://127.0.0.1:{PORT}"}))


@pytest.fixture(scope="module")
def server_url(app: Any) -> Iterator[str]:
    with serve_app(app, port=PORT, lifespan="off") as url:
        yield url


def run_cli(*args: str, url: str = DEAD_URL, key: str = "upk_x") -> subprocess.CompletedProcess[str]:
    env = clean_env(UNIPIC_API_URL=url, UNIPIC_API_KEY=key)
    return subprocess.run(unipic_argv(*args), env=env, cwd=REPO, capture_output=True, text=True, check=False,
                          timeout=120)


def test_output_is_fully_checked_before_submitting(tmp_path: Path) -> None:
    # a missing directory is an error (nothing made), unless --mkdir
    missing = tmp_path / "no" / "such" / "x.png"
    refused = run_cli("generate", "x", "-o", str(missing), *GEN)
    assert refused.returncode == 2 and "does not exist" in refused.stderr and "--mkdir" in refused.stderr
    assert not (tmp_path / "no").exists()
    made = run_cli("generate", "x", "-o", str(missing), "--mkdir", *GEN)
    assert made.returncode == 1 and missing.parent.is_dir()  # checked and made; then the (dead) server failed
    # a directory no file can be created in: one clear line, no traceback, nothing submitted
    for target in ("/proc/x.png", "/proc"):
        refused = run_cli("generate", "x", "-o", target, *GEN)
        assert refused.returncode == 2, refused.stderr
        assert "cannot write into /proc" in refused.stderr and "Traceback" not in refused.stderr
        assert len(refused.stderr.strip().splitlines()) == 1, refused.stderr


def _key(app: Any) -> str:
    return str(app.state.services.keys.create("cli")[1])


def _until_job(app: Any, key: str, proc: subprocess.Popen[str]) -> Any:
    owner = app.state.services.keys.authenticate(key)
    deadline = time.monotonic() + 60
    while True:
        jobs, _ = app.state.services.jobs.page(owner.id)
        if jobs:
            return jobs[0]
        assert proc.poll() is None and time.monotonic() < deadline, "the CLI never submitted"  # wallclock-ok: a deadline on waiting for the submission, not a speed claim
        time.sleep(0.05)  # polling the job table for the submission


def test_ctrl_c_says_how_to_follow_the_job(app: Any, server_url: str, tmp_path: Path) -> None:
    key = _key(app)
    env = clean_env(UNIPIC_API_URL=server_url, UNIPIC_API_KEY=key)
    proc = subprocess.Popen(unipic_argv("generate", "a fox", "-o", str(tmp_path / "f.png"), *GEN), env=env,
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    said = proc.stderr.readline()  # printed before the wait starts
    job = _until_job(app, key, proc)
    assert said.startswith(f"submitted: job {job.id} queued"), said
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    assert f"unipic jobs wait {job.id}" in stderr and f"unipic jobs cancel {job.id}" in stderr
    assert "Traceback" not in stderr
    assert app.state.services.jobs.get(job.id).status == "queued"  # it goes on


def test_ask_says_what_it_asks_and_ctrl_c_can_cancel(app: Any, server_url: str, tmp_path: Path) -> None:
    key = _key(app)
    image = tmp_path / "in.png"
    image.write_bytes(png_bytes(32, 32))
    env = clean_env(UNIPIC_API_URL=server_url, UNIPIC_API_KEY=key)
    proc = subprocess.Popen(unipic_argv("ask", str(image), "what is it?", "--size", "256", "--max-new-tokens", "8",
                                        "--cancel-on-interrupt"),
                            env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    said = proc.stderr.readline()  # printed before the wait starts
    job = _until_job(app, key, proc)
    assert said.startswith(f"asking: job {job.id}") and "256 px" in said and "8 new tokens" in said, said
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "cancel" in stderr, stderr
    assert app.state.services.jobs.get(job.id).status == "canceled"


def _finished_batch(app: Any, server_url: str, key: str, items: list[dict[str, Any]]) -> Any:
    """A batch submitted through the SDK twice (same iterable: same batch), its jobs finished by a played worker."""
    from tests.support.claims import claim_job, lease_keys
    from unipic_client import Client

    with Client(server_url, key) as sdk:
        batch = sdk.submit_batch(iter(items))
        assert sdk.submit_batch(list(items)).id == batch.id  # a re-submitted iterable is the same batch
        anew = sdk.submit_batch(items, idempotency_key="anew")
        assert anew.id != batch.id  # unless told otherwise
        sdk.cancel_batch(anew.id)
    services = app.state.services
    owner = services.keys.authenticate(key)
    for job in reversed(services.jobs.page(owner.id, batch_id=batch.id)[0]):  # oldest first, as claimed
        (claim,) = claim_job(services.jobs, job.id)
        (result,) = lease_keys(claim)
        services.objects.put(result, png_bytes(8, 8), content_type="image/png")
        assert services.jobs.complete(claim, [result], None)
    return batch


def test_the_manifest_lands_in_the_download_directory_and_async_fetches_it(app: Any, server_url: str,
                                                                           tmp_path: Path) -> None:
    import asyncio

    from unipic_client import AsyncClient

    key = _key(app)
    items = [{"kind": "generate", "prompt": f"m{i}", "custom_id": f"m{i}", "size": 256, "steps": 2} for i in range(2)]
    batch = _finished_batch(app, server_url, key, items)
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    env = clean_env(UNIPIC_API_URL=server_url, UNIPIC_API_KEY=key)
    done = subprocess.run(unipic_argv("batch", "download", batch.id, str(tmp_path / "out"), "--manifest",
                                      "results.jsonl"), env=env, cwd=elsewhere, capture_output=True, text=True,
                          check=False, timeout=120)
    assert done.returncode == 0, done.stderr
    assert not (elsewhere / "results.jsonl").exists()
    lines = (tmp_path / "out" / "results.jsonl").read_text().splitlines()
    assert sorted(json.loads(line)["custom_id"] for line in lines) == ["m0", "m1"]

    async def fetch() -> bytes:
        async with AsyncClient(server_url, key) as sdk:
            return await sdk.download_manifest(batch.id)

    assert sorted(json.loads(line)["custom_id"] for line in asyncio.run(fetch()).splitlines()) == ["m0", "m1"]
