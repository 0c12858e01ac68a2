"""An ASGI app served by uvicorn on a loopback port, in a thread: for tests that need real HTTP (event streams,
long-polling claims, a CLI or worker process) against an app they built in-process."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Literal

from tests.support.stack import free_port
from tests.support.waiting import wait_for


@contextmanager
def serve_app(app: Any, *, port: int | None = None, lifespan: Literal["on", "off", "auto"] = "auto",
              start_timeout: float = 30.0) -> Iterator[str]:
    """The app's base URL once uvicorn listens (on `port`, else a free one); stopped on exit. `lifespan="off"`
    for an app whose state the test set up itself (no start-up hooks, e.g. no event hub)."""
    import uvicorn

    port = port or free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning",
                                          lifespan=lifespan))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        wait_for(lambda: server.started, "uvicorn to start", timeout=start_timeout)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
