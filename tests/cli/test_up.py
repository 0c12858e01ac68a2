"""`unipic up` in embedded mode, driven by the client commands exactly as a user would.

One real stack (API, tiny-model worker, webhook worker + beat, SQLite broker) serves the whole module; its
shutdown test runs last and stops it.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import time
from pathlib import Path

import httpx
import pytest
from PIL import Image

from tests.support import REPO
from tests.support.stack import Stack, clean_env, unipic_argv
from tests.support.streams import EventFollower
from tests.support.waiting import wait_for

pytestmark = pytest.mark.system

WAIT = ("--timeout", "90")  # a stuck job fails the test with a message, not a hung subprocess
GEN = ("--size", "64", "--steps", "2", *WAIT)


def _ok(result) -> str:
    assert result.returncode == 0, f"exit {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    return result.stdout


def test_up_prints_the_first_key_and_the_urls(stack: Stack) -> None:
    log = stack.log()
    for path in ("", "/docs", "/ui"):
        assert f"{stack.url}{path}" in log
    assert "UNIPIC_API_KEY=upk_" in log
    assert "embedded" in log
    assert {"api", "worker", "webhooks"} <= set(stack.child_pids())
    # every child's lines are prefixed with its name
    assert any(line.startswith("api ") and "|" in line for line in log.splitlines())


def test_generate_edit_and_ask_round_trip(stack: Stack, tmp_path: Path) -> None:
    # Given: the stack's first key in the environment
    # When: a user generates, edits the result, and asks about it
    out = tmp_path / "gen.png"
    printed = _ok(stack.cli("generate", "a red square", "-o", str(out), *GEN, "--seed", "7"))
    edited = tmp_path / "edit.png"
    _ok(stack.cli("edit", str(out), "make it blue", "-o", str(edited), *GEN, "--seed", "7"))
    answer = _ok(stack.cli("ask", str(edited), "What color is it?", "--size", "64", "--max-new-tokens", "4", *WAIT))

    # Then: decodable PNGs of the requested size, and a non-empty answer on stdout
    assert str(out) in printed
    for path in (out, edited):
        with Image.open(path) as image:
            assert image.format == "PNG" and image.size == (64, 64)
    assert answer.strip()


def test_generate_several_images_and_json_output(stack: Stack, tmp_path: Path) -> None:
    out = tmp_path / "many.png"
    job = json.loads(_ok(stack.cli("generate", "two cats", "-o", str(out), "-n", "2", *GEN, "--json")))
    assert job["status"] == "succeeded" and len(job["result"]["images"]) == 2
    for path in (tmp_path / "many-1.png", tmp_path / "many-2.png"):
        with Image.open(path) as image:
            assert image.size == (64, 64)


def test_client_errors_exit_1_with_the_api_error_code(stack: Stack, tmp_path: Path) -> None:
    bad_key = stack.cli("generate", "x", "-o", str(tmp_path / "x.png"), *GEN, key="upk_not-a-key")
    assert bad_key.returncode == 1 and "unauthorized" in bad_key.stderr and "Traceback" not in bad_key.stderr
    bad_size = stack.cli("generate", "x", "-o", str(tmp_path / "x.png"), "--size", "100", "--steps", "2")
    assert bad_size.returncode == 1 and "validation_error" in bad_size.stderr
    assert "size must be one of" in bad_size.stderr and "width" not in bad_size.stderr  # the user's own word
    no_key = stack.cli("jobs", "list", key="")
    assert no_key.returncode == 2 and "UNIPIC_API_KEY" in no_key.stderr
    missing = stack.cli("jobs", "show", "0190d4b2-0000-7000-8000-000000000000")
    assert missing.returncode == 1 and "not_found" in missing.stderr


def test_batch_submit_wait_and_download_by_custom_id(stack: Stack, tmp_path: Path) -> None:
    # Given: a JSONL file of three items with custom ids (one understand item about an uploaded image)
    items = tmp_path / "items.jsonl"
    lines = [{"custom_id": f"cat/{i}", "kind": "generate", "prompt": f"cat {i}", "width": 64, "height": 64,
              "steps": 2, "seed": i} for i in range(2)]
    items.write_text("\n".join(json.dumps(line) for line in lines) + "\n\n")

    # When: it is submitted without waiting, then waited for (resumable by id), then downloaded twice
    batch_id = _ok(stack.cli("batch", "submit", str(items))).strip().splitlines()[-1]
    waited = _ok(stack.cli("batch", "wait", batch_id, *WAIT))
    first = _ok(stack.cli("batch", "download", batch_id, str(tmp_path / "out")))
    again = _ok(stack.cli("batch", "download", batch_id, str(tmp_path / "out")))

    # Then: every item succeeded; files are named by custom_id; a second download skips them
    assert "succeeded=2" in waited
    assert sorted(str(p.relative_to(tmp_path / "out")) for p in (tmp_path / "out").rglob("*.png")) == [
        "cat/0.png", "cat/1.png"]
    assert first.startswith("2 files written") and again.startswith("0 files written, 2 already present")
    listed = json.loads(_ok(stack.cli("jobs", "list", "--batch", batch_id, "--json")))
    assert {j["custom_id"] for j in listed["data"]} == {"cat/0", "cat/1"}


def test_batch_submit_refuses_a_bad_line_before_sending(stack: Stack, tmp_path: Path) -> None:
    items = tmp_path / "bad.jsonl"
    items.write_text('{"kind": "generate", "prompt": "ok"}\nnot json\n')
    result = stack.cli("batch", "submit", str(items))
    assert result.returncode == 2 and "bad.jsonl:2" in result.stderr


def test_jobs_list_show_cancel_and_workers(stack: Stack) -> None:
    # Given: a job submitted without waiting, on a queue no worker of this stack serves (2048 px)
    job_id = _ok(stack.cli("generate", "later", "--size", "2048", "--steps", "2", "--no-wait")).strip()

    # When: it is shown, listed and canceled
    shown = json.loads(_ok(stack.cli("jobs", "show", job_id)))
    listed = _ok(stack.cli("jobs", "list", "--limit", "5"))
    canceled = _ok(stack.cli("jobs", "cancel", job_id))
    workers = json.loads(_ok(stack.cli("workers", "--json")))

    # Then
    assert shown["id"] == job_id and shown["kind"] == "generate"
    assert job_id in listed
    assert canceled.startswith(job_id)
    assert shown["status"] == "queued" and shown["queue_position"] == 0
    waited = stack.cli("jobs", "wait", job_id, *WAIT)
    assert waited.returncode == 1 and json.loads(waited.stdout)["status"] == "canceled"
    (worker,) = workers["data"]
    assert worker["device"] == "cpu" and worker["model_id"] and worker["batches_served"] >= 1


def test_waiting_gives_up_after_the_timeout_and_the_job_goes_on(stack: Stack, tmp_path: Path) -> None:
    # Given: a job that no worker of this stack will run (2048 px)
    result = stack.cli("generate", "never", "-o", str(tmp_path / "n.png"), "--size", "2048", "--steps", "2",
                       "--timeout", "1")
    # Then: the client gives up with the job id, and the job is still there, queued
    assert result.returncode == 1 and "gave up waiting" in result.stderr
    job_id = re.search(r"jobs wait ([\w-]+)", result.stderr).group(1)  # type: ignore[union-attr]
    assert json.loads(_ok(stack.cli("jobs", "show", job_id)))["status"] == "queued"
    _ok(stack.cli("jobs", "cancel", job_id))


def test_keys_created_against_the_data_dir_work_while_up_runs(stack: Stack) -> None:
    created = _ok(stack.cli("keys", "create", "--name", "second", "--json", "--data-dir", str(stack.data_dir)))
    key = json.loads(created)["key"]
    assert _ok(stack.cli("jobs", "list", key=key))


def test_healthchecks_see_the_worker_and_the_api(stack: Stack) -> None:
    worker = stack.cli("healthcheck", "worker", "--data-dir", str(stack.data_dir))
    assert worker.returncode == 0 and worker.stdout.strip(), worker.stderr
    assert stack.cli("healthcheck", "api", "--url", stack.url).returncode == 0
    down = stack.cli("healthcheck", "api", "--url", "http://127.0.0.1:9")
    assert down.returncode == 1 and "unhealthy" in down.stderr
    elsewhere = stack.cli("healthcheck", "worker", "--hostname", "no-such-host", "--data-dir", str(stack.data_dir))
    assert elsewhere.returncode == 1 and "no model worker on no-such-host" in elsewhere.stderr


def test_up_refuses_a_model_it_cannot_load_offline(tmp_path: Path) -> None:
    env = clean_env(HF_HOME=str(tmp_path / "hf"), HF_HUB_OFFLINE="1")
    import subprocess

    result = subprocess.run(unipic_argv("up", "--data-dir", str(tmp_path / "d"), "--port", "1"), env=env,
                            cwd=REPO, capture_output=True, text=True, check=False, timeout=60)
    assert result.returncode == 1
    assert "Skywork/Skywork-UniPic-1.5B" in result.stderr and "HF_HUB_OFFLINE" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout


def test_a_killed_worker_is_restarted_and_serves_again(stack: Stack, tmp_path: Path) -> None:
    # Given: the stack's model worker
    old = stack.child_pids()["worker"]
    # When: it dies without warning
    os.kill(old, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and stack.child_pids()["worker"] == old:
        time.sleep(0.2)
    # Then: the supervisor starts a new one, which serves the next job
    assert stack.child_pids()["worker"] != old, stack.log()[-3000:]
    assert "worker exited with code -9; restarting" in stack.log()
    out = tmp_path / "after.png"
    _ok(stack.cli("generate", "after the crash", "-o", str(out), *GEN))
    with Image.open(out) as image:
        assert image.size == (64, 64)


def test_sigterm_stops_every_child_cleanly(stack: Stack) -> None:
    # Given: the running stack's children, a client following the events of a job no worker of it runs, and a
    # client that sent a job's request head and part of its body, then stopped sending (read by the API: a
    # request in flight, which uvicorn waits for at a stop)
    pids = stack.child_pids()
    job_id = _ok(stack.cli("generate", "held", "--size", "2048", "--steps", "2", "--no-wait")).strip()
    follower = EventFollower(f"{stack.url}/v1/jobs/{job_id}/events", stack.key)
    wait_for(follower.opened.is_set, "the event stream's first event")
    port = int(stack.url.rsplit(":", 1)[1])
    stalled = socket.create_connection(("127.0.0.1", port), timeout=60)
    stalled.sendall(f"POST /v1/jobs HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {stack.key}\r\n"
                    "Content-Type: application/json\r\nContent-Length: 100000\r\n\r\n{\"prompt\": \"".encode())
    wait_for(lambda: _unread_by_server(port, stalled.getsockname()[1]) == 0, "the API to read the request head")
    # When: the supervisor gets SIGTERM
    code = stack.stop(signal.SIGTERM)
    # Then: it exits 0 after every child is gone; the open stream did not hold the API (api.draining): it was
    # closed cleanly; nor did the stalled request, ended after UNIPIC_API_SHUTDOWN_GRACE_SECONDS (2 s here); the
    # API stopped by itself, not killed at the end of the supervisor's grace period (20 s)
    assert code == 0, stack.log()[-3000:]
    follower.thread.join(timeout=30)
    assert follower.ended == "cleanly", follower.ended
    assert "did not stop within" not in stack.log(), stack.log()[-3000:]
    stalled.close()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(_alive(p) for p in pids.values()):
        time.sleep(0.1)
    assert not any(_alive(p) for p in pids.values())
    assert "stopped" in stack.log().splitlines()[-1]
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"{stack.url}/healthz", timeout=2)


def _unread_by_server(port: int, client_port: int) -> int | None:
    """Bytes the server's end of a loopback connection has not read yet (Linux /proc/net/tcp: its receive queue);
    None while the connection is not listed. uvicorn parses what it reads at once: 0 means the head was parsed."""
    local, remote = f"0100007F:{port:04X}", f"0100007F:{client_port:04X}"
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[1] == local and fields[2] == remote:
            return int(fields[4].split(":")[1], 16)
    return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().split(")")[-1].split()[0] != "Z"
