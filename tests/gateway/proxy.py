"""A loopback TCP proxy the gateway system tests control: forwards bytes both ways and, when armed, cuts a
connection in the middle of a request (part of it forwarded, then both sides closed) or drops the response.

`cut_request(marker)` arms a one-shot cut of the next client->server chunk that contains `marker` (e.g.
`b"PUT "` for an upload to a presigned URL): half of that chunk is forwarded, then the connection is closed.
`drop_response(marker)` forwards the request that contains `marker` whole and closes the connection before
the answer gets back (the server acted; the client never hears it). Knows nothing of our services.
"""

from __future__ import annotations

import contextlib
import socket
import threading


class LoopbackProxy:
    def __init__(self, target_port: int) -> None:
        self.target = ("127.0.0.1", target_port)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._lock = threading.Lock()
        self._cuts: list[bytes] = []
        self._drops: list[bytes] = []
        self.cut_done = threading.Event()
        self.drop_done = threading.Event()
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def cut_request(self, marker: bytes) -> None:
        with self._lock:
            self._cuts.append(marker)

    def drop_response(self, marker: bytes) -> None:
        with self._lock:
            self._drops.append(marker)

    def close(self) -> None:
        self._closed = True
        self.listener.close()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(self.target)
            except OSError:
                client.close()
                continue
            state = {"drop": False}
            threading.Thread(target=self._upstream, args=(client, server, state), daemon=True).start()
            threading.Thread(target=self._downstream, args=(server, client, state), daemon=True).start()

    def _take(self, table: list[bytes], chunk: bytes) -> bool:
        with self._lock:
            for marker in table:
                if marker in chunk:
                    table.remove(marker)
                    return True
        return False

    def _upstream(self, client: socket.socket, server: socket.socket, state: dict[str, bool]) -> None:
        try:
            while chunk := client.recv(65536):
                if self._take(self._cuts, chunk):
                    server.sendall(chunk[: len(chunk) // 2])
                    self.cut_done.set()
                    break
                if self._take(self._drops, chunk):
                    state["drop"] = True
                server.sendall(chunk)
        except OSError:
            pass
        _close(client, server)

    def _downstream(self, server: socket.socket, client: socket.socket, state: dict[str, bool]) -> None:
        try:
            while chunk := server.recv(65536):
                if state["drop"]:
                    self.drop_done.set()
                    break
                client.sendall(chunk)
        except OSError:
            pass
        _close(client, server)


def _close(*sockets: socket.socket) -> None:
    for sock in sockets:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
        sock.close()
