"""The HTTP client the CLI's client commands use to talk to any unipic deployment.

Owns: the base URL and API key (from `--api-url`/`--api-key` or `UNIPIC_API_URL`/`UNIPIC_API_KEY`), turning
error responses into `ApiError` with the API's stable code, and downloading result URLs (relative local links
get the API key; presigned URLs of another origin are fetched without it, since S3 refuses a second auth).
It knows the routes of design.md §4 and nothing of the server's code.
"""

from __future__ import annotations

import base64
import json
import mimetypes
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self
from urllib.parse import urljoin, urlsplit

import typer

if TYPE_CHECKING:  # httpx is imported when a client is made: `unipic --help` stays quick
    import httpx

DEFAULT_API_URL = "http://127.0.0.1:8000"

ApiUrl = typer.Option(DEFAULT_API_URL, "--api-url", envvar="UNIPIC_API_URL", help="Base URL of the API")
ApiKey = typer.Option(None, "--api-key", envvar="UNIPIC_API_KEY", help="API key (upk_...)", show_default=False)


class ApiError(Exception):
    """An error answer from the API (or no answer at all: code `unreachable`)."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}" if status == 0 else f"HTTP {status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message


class ApiClient:
    """A thin synchronous client over the public API."""

    def __init__(self, base_url: str, api_key: str | None, timeout: float = 60.0) -> None:
        import httpx

        self.base_url = base_url.rstrip("/") + "/"
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.http = httpx.Client(base_url=self.base_url, headers=headers, timeout=timeout)

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- transport ----------------------------------------------------------------------------------------
    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        """Send a request to the API; return the decoded JSON body (None when empty) or raise `ApiError`."""
        import httpx

        try:
            response = self.http.request(method, path.lstrip("/"), **kwargs)
        except httpx.TransportError as exc:
            raise ApiError(0, "unreachable", f"cannot reach {self.base_url}: {exc}") from None
        if response.status_code >= 400:
            raise _error_of(response)
        if not response.content:
            return None
        if "json" in response.headers.get("content-type", ""):
            return response.json()
        return response.text

    # ---- jobs ---------------------------------------------------------------------------------------------
    def create_job(self, body: dict[str, Any], idempotency_key: str | None = None) -> dict[str, Any]:
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        return self.request("POST", "v1/jobs", json=body, headers=headers)

    def get_job(self, job_id: str, wait: float | None = None) -> dict[str, Any]:
        params = {"wait": wait} if wait else None
        timeout = (wait or 0) + 30.0
        return self.request("GET", f"v1/jobs/{job_id}", params=params, timeout=timeout)

    def list_jobs(self, **filters: Any) -> dict[str, Any]:
        params = {k: v for k, v in filters.items() if v is not None}
        return self.request("GET", "v1/jobs", params=params)

    def iter_jobs(self, **filters: Any) -> Iterator[dict[str, Any]]:
        """Every job matching the filters, following the cursor."""
        cursor: str | None = None
        while True:
            page = self.list_jobs(cursor=cursor, **filters)
            yield from page.get("data") or []
            cursor = page.get("next_cursor")
            if not cursor:
                return

    def cancel_job(self, job_id: str) -> dict[str, Any]:
        return self.request("POST", f"v1/jobs/{job_id}/cancel")

    # ---- batches ------------------------------------------------------------------------------------------
    def create_batch(self, jsonl: bytes) -> dict[str, Any]:
        return self.request("POST", "v1/batches", content=jsonl,
                            headers={"Content-Type": "application/jsonl"})

    def get_batch(self, batch_id: str) -> dict[str, Any]:
        return self.request("GET", f"v1/batches/{batch_id}")

    def cancel_batch(self, batch_id: str) -> dict[str, Any]:
        return self.request("POST", f"v1/batches/{batch_id}/cancel")

    # ---- workers ------------------------------------------------------------------------------------------
    def workers(self) -> dict[str, Any]:
        return self.request("GET", "v1/workers")

    # ---- results ------------------------------------------------------------------------------------------
    def download(self, url: str) -> bytes:
        """Fetch a result URL: same-origin links with the API key, presigned links of other origins without."""
        import httpx

        absolute = urljoin(self.base_url, url)
        same_origin = urlsplit(absolute)[:2] == urlsplit(self.base_url)[:2]
        try:
            if same_origin:
                response = self.http.get(absolute)
            else:
                response = httpx.get(absolute, timeout=self.http.timeout)
        except httpx.TransportError as exc:
            raise ApiError(0, "unreachable", f"cannot download {absolute}: {exc}") from None
        if response.status_code >= 400:
            raise _error_of(response)
        return response.content


def _error_of(response: httpx.Response) -> ApiError:
    try:
        err = response.json()["error"]
        return ApiError(response.status_code, str(err.get("code")), str(err.get("message", "")))
    except (ValueError, KeyError, TypeError):
        return ApiError(response.status_code, "http_error", response.text[:300])


def data_url(path: Path) -> str:
    """An image file as a base64 `data:` URL (the JSON form of an image input)."""
    mime = mimetypes.guess_type(path.name)[0] or "image/png"
    return f"data:{mime};base64,{base64.b64encode(path.read_bytes()).decode()}"


def open_client(api_url: str, api_key: str | None) -> ApiClient:
    """A client, or exit 2 with a hint when no key is configured."""
    if not api_key:
        typer.secho("error: no API key: pass --api-key or set UNIPIC_API_KEY (`unipic up` prints one)",
                    err=True, fg="red")
        raise typer.Exit(2)
    return ApiClient(api_url, api_key)


def fail(exc: ApiError) -> typer.Exit:
    """Print an API error for a person and return the Exit to raise (1 for every API failure)."""
    typer.secho(f"error: {exc}", err=True, fg="red")
    return typer.Exit(1)


def dumps(obj: Any) -> str:
    return json.dumps(obj, indent=2, sort_keys=False, default=str)


def echo_call(api_url: str, api_key: str | None, call: Callable[[ApiClient], Any]) -> None:
    """Run one API call and print its JSON answer; an API error exits 1 with its message."""
    with open_client(api_url, api_key) as client:
        try:
            typer.echo(dumps(call(client)))
        except ApiError as exc:
            raise fail(exc) from None
