"""A loopback TCP proxy that chaos controls: it forwards bytes both ways until told to cut.

It stands where the internet would, between a gateway worker and the API (or the S3 endpoint its presigned URLs
name), so the reliability suite, the gateway system tests and `bench/soak.py` can cut that path the ways a home
connection fails, without touching the services on either side:

- `cut_request(marker, times=1, outage=False)`: a cut of the next `times` client->server chunks that contain
  `marker` (e.g. `b"PUT "` for an upload to a presigned URL): half of the chunk is forwarded, then both sides are
  closed (mid-upload); with `outage`, the first such cut also starts an outage (`down()`) that lasts until `up()`;
- `drop_response(marker)`: the request that contains `marker` goes through whole and the connection is closed
  before the answer gets back (the server acted; the client never hears it);
- `cut_all()`: every live connection is closed now, whatever is in flight in either direction;
- `down()` ... `up()`: an outage: live connections are cut and new ones are accepted and closed at once, each
  counted in `refused` (`wait_refused(n)` lets a test wait for the n-th attempt instead of for time).

Knows nothing of our services or protocols beyond the byte markers it is handed.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from dataclasses import dataclass


class CuttingProxy:
    """Forwards `127.0.0.1:<port>` to `127.0.0.1:<target_port>`; its cuts are thread-safe and take effect at once."""

    def __init__(self, target_port: int) -> None:
        self.target = ("127.0.0.1", target_port)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._changed = threading.Condition()
        self._cuts: list[_Cut] = []
        self._drops: list[bytes] = []
        self._live: set[tuple[socket.socket, socket.socket]] = set()
        self._down = False
        self._closed = False
        self.cut_done = threading.Event()
        self.drop_done = threading.Event()
        self.connections_cut = 0
        self.responses_dropped = 0
        self.refused = 0
        threading.Thread(target=self._accept, name=f"proxy-{self.port}", daemon=True).start()

    # ---- what chaos does ------------------------------------------------------------------------------------
    def cut_request(self, marker: bytes, times: int = 1, outage: bool = False) -> None:
        with self._changed:
            self._cuts.append(_Cut(marker, times, outage))

    def drop_response(self, marker: bytes) -> None:
        with self._changed:
            self._drops.append(marker)

    def cut_all(self) -> int:
        """Close every live connection (both directions, mid-request or mid-answer); how many were cut."""
        with self._changed:
            live, self._live = list(self._live), set()
            self.connections_cut += len(live)
        for pair in live:
            _close(*pair)
        return len(live)

    def down(self) -> None:
        """Start an outage: live connections are cut, new ones are refused until `up()`."""
        with self._changed:
            self._down = True
        self.cut_all()

    def up(self) -> None:
        with self._changed:
            self._down = False

    @property
    def is_down(self) -> bool:
        return self._down

    def wait_refused(self, count: int, timeout: float) -> bool:
        """Wait until `count` connections in all were refused by outages (a client's n-th retry got there)."""
        with self._changed:
            return self._changed.wait_for(lambda: self.refused >= count, timeout)

    def close(self) -> None:
        self._closed = True
        self.listener.close()
        self.cut_all()

    # ---- forwarding -----------------------------------------------------------------------------------------
    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if self._down:
                with self._changed:
                    self.refused += 1
                    self._changed.notify_all()
                _close(client)
                continue
            try:
                server = socket.create_connection(self.target)
            except OSError:
                client.close()
                continue
            pair = (client, server)
            with self._changed:
                self._live.add(pair)
            state = {"drop": False}
            threading.Thread(target=self._upstream, args=(pair, state), daemon=True).start()
            threading.Thread(target=self._downstream, args=(pair, state), daemon=True).start()

    def _take_drop(self, chunk: bytes) -> bool:
        with self._changed:
            for marker in self._drops:
                if marker in chunk:
                    self._drops.remove(marker)
                    return True
        return False

    def _take_cut(self, chunk: bytes) -> bool:
        """Whether to cut this chunk; an outage the cut asks for starts before any retry can get through."""
        with self._changed:
            cut = next((c for c in self._cuts if c.marker in chunk), None)
            if cut is None:
                return False
            cut.times -= 1
            if cut.times <= 0:
                self._cuts.remove(cut)
            if cut.outage:
                self._down, cut.outage = True, False
            self.connections_cut += 1
        return True

    def _upstream(self, pair: tuple[socket.socket, socket.socket], state: dict[str, bool]) -> None:
        client, server = pair
        try:
            while chunk := client.recv(65536):
                if self._take_cut(chunk):
                    server.sendall(chunk[: len(chunk) // 2])
                    self.cut_done.set()
                    break
                if self._take_drop(chunk):
                    state["drop"] = True
                server.sendall(chunk)
        except OSError:
            pass
        self._end(pair)

    def _downstream(self, pair: tuple[socket.socket, socket.socket], state: dict[str, bool]) -> None:
        client, server = pair
        try:
            while chunk := server.recv(65536):
                if state["drop"]:
                    with self._changed:
                        self.responses_dropped += 1
                    self.drop_done.set()
                    break
                client.sendall(chunk)
        except OSError:
            pass
        self._end(pair)

    def _end(self, pair: tuple[socket.socket, socket.socket]) -> None:
        with self._changed:
            self._live.discard(pair)
        _close(*pair)


@dataclass
class _Cut:
    marker: bytes
    times: int
    outage: bool


def _close(*sockets: socket.socket) -> None:
    for sock in sockets:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
        sock.close()
