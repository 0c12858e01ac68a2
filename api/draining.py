"""A stopping API process ends its long-held requests at once instead of waiting for them.

uvicorn stops by closing its listeners, then waits for every open request to finish (up to
`timeout_graceful_shutdown`: `UNIPIC_API_SHUTDOWN_GRACE_SECONDS`, set by `unipic api`), and only then runs the app's
lifespan shutdown. An event stream may stay open for
a day, a `?wait=` for a minute, a gateway worker's claim and cancel long-polls for seconds: an API process with
one open event stream did not stop within 25 s of SIGTERM (measured; Kubernetes kills it at the end of its
grace period, cutting every stream, and `unipic up` after `--grace`). ASGI has no message for "the server began
to stop", so for the signals the server stops on, the app puts its own handler in front of the server's: it
schedules `drain` (`api.events.hub.EventHub.drain`) on the event loop and hands the signal on. The streams then
close cleanly (clients reconnect, to another process behind the balancer), the long-polls answer what they have.

Installed for the lifespan of the app, only on the main thread (signals reach only that thread; a test client
runs the app on another) and only in front of a Python handler (a server's, not the default action or an
ignored signal). uvicorn puts its own handlers back when it stops, which removes this one too.
"""

from __future__ import annotations

import asyncio
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)  # those uvicorn stops on


Handler = Callable[[int, FrameType | None], Any]


@contextmanager
def drain_on_stop(drain: Callable[[], None]) -> Iterator[None]:
    """While inside, a stop signal first schedules `drain` on the running loop, then goes to the server."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    loop = asyncio.get_running_loop()
    chained: list[tuple[signal.Signals, Handler, Handler]] = []  # (signal, ours, the server's)
    for sig in STOP_SIGNALS:
        server = signal.getsignal(sig)
        if callable(server):
            ours = _in_front(server, lambda: loop.call_soon_threadsafe(drain))
            signal.signal(sig, ours)
            chained.append((sig, ours, server))
    try:
        yield
    finally:
        for sig, ours, server in chained:
            if signal.getsignal(sig) is ours:  # still ours: the server's goes back
                signal.signal(sig, server)


def _in_front(server: Handler, first: Callable[[], object]) -> Handler:
    def handler(signum: int, frame: FrameType | None) -> None:
        first()  # the loop runs on this thread, maybe inside a callback now: `drain` runs on its next turn
        server(signum, frame)

    return handler
