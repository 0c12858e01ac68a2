"""When `unipic up` may say it is up: the API answers /readyz AND its model worker has registered.

Owns the wait between starting the children and printing the banner. The model worker registers itself in the
`workers` table only after its model is loaded and warmed up (`workers.startup`), so a registered worker with
the child's pid is a worker that serves. When the worker exits before that, `WorkerDown` carries the one line
it printed (`error: ...`) and its exit code; with `keep_going` the wait goes on while the supervisor restarts it.
It knows nothing of what the children run beyond the worker child's name.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from cli.supervisor import Child, Supervisor

if TYPE_CHECKING:
    from storage.fleet.registry import WorkerRegistry
    from storage.settings import Settings

WORKER = "worker"
POLL_S = 0.3


class WorkerDown(Exception):
    """The model worker exited before it served."""

    def __init__(self, reason: str, code: int) -> None:
        super().__init__(reason)
        self.reason, self.code = reason, code


def exit_reason(child: Child) -> str:
    """The line the child printed about why it stopped (`error: ...`), else its last line."""
    lines = [line for line in child.last_lines if line.strip()]
    errors = [line for line in lines if line.startswith("error:")]
    return (errors or lines or [f"exited with code {child.exit_code} and printed nothing"])[-1]


def wait_serving(base: str, supervisor: Supervisor, settings: Settings, timeout_s: float,
                 keep_going: bool = False) -> bool:
    """Supervise until the API is ready and the worker child is registered (True); False when asked to stop or
    after `timeout_s`. Raises `WorkerDown` when the worker exits first, unless `keep_going`."""
    from storage.db import make_engine, make_session_factory
    from storage.fleet.registry import WorkerRegistry

    engine = make_engine(settings)
    registry = WorkerRegistry(make_session_factory(engine))
    worker, seen_exits, api_ready = supervisor.child(WORKER), 0, False
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline and not supervisor.stopping:
            supervisor.poll()
            if worker.exits > seen_exits:
                seen_exits = worker.exits
                if not keep_going:
                    raise WorkerDown(exit_reason(worker), worker.exit_code or 1)
                supervisor.say("up", f"the model worker could not start: {exit_reason(worker)}; "
                                     "--keep-going: retrying (no banner until a model worker serves)")
            api_ready = api_ready or _answers(f"{base}/readyz")
            if api_ready and _registered(registry, worker, settings):
                return True
            time.sleep(POLL_S)
    finally:
        engine.dispose()
    if not supervisor.stopping:
        what = "a model worker to serve" if api_ready else f"the API at {base}/readyz"
        supervisor.say("up", f"still waiting for {what} after {timeout_s:.0f} s; still supervising")
    return False


def _answers(url: str) -> bool:
    import httpx

    try:
        return httpx.get(url, timeout=2.0).status_code == 200
    except httpx.HTTPError:
        return False


def _registered(registry: WorkerRegistry, worker: Child, settings: Settings) -> bool:
    if worker.proc is None or worker.proc.poll() is not None:
        return False
    return any(w.pid == worker.proc.pid for w in registry.live(3 * settings.heartbeat_seconds))
