"""README's first API example runs as written against a fresh `unipic up`, offline (issue 27): its local
webhook receiver (`unipic webhooks listen`) receives and verifies the job's `job.succeeded` delivery, which the
embedded stack admits without any setting. Only the address (the test stack's) and the port are substituted."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import time

import pytest

from tests.support import REPO
from tests.support.stack import Stack

pytestmark = pytest.mark.system


def first_api_example() -> str:
    """The API section's shell block, up to its first submission."""
    readme = (REPO / "README.md").read_text()
    section = readme.split("\n## API\n", 1)[1]
    block = section.split("```bash\n", 1)[1].split("```", 1)[0]
    return block.split("# edit with a file part", 1)[0]


def test_the_first_api_example_delivers_a_verified_webhook_offline(stack: Stack) -> None:
    script = first_api_example()
    assert "unipic webhooks listen --port 8787 &" in script and '"webhook_url":"http://127.0.0.1:8787/"' in script
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    script = script.replace("API=http://127.0.0.1:8000", f"API={stack.url}").replace("8787", str(port))
    env = dict(stack.env, UNIPIC_API_URL=stack.url, UNIPIC_API_KEY=stack.key)
    proc = subprocess.Popen(["bash", "-c", script + "\nwait\n"], cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    lines: list[str] = []
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + 240
        for line in proc.stdout:  # the job as JSON (curl), then the receiver's line per verified event
            lines.append(line)
            if "job.succeeded" in line or time.monotonic() > deadline:
                break
    finally:
        os.killpg(proc.pid, signal.SIGTERM)  # the example's background receiver, in the session started here
        proc.wait(timeout=30)
    job_ids = re.findall(r'"id":"([0-9a-f-]{36})"', "".join(lines))
    assert job_ids, "".join(lines) + (proc.stderr.read() if proc.stderr else "")
    assert f"job.succeeded    job {job_ids[0]} succeeded" in lines[-1], lines  # (curl ends without a newline)
