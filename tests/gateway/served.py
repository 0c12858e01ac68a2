"""The API served over loopback HTTP for the gateway tests that need a real network path: uvicorn in a thread,
a cutting proxy (`bench.proxy`) in front of it, and presigned URLs that name a second proxy in front of S3, so a
test can cut the worker's path to the API or to the bucket while both services keep running."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from bench.proxy import CuttingProxy
from tests.support.serving import serve_app

GATEWAY_LEASE_SECONDS = 4.0  # short: a killed worker's jobs come back within seconds


@dataclass
class Gateway:
    url: str
    app: Any
    s3_proxy: CuttingProxy
    api_proxy: CuttingProxy

    @property
    def services(self) -> Any:
        return self.app.state.services


@contextmanager
def served_gateway(settings: Any, s3_server: str) -> Iterator[Gateway]:
    """The API (with `settings`, leases of `GATEWAY_LEASE_SECONDS`) on a loopback port behind a proxy."""
    from api.app import create_app

    s3_proxy = CuttingProxy(int(s3_server.rsplit(":", 1)[1]))
    app = create_app(settings.model_copy(update={"lease_seconds": GATEWAY_LEASE_SECONDS,
                                                 "s3_public_endpoint_url": s3_proxy.url}))
    with serve_app(app, start_timeout=60) as url:
        api_proxy = CuttingProxy(int(url.rsplit(":", 1)[1]))
        try:
            yield Gateway(api_proxy.url, app, s3_proxy, api_proxy)
        finally:
            api_proxy.close()
            s3_proxy.close()
