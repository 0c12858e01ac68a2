"""An httpx transport that injects faults in front of the real one: a refused connection, or an answer such as
429 with `Retry-After`, for the next N requests; every request that went through is recorded."""

from __future__ import annotations

import httpx


class FlakyTransport(httpx.BaseTransport):
    def __init__(self, faults: list[int | str] | None = None) -> None:
        self.real = httpx.HTTPTransport()
        self.faults = list(faults or [])
        self.sent: list[httpx.Request] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.sent.append(request)
        if self.faults:
            fault = self.faults.pop(0)
            if fault == "connect":
                raise httpx.ConnectError("injected: connection refused", request=request)
            body = b'{"error": {"code": "rate_limited", "message": "injected"}}'
            return httpx.Response(int(fault), headers={"Retry-After": "0.2", "content-type": "application/json"},
                                  content=body, request=request)
        return self.real.handle_request(request)

    def close(self) -> None:
        self.real.close()
