"""Slow and idle connections (issue 14, item 8): what uvicorn enforces itself with the options `unipic api` passes,
and the proxy config that must sit in front for what it cannot (a slow request head or body).
"""

from __future__ import annotations

import re
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import uvicorn

from cli.commands.up import SERVER_LIMITS

NGINX = Path(__file__).resolve().parents[2] / "deploy" / "nginx.conf"


async def hello(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
    await send({"type": "http.response.body", "body": b"ok"})


@pytest.fixture
def server() -> Iterator[int]:
    """uvicorn with the API's limits on a free port (a trivial app: the limits are the server's)."""
    config = uvicorn.Config(hello, host="127.0.0.1", port=0, log_level="warning", lifespan="off",
                            **{**SERVER_LIMITS, "timeout_keep_alive": 1})
    srv = uvicorn.Server(config)
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    while not srv.started:
        if not thread.is_alive():
            pytest.fail("uvicorn did not start")
        threading.Event().wait(0.01)
    port = srv.servers[0].sockets[0].getsockname()[1]
    yield port
    srv.should_exit = True
    thread.join(timeout=10)


def test_idle_keep_alive_connections_are_closed_by_the_server(server: int) -> None:
    with socket.create_connection(("127.0.0.1", server), timeout=30) as conn:
        conn.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert conn.recv(1024).startswith(b"HTTP/1.1 200")
        # When the client then sends nothing, Then the server closes the connection (recv answers b"")
        assert conn.recv(1024) == b""


def test_the_documented_proxy_times_out_slow_heads_and_bodies() -> None:
    text = NGINX.read_text()
    directives = dict(re.findall(r"^\s*(client_header_timeout|client_body_timeout|keepalive_timeout|"
                                 r"client_max_body_size|proxy_request_buffering)\s+(\S+?);", text, re.MULTILINE))
    assert directives["client_header_timeout"] == "10s"
    assert directives["client_body_timeout"] == "30s"
    assert directives["proxy_request_buffering"] == "on"
    assert "large_client_header_buffers 4 16k;" in text  # uvicorn (httptools) does not cap a head's size
    assert "limit_conn " in text
    readme = (NGINX.parents[1] / "README.md").read_text()
    assert "deploy/nginx.conf" in readme and "## Security" in readme
