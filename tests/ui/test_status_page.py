"""The status page `/ui` on a live embedded stack: rendered by headless Chromium, asserted on its DOM.

A screenshot goes to artifacts/ui.png (ignored by git) for a person to look at.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import httpx
import pytest

from tests.support import REPO
from tests.support.stack import Stack

pytestmark = pytest.mark.system

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARTIFACTS = REPO / "artifacts"


def _chromium(*args: str) -> subprocess.CompletedProcess[str]:
    if not Path(CHROMIUM).exists():
        pytest.fail("headless Chromium is required at /usr/bin/chromium (apt-get install chromium)", pytrace=False)
    with tempfile.TemporaryDirectory(prefix="chromium-") as profile:
        return subprocess.run(
            [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--disable-dev-shm-usage", f"--user-data-dir={profile}", *args],
            capture_output=True, text=True, check=False, timeout=90,
        )


def _dom(url: str) -> str:
    result = _chromium("--virtual-time-budget=3000", "--dump-dom", url)
    assert result.returncode == 0 and "<html" in result.stdout, result.stderr[-2000:]
    return result.stdout


def _row(dom: str, attr: str, value: str) -> str:
    match = re.search(rf'<tr[^>]*{attr}="{re.escape(value)}"[^>]*>(.*?)</tr>', dom, re.DOTALL)
    assert match, f"no row with {attr}={value} in the page"
    return match.group(0)


def _ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, f"{result.stdout}\n{result.stderr}"
    return result.stdout


def test_signed_in_page_shows_workers_queues_jobs_with_thumbnails_and_batches(stack: Stack, tmp_path: Path) -> None:
    # Given: a finished image job, a finished understand job and a finished batch of this key
    job = json.loads(_ok(stack.cli("generate", "a lighthouse", "-o", str(tmp_path / "a.png"), "--size", "64",
                                   "--steps", "2", "--json", "--timeout", "90")))
    answer = json.loads(_ok(stack.cli("ask", str(tmp_path / "a.png"), "what is it?", "--size", "64",
                                      "--max-new-tokens", "3", "--json", "--timeout", "90")))
    items = tmp_path / "b.jsonl"
    items.write_text(json.dumps({"custom_id": "one", "kind": "generate", "prompt": "p", "width": 64,
                                 "height": 64, "steps": 2}) + "\n")
    batch_id = _ok(stack.cli("batch", "submit", str(items), "--wait", "--timeout", "90")).split()[0]

    # When: Chromium opens /ui?key=... (sign-in redirect, cookie) and renders it; and takes a screenshot
    dom = _dom(f"{stack.url}/ui?key={stack.key}")
    ARTIFACTS.mkdir(exist_ok=True)
    for name, url in (("ui.png", f"{stack.url}/ui?key={stack.key}"),  # signed in: everything
                      ("ui-anonymous.png", f"{stack.url}/ui")):  # a fresh profile, no cookie: aggregates
        shot = ARTIFACTS / name
        shot.unlink(missing_ok=True)
        taken = _chromium("--window-size=1280,1400", "--virtual-time-budget=3000", f"--screenshot={shot}", url)
        assert taken.returncode == 0 and shot.stat().st_size > 1000, taken.stderr[-2000:]

    # Then: the page knows the caller, lists the live worker, the jobs (image thumbnail, answer) and the batch
    assert 'id="caller"' in dom
    worker = _row(dom, "class", "worker")
    assert ">cpu<" in worker
    image_row = _row(dom, "data-job-id", job["id"])
    assert 'data-status="succeeded"' in image_row and "a lighthouse" in image_row
    (thumb,) = re.findall(r'<img class="thumb" src="([^"]+)"', image_row)
    fetched = httpx.get(thumb.replace("&amp;", "&"), timeout=10)
    assert fetched.status_code == 200 and fetched.content[:8] == b"\x89PNG\r\n\x1a\n"
    answer_row = _row(dom, "data-job-id", answer["id"])
    assert 'class="answer"' in answer_row
    batch_row = _row(dom, "data-batch-id", batch_id)
    assert 'data-status="completed"' in batch_row and "1/1" in batch_row
    assert 'id="queues"' in dom and 'id="counts"' in dom


def test_anonymous_page_shows_only_aggregates(stack: Stack) -> None:
    dom = _dom(f"{stack.url}/ui")
    assert 'id="signin"' in dom and 'id="workers"' in dom and 'id="queues"' in dom
    assert 'id="jobs"' not in dom and 'id="caller"' not in dom and "data-job-id" not in dom
    assert 'http-equiv="refresh"' in dom


def test_key_sign_in_sets_an_httponly_strict_cookie_and_drops_the_key_from_the_url(stack: Stack) -> None:
    good = httpx.get(f"{stack.url}/ui", params={"key": stack.key}, follow_redirects=False)
    assert good.status_code == 303 and good.headers["location"] == "/ui"
    cookie = good.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=strict" in cookie and "path=/ui" in cookie
    page = httpx.get(f"{stack.url}/ui", cookies={"unipic_ui_key": stack.key})
    assert 'id="caller"' in page.text and page.headers["cache-control"] == "no-store"

    bad = httpx.get(f"{stack.url}/ui", params={"key": "upk_wrong"}, follow_redirects=False)
    assert bad.status_code == 303 and "signed_out" in bad.headers["location"]
    assert "unipic_ui_key=" in bad.headers.get("set-cookie", "") and "max-age=0" in bad.headers["set-cookie"].lower()
    assert 'id="caller"' not in httpx.get(f"{stack.url}/ui", cookies={"unipic_ui_key": "upk_wrong"}).text


def test_user_text_is_escaped_not_rendered(stack: Stack, tmp_path: Path) -> None:
    # Given: a job whose prompt is markup
    prompt = "<script>document.title='owned'</script><b id=\"injected\">x</b>"
    job = json.loads(_ok(stack.cli("generate", prompt, "-o", str(tmp_path / "x.png"), "--size", "64",
                                   "--steps", "2", "--json", "--timeout", "90")))
    # When: the page renders in the browser
    dom = _dom(f"{stack.url}/ui?key={stack.key}")
    # Then: the markup shows as text; nothing was injected or run
    row = _row(dom, "data-job-id", job["id"])
    assert "&lt;script&gt;document.title" in row and '&lt;b id="injected"&gt;' in row
    assert '<b id="injected">' not in dom and "<script>" not in dom
    assert "<title>unipic status</title>" in dom


def test_queue_depth_counts_waiting_jobs_per_queue(stack: Stack) -> None:
    # Given: two jobs on a queue no worker of this stack serves (2048 px -> unipic.generate.xl)
    ids = [_ok(stack.cli("generate", f"big {i}", "--size", "2048", "--steps", "2", "--no-wait")).strip()
           for i in range(2)]
    try:
        # When: anyone (no key) looks at the page
        dom = _dom(f"{stack.url}/ui")
        # Then: the queue shows both waiting, and the page refreshes at the busy pace
        row = _row(dom, "data-queue", "unipic.generate.xl")
        assert re.search(r'class="num queued">2<', row), row
        assert 'content="5"' in dom
    finally:
        for job_id in ids:
            _ok(stack.cli("jobs", "cancel", job_id))
    assert 'data-queue="unipic.generate.xl"' not in _dom(f"{stack.url}/ui")
