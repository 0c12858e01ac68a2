"""Supervision of the child processes that `unipic up` runs (API, model worker, webhook worker + sweeper).

Owns: starting each child in its own session (so a terminal Ctrl-C reaches only the supervisor, which then
stops the children in order), prefixing every output line with the child's name (keeping its last lines, to
say why it died), restarting a child that exits with exponential backoff (unless its name is in
`no_restart`), and a clean stop (SIGTERM, wait a grace period, SIGKILL what is left).
It knows nothing of what the children are; `cli.commands.up` builds their command lines.
"""

from __future__ import annotations

import contextlib
import math
import os
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import IO

BACKOFF_START_S = 1.0
BACKOFF_MAX_S = 30.0
LAST_LINES = 20  # output lines kept per child, to say why it died
HEALTHY_AFTER_S = 60.0  # a child that ran this long gets its backoff reset
COLORS = ("36", "35", "33", "32", "34")  # ANSI: cyan, magenta, yellow, green, blue (terminals only)


@dataclass
class ChildSpec:
    """How to run one child: a name for log prefixes, its argv and its environment."""

    name: str
    argv: list[str]
    env: dict[str, str]


@dataclass
class Child:
    """One supervised child and its restart bookkeeping."""

    spec: ChildSpec
    proc: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    restarts: int = 0
    backoff_s: float = field(default_factory=lambda: BACKOFF_START_S)
    restart_at: float | None = None
    pump: threading.Thread | None = field(default=None, repr=False)
    exits: int = 0  # how many times it exited (any code)
    exit_code: int | None = None  # the code of its latest exit
    last_lines: deque[str] = field(default_factory=lambda: deque(maxlen=LAST_LINES))  # its latest output


class Supervisor:
    """Runs children, restarts the ones that die, stops them all on request."""

    def __init__(self, specs: list[ChildSpec], grace_s: float = 20.0, out: IO[str] | None = None,
                 chore: Callable[[], None] | None = None, chore_every_s: float = 600.0) -> None:
        self.children = [Child(spec) for spec in specs]
        self.no_restart: set[str] = set()  # children left down when they exit (e.g. until they first serve)
        self.chore = chore  # periodic housekeeping run from the supervision loop
        self.chore_every_s = chore_every_s
        self.grace_s = grace_s
        self.out = out or sys.stdout
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._width = max((len(s.name) for s in specs), default=2)
        tty = getattr(self.out, "isatty", lambda: False)()
        self._colors = {s.name: COLORS[i % len(COLORS)] for i, s in enumerate(specs)} if tty else {}

    # ---- output -------------------------------------------------------------------------------------------
    def say(self, name: str, line: str) -> None:
        """Write one line prefixed with `name`, never interleaving with another child's line."""
        prefix = f"{name:<{self._width}} |"
        if name in self._colors:
            prefix = f"\033[{self._colors[name]}m{prefix}\033[0m"
        with self._lock:
            self.out.write(f"{prefix} {line.rstrip()}\n")
            self.out.flush()

    def _pump(self, child: Child, stream: IO[bytes]) -> None:
        for raw in iter(stream.readline, b""):
            line = raw.decode("utf-8", "replace")
            child.last_lines.append(line.rstrip())
            self.say(child.spec.name, line)
        stream.close()

    # ---- lifecycle ----------------------------------------------------------------------------------------
    def start(self) -> None:
        """Start every child."""
        for child in self.children:
            self._spawn(child)

    def _spawn(self, child: Child) -> None:
        child.proc = subprocess.Popen(
            child.spec.argv,
            env=child.spec.env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # Ctrl-C goes to us; we stop children in order
        )
        child.started_at = time.monotonic()
        child.restart_at = None
        assert child.proc.stdout is not None
        child.pump = threading.Thread(target=self._pump, args=(child, child.proc.stdout), daemon=True)
        child.pump.start()
        self.say("up", f"started {child.spec.name} (pid {child.proc.pid})")

    def poll(self) -> None:
        """Notice children that exited and restart them once their backoff has passed."""
        now = time.monotonic()
        for child in self.children:
            if child.proc is not None and child.restart_at is None:
                code = child.proc.poll()
                if code is None:
                    continue
                child.exits, child.exit_code = child.exits + 1, code
                if child.spec.name in self.no_restart:
                    child.restart_at = math.inf  # stays down; whoever set no_restart decides what follows
                    self.say("up", f"{child.spec.name} exited with code {code}")
                    continue
                if now - child.started_at >= HEALTHY_AFTER_S:
                    child.backoff_s = BACKOFF_START_S
                child.restart_at = now + child.backoff_s
                self.say("up", f"{child.spec.name} exited with code {code}; restarting in {child.backoff_s:.0f} s")
                child.backoff_s = min(child.backoff_s * 2, BACKOFF_MAX_S)
            elif child.restart_at is not None and now >= child.restart_at and not self._stop.is_set():
                child.restarts += 1
                self._spawn(child)

    def run_until_stopped(self, tick_s: float = 0.2) -> None:
        """Supervise until `request_stop` (e.g. from a signal handler), then stop every child."""
        next_chore = time.monotonic() + self.chore_every_s
        while not self._stop.wait(tick_s):
            self.poll()
            if self.chore is not None and time.monotonic() >= next_chore:
                self.chore()
                next_chore = time.monotonic() + self.chore_every_s
        self.stop_all()

    def child(self, name: str) -> Child:
        """The child named `name`."""
        return next(c for c in self.children if c.spec.name == name)

    def request_stop(self) -> None:
        self._stop.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def stop_all(self) -> None:
        """SIGTERM every running child, wait up to the grace period, then SIGKILL what is left."""
        self._stop.set()
        running = [c for c in self.children if c.proc is not None and c.proc.poll() is None]
        for child in running:
            self.say("up", f"stopping {child.spec.name} (pid {child.proc.pid})")  # type: ignore[union-attr]
            child.proc.send_signal(signal.SIGTERM)  # type: ignore[union-attr]  # the main process shuts down its own
        deadline = time.monotonic() + self.grace_s
        for child in running:
            assert child.proc is not None
            try:
                child.proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                self.say("up", f"{child.spec.name} did not stop within {self.grace_s:.0f} s; killing it")
                _signal_group(child.proc, signal.SIGKILL)
                child.proc.wait()
            _signal_group(child.proc, signal.SIGKILL)  # stragglers left in its group (none after a clean stop)
        for child in self.children:
            if child.pump is not None:
                child.pump.join(timeout=2.0)


def _signal_group(proc: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    """Signal the child's whole process group (a Celery worker's pool processes included)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, sig)
