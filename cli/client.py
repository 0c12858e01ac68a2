"""The CLI's client commands' connection to a deployment: the SDK (`unipic_client`), with typer around it.

Owns the `--api-url`/`--api-key` options (or `UNIPIC_API_URL`/`UNIPIC_API_KEY`, also from `.env`), the exit
codes and messages for a person, short-id resolution (a unique prefix of a job or batch id, looked up through
the list API), and `ApiClient`: the SDK's `Client` with the plain-JSON answers the commands print. Retries
(connection errors, 429 and 503 honouring `Retry-After`) and the automatic Idempotency-Key of every
submission come from the SDK: there is one client, not two.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Self

import typer

from cli.output import json_mode
from unipic_client import Client
from unipic_client.calls import image_input
from unipic_client.client import DEFAULT_BASE_URL
from unipic_client.errors import ApiError, WaitTimeout

__all__ = ["ApiClient", "ApiError", "ApiKey", "ApiUrl", "WaitTimeout", "data_url", "dumps", "echo_call", "fail",
           "open_client"]

DEFAULT_API_URL = DEFAULT_BASE_URL
FULL_ID_LENGTH = 36

ApiUrl = typer.Option(DEFAULT_API_URL, "--api-url", envvar="UNIPIC_API_URL", help="Base URL of the API")
ApiKey = typer.Option(None, "--api-key", envvar="UNIPIC_API_KEY", help="API key (upk_...)", show_default=False)


class ApiClient:
    """The SDK client (`sdk`), plus the JSON-dict answers the commands print."""

    def __init__(self, base_url: str, api_key: str | None, timeout: float = 60.0) -> None:
        self.sdk = Client(base_url, api_key, timeout=timeout)
        self.base_url = self.sdk.base_url

    def close(self) -> None:
        self.sdk.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        return self.sdk.request(method, path, **kwargs)

    # ---- jobs ---------------------------------------------------------------------------------------------
    def create_job(self, body: dict[str, Any], idempotency_key: str | None = None) -> dict[str, Any]:
        return self.sdk.submit(body, idempotency_key=idempotency_key).model_dump(mode="json")

    def get_job(self, job_id: str, wait: float | None = None) -> dict[str, Any]:
        return self.sdk.get_job(self.job_id(job_id), wait=wait).model_dump(mode="json")

    def list_jobs(self, **filters: Any) -> dict[str, Any]:
        return self.sdk.list_jobs(**filters).model_dump(mode="json")

    def iter_jobs(self, **filters: Any) -> Iterator[dict[str, Any]]:
        for job in self.sdk.iter_jobs(**filters):
            yield job.model_dump(mode="json")

    def cancel_job(self, job_id: str) -> dict[str, Any]:
        return self.sdk.cancel_job(self.job_id(job_id)).model_dump(mode="json")

    # ---- batches ------------------------------------------------------------------------------------------
    def create_batch(self, items: list[dict[str, Any]], idempotency_key: str | None = None) -> dict[str, Any]:
        return self.sdk.submit_batch(items, idempotency_key=idempotency_key).model_dump(mode="json")

    def get_batch(self, batch_id: str) -> dict[str, Any]:
        return self.sdk.get_batch(self.batch_id(batch_id)).model_dump(mode="json")

    def cancel_batch(self, batch_id: str) -> dict[str, Any]:
        return self.sdk.cancel_batch(self.batch_id(batch_id)).model_dump(mode="json")

    def workers(self) -> dict[str, Any]:
        return self.sdk.workers()

    def download(self, url: str) -> bytes:
        return self.sdk.download(url)

    # ---- short ids ----------------------------------------------------------------------------------------
    def job_id(self, prefix: str) -> str:
        """The job whose id starts with `prefix` (the 13 characters the progress bars print do)."""
        return _unique(prefix, "job", lambda: (j.id for j in self.sdk.iter_jobs(limit=200)))

    def batch_id(self, prefix: str) -> str:
        def ids() -> Iterator[str]:
            cursor = None
            while True:
                page = self.sdk.list_batches(cursor=cursor, limit=200)
                yield from (b.id for b in page.data)
                if not (cursor := page.next_cursor):
                    return
        return _unique(prefix, "batch", ids)


def _unique(prefix: str, what: str, ids: Callable[[], Iterator[str]]) -> str:
    prefix = prefix.strip().lower()
    if len(prefix) >= FULL_ID_LENGTH:
        return prefix
    if len(prefix) < 4:
        raise ApiError(400, "ambiguous_id", f"give at least 4 characters of the {what} id (got {prefix!r})")
    matches = [i for i in ids() if i.startswith(prefix)]
    if not matches:
        raise ApiError(404, "not_found", f"no {what} id starts with {prefix!r}")
    if len(matches) > 1:
        raise ApiError(400, "ambiguous_id", f"{len(matches)} {what}s start with {prefix!r}: give more characters")
    return matches[0]


def data_url(path: Path) -> str:
    """An image file as a base64 `data:` URL (the JSON form of an image input)."""
    return str(image_input(path))


def open_client(api_url: str, api_key: str | None) -> ApiClient:
    """A client, or exit 2 with a hint when no key is configured."""
    if not api_key:
        typer.secho("error: no API key: pass --api-key or set UNIPIC_API_KEY (`unipic up` prints one)",
                    err=True, fg="red")
        raise typer.Exit(2)
    return ApiClient(api_url, api_key)


def fail(exc: ApiError) -> typer.Exit:
    """Print an API error for a person (or as JSON with `--json`); return the Exit to raise (1)."""
    if json_mode():
        typer.echo(dumps({"error": {"status": exc.status, "code": exc.code, "message": exc.message,
                                    "field": exc.field}}))
    else:
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
