"""The console of `unipic up` says what README says (issue 27): warnings, errors and one line per finished batch;
no Celery banners, no superuser warning, no per-claim, per-task or per-request lines at INFO."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest

from tests.support.stack import Stack
from tests.support.waiting import wait_for

pytestmark = pytest.mark.system

CHATTER = ("superuser privileges", "-------------- celery@", "[queues]", ".> app:", " claimed ", "Received task",
           "succeeded in", "Sending due task", "HTTP Request:", '"POST /v1/jobs', " accepted kind=", " succeeded\n")


def _worker_started(log: str) -> bool:
    """The model worker's last start-up line (Celery's `ready.`) follows its latest start."""
    return re.search(r"^worker +\| .* ready\.$", log[log.rfind("started worker (pid"):], re.MULTILINE) is not None


def _ok(result) -> str:  # type: ignore[no-untyped-def]
    assert result.returncode == 0, f"exit {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    return str(result.stdout)


def test_the_console_carries_one_line_per_finished_batch(stack: Stack, tmp_path: Path) -> None:
    # a stack started just now (this test its first user) may still be printing its model worker's start-up lines:
    # Celery's `ready.` comes after the worker registered, which is all the stack waits for
    wait_for(lambda: _worker_started(stack.log()), "the model worker's start-up lines", timeout=60)
    start = len(stack.log())
    # When a user pushes jobs: two single jobs and a batch of two
    for i in range(2):
        _ok(stack.cli("generate", f"quiet {i}", "-o", str(tmp_path / f"q{i}.png"), "--size", "64", "--steps", "2",
                      "--timeout", "90"))
    items = tmp_path / "items.jsonl"
    items.write_text("".join(json.dumps({"kind": "generate", "prompt": f"b{i}", "size": 64, "steps": 2}) + "\n"
                             for i in range(2)))
    batch = _ok(stack.cli("batch", "submit", str(items))).strip()
    _ok(stack.cli("batch", "wait", batch, "--timeout", "90"))
    deadline = time.monotonic() + 30
    while stack.log().count("finished in", start) < 3 and time.monotonic() < deadline:
        time.sleep(0.2)  # the worker's batch line follows the job's state by a few milliseconds
    log = stack.log()
    # Then nothing anywhere on the console is chatter (start-up included)
    for chatter in CHATTER:
        assert chatter not in log, (chatter, [line for line in log.splitlines() if chatter in line][:3])
    # And since the jobs were pushed, each line is a finished batch, a warning or an error
    lines = [line for line in log[start:].splitlines() if line.strip()]
    batches = [line for line in lines if "finished in" in line or ("batch " in line and " completed: " in line)]
    others = [line for line in lines if line not in batches and " WARNING " not in line and " ERROR " not in line]
    assert others == [], "\n".join(others)
    # the model worker's batches (the submitted batch's two items run together or apart) and the batch's completion
    assert 4 <= len(batches) <= 5, batches
