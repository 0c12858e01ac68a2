"""The supervisor of `unipic up`, with real child processes: prefixed output, restart with backoff, clean stop."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from cli import supervisor as supervisor_mod
from cli.supervisor import ChildSpec, Supervisor

pytestmark = pytest.mark.system  # supervises real child processes


def _python(code: str) -> list[str]:
    return [sys.executable, "-c", code]


def _until(predicate, seconds: float = 20.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


def _proc(child: Any) -> subprocess.Popen[bytes]:
    """A started child's process."""
    assert child.proc is not None, f"{child.spec.name} was never started"
    return child.proc


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie still answers kill(0); look at its state
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().split(")")[-1].split()[0] != "Z"


def test_output_is_prefixed_per_child_and_crashed_children_restart(tmp_path: Path, monkeypatch) -> None:
    # Given: a child that prints and crashes, and one that keeps running
    monkeypatch.setattr(supervisor_mod, "BACKOFF_START_S", 0.1)
    counter = tmp_path / "runs"
    crasher = _python(f"open({str(counter)!r}, 'a').write('run\\n'); "
                      "print('hello from crasher', flush=True); raise SystemExit(3)")
    sleeper = _python("import time; print('sleeping', flush=True); time.sleep(60)")
    out = io.StringIO()
    sup = Supervisor([ChildSpec("crasher", crasher, dict(os.environ)), ChildSpec("sleeper", sleeper, dict(os.environ))],
                     grace_s=5.0, out=out)

    # When: it supervises for a while
    sup.start()
    def restarted_three_times() -> bool:
        sup.poll()
        return counter.exists() and counter.read_text().count("run\n") >= 3

    assert _until(restarted_three_times)
    sup.stop_all()

    # Then: lines carry their child's name, the crasher was restarted with growing backoff, the sleeper never
    text = out.getvalue()
    assert "crasher | hello from crasher" in text
    assert "sleeper | sleeping" in text
    assert "crasher exited with code 3; restarting" in text
    crasher_child, sleeper_child = sup.children
    assert crasher_child.restarts >= 2
    assert crasher_child.backoff_s >= 0.4  # 0.1 s, then doubled after each crash
    assert sleeper_child.restarts == 0


def test_stop_terms_then_kills_children_that_ignore_sigterm(tmp_path: Path) -> None:
    # Given: a polite child and one that ignores SIGTERM (and has a grandchild in its group)
    polite = _python("import time; print('ready', flush=True); time.sleep(60)")
    stubborn = _python("import signal, subprocess, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
                       "g = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); "
                       "print('grandchild', g.pid, flush=True); time.sleep(60)")
    out = io.StringIO()
    sup = Supervisor([ChildSpec("polite", polite, dict(os.environ)), ChildSpec("stubborn", stubborn, dict(os.environ))],
                     grace_s=1.0, out=out)
    sup.start()
    assert _until(lambda: "grandchild" in out.getvalue() and "ready" in out.getvalue())
    grandchild = int(out.getvalue().split("grandchild ")[1].split()[0])
    pids = [_proc(c).pid for c in sup.children]

    # When: the supervisor is asked to stop
    sup.request_stop()
    sup.run_until_stopped(tick_s=0.01)

    # Then: everything is gone: SIGTERM for the polite one, SIGKILL for the group of the stubborn one
    assert _proc(sup.children[0]).returncode == -15
    assert _proc(sup.children[1]).returncode == -9
    assert "stubborn did not stop within 1 s; killing it" in out.getvalue()
    assert _until(lambda: not any(_alive(p) for p in [*pids, grandchild]), 5.0)


def test_the_periodic_chore_runs_while_supervising() -> None:
    calls: list[float] = []
    sup = Supervisor([ChildSpec("sleeper", _python("import time; time.sleep(60)"), dict(os.environ))],
                     grace_s=5.0, out=io.StringIO(), chore=lambda: calls.append(time.monotonic()),
                     chore_every_s=0.05)
    sup.start()
    def stop_after_three_chores() -> None:
        if _until(lambda: len(calls) >= 3):
            sup.request_stop()

    stopper = threading.Thread(target=stop_after_three_chores)
    stopper.start()
    sup.run_until_stopped(tick_s=0.01)
    stopper.join()
    assert len(calls) >= 3 and _proc(sup.children[0]).returncode == -15
