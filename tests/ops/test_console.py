"""cli.logs: one handler, the level from `UNIPIC_LOG_LEVEL`, JSON lines on request, chatty loggers held back."""

from __future__ import annotations

import json
import logging
import logging.config
import subprocess
import sys
from collections.abc import Iterator

import pytest

from tests.support import REPO

SCRIPT = """
import logging
import logging.config
from cli.logs import configure
configure("info")
logging.getLogger("workers.runner.batching").info("batch of 2 generate:64 finished in 0.50s: ['a', 'b']")
logging.getLogger("celery.app.trace").info("Task unipic.cpu.sweep succeeded in 0.001s: {}")
logging.getLogger("celery.beat").info("Scheduler: Sending due task unipic-sweep")
logging.getLogger("workers.sweeper").warning("worker w1: no heartbeat, marked gone")
try:
    raise RuntimeError("boom")
except RuntimeError:
    logging.getLogger("workers.runner.batching").exception("model error")
"""


def _run(**env: str) -> list[str]:
    import os

    full = {k: v for k, v in os.environ.items() if not k.startswith("UNIPIC_")}
    full.update(env)
    done = subprocess.run([sys.executable, "-c", SCRIPT], cwd=REPO, env=full, capture_output=True, text=True,
                          check=True, timeout=60)
    return done.stderr.splitlines()


def test_info_keeps_batch_lines_and_warnings_and_drops_task_and_beat_chatter() -> None:
    text = "\n".join(_run())
    assert "batch of 2 generate:64 finished" in text and "marked gone" in text and "boom" in text
    assert "succeeded in" not in text and "Sending due task" not in text


def test_debug_shows_the_chatter() -> None:
    text = "\n".join(_run(UNIPIC_LOG_LEVEL="debug"))
    assert "succeeded in" in text and "Sending due task" in text


def test_json_format_writes_one_object_per_line() -> None:
    lines = _run(UNIPIC_LOG_FORMAT="json")
    records = [json.loads(line) for line in lines if line.startswith("{")]
    assert len(records) == 3, lines
    assert {r["level"] for r in records} == {"INFO", "WARNING", "ERROR"}
    assert all({"time", "logger", "message", "process"} <= set(r) for r in records)
    assert "RuntimeError: boom" in records[-1]["exc"]


@pytest.fixture
def restore_root() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def test_uvicorn_config_follows_the_level_and_format(monkeypatch: pytest.MonkeyPatch, restore_root: None) -> None:
    from uvicorn.config import LOGGING_CONFIG

    from cli.logs import adapt_uvicorn

    monkeypatch.setenv("UNIPIC_LOG_FORMAT", "json")
    config = adapt_uvicorn(json.loads(json.dumps(LOGGING_CONFIG)), "info")
    assert config["loggers"]["uvicorn.access"]["level"] == "WARNING"
    assert all(f["()"] == "cli.logs.JsonFormatter" for f in config["formatters"].values())
    logging.config.dictConfig(config)  # the adapted config is valid
