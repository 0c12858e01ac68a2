"""`unipic jobs list|show|cancel|wait` and `unipic workers`: inspecting a deployment over HTTP.

Tables go to stdout through rich; `--json` prints the API's own JSON for scripts. Job ids may be given as a
unique prefix (the short ids the progress bars print).
"""

from __future__ import annotations

from typing import Any

import typer
from rich import box
from rich.console import Console
from rich.table import Table

from cli.client import ApiError, ApiKey, ApiUrl, dumps, echo_call, fail, open_client
from cli.output import json_mode
from cli.waiting import WaitTimeout, wait_job
from storage.states import JobStatus

app = typer.Typer(no_args_is_help=True, help="List, show, wait for and cancel jobs")
console = Console()
if not console.is_terminal:  # piped: do not squeeze the table into 80 columns
    console = Console(width=200)


@app.command("list")
def list_jobs(
    status: str | None = typer.Option(None, "--status"),
    kind: str | None = typer.Option(None, "--kind"),
    batch_id: str | None = typer.Option(None, "--batch"),
    limit: int = typer.Option(20, "--limit", min=1, max=200, help="Rows per page"),
    cursor: str | None = typer.Option(None, "--cursor", help="Continue from a previous page"),
    as_json: bool = typer.Option(False, "--json"),
    api_url: str = ApiUrl, api_key: str | None = ApiKey,
) -> None:
    """Your jobs, newest first (one page; the next cursor is printed)."""
    with open_client(api_url, api_key) as client:
        try:
            page = client.list_jobs(status=status, kind=kind, batch_id=batch_id, limit=limit, cursor=cursor)
        except ApiError as exc:
            raise fail(exc) from None
    if json_mode(as_json):
        typer.echo(dumps(page))
        return
    table = Table(box=box.SIMPLE)
    table.add_column("id", no_wrap=True, min_width=36)  # ids are what people copy: never cut them
    for name in ("kind", "status", "progress", "created", "custom_id", "error"):
        table.add_column(name)
    for job in page.get("data") or []:
        table.add_row(job["id"], job["kind"], job["status"], _progress_text(job), _short_time(job.get("created_at")),
                      job.get("custom_id") or "", (job.get("error") or {}).get("code") or "")
    console.print(table)
    if page.get("next_cursor"):
        console.print(f"next page: --cursor {page['next_cursor']}")


@app.command("show")
def show(job_id: str, api_url: str = ApiUrl, api_key: str | None = ApiKey) -> None:
    """One job as JSON."""
    echo_call(api_url, api_key, lambda client: client.get_job(job_id))


@app.command("wait")
def wait(
    job_id: str,
    timeout: float | None = typer.Option(None, "--timeout", help="Give up after this many seconds (exit 1)"),
    api_url: str = ApiUrl, api_key: str | None = ApiKey,
) -> None:
    """Wait for a job with a progress bar, then print it as JSON (exit 1 unless it succeeded)."""
    with open_client(api_url, api_key) as client:
        try:
            job = wait_job(client, client.get_job(job_id), timeout)
        except ApiError as exc:
            raise fail(exc) from None
        except WaitTimeout as exc:
            typer.secho(f"gave up waiting: job {exc}", err=True, fg="red")
            raise typer.Exit(1) from None
    typer.echo(dumps(job))
    if job["status"] != JobStatus.SUCCEEDED:
        raise typer.Exit(1)


@app.command("cancel")
def cancel(job_id: str, api_url: str = ApiUrl, api_key: str | None = ApiKey) -> None:
    """Cancel a job (queued: at once; running: between sampling steps)."""
    with open_client(api_url, api_key) as client:
        try:
            job = client.cancel_job(job_id)
        except ApiError as exc:
            raise fail(exc) from None
    typer.echo(dumps(job) if json_mode() else f"{job['id']} {job['status']}")


def workers(
    as_json: bool = typer.Option(False, "--json"),
    api_url: str = ApiUrl, api_key: str | None = ApiKey,
) -> None:
    """Live workers: device, model, what they serve, batches run, last heartbeat."""
    with open_client(api_url, api_key) as client:
        try:
            answer = client.workers()
        except ApiError as exc:
            raise fail(exc) from None
    if json_mode(as_json):
        typer.echo(dumps(answer))
        return
    table = Table("worker", "device", "model", "serves", "batches", "jobs", "heartbeat", box=box.SIMPLE)
    for w in _items(answer):
        table.add_row(str(w.get("id")), str(w.get("device") or ""), str(w.get("model_id") or ""),
                      ",".join(w.get("kinds") or []), str(w.get("batches_served", "")),
                      str(w.get("jobs_served", "")), f"{w['heartbeat_age_s']} s ago" if "heartbeat_age_s" in w else "")
    console.print(table)


def _items(answer: Any) -> list[dict[str, Any]]:
    if isinstance(answer, list):
        return answer
    return answer.get("data") or []


def _short_time(value: Any) -> str:
    """`2026-11-23T10:51:40.123+00:00` -> `2026-11-23 10:51:40`."""
    return str(value or "").replace("T", " ")[:19]


def _progress_text(job: dict[str, Any]) -> str:
    prog = job.get("progress") or {}
    return f"{prog.get('step', 0)}/{prog['total']}" if prog.get("total") else ""


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="jobs")
    root.command("workers")(workers)
