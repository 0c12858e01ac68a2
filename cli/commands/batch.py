"""`unipic batch submit|wait|show|cancel|download`: JSONL batches over HTTP.

`submit` checks the file line by line before sending it as one all-or-nothing `POST /v1/batches` with an
Idempotency-Key derived from the file's content, so running it again after a network blip returns the same
batch instead of submitting it twice (`--idempotency-key` to choose one, e.g. to submit the same file anew);
`wait` is resumable (it only needs the batch id, or a unique prefix of it); `download` writes each item's
results named by its `custom_id` (the job id when there is none), skips files already there, so an interrupted
download just runs again, and `--manifest` saves the results manifest (JSONL).
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import typer

from cli.client import ApiClient, ApiError, ApiKey, ApiUrl, dumps, echo_call, fail, open_client
from cli.output import json_mode
from cli.waiting import WaitTimeout, batch_counts, batch_done, wait_batch
from storage.states import TERMINAL_STATUSES, JobStatus

Timeout = typer.Option(None, "--timeout", help="Give up waiting after this many seconds (exit 1)")
ItemsFile = typer.Argument(..., exists=True, dir_okay=False, help="JSONL: one job body per line")
ManifestOut = typer.Option(None, "--manifest", dir_okay=False,
                           help="Also save the results manifest (JSONL, one line per item) here; a relative "
                                "path is inside DIR")
TargetDir = typer.Argument(..., file_okay=False, help="Where to write results")

app = typer.Typer(no_args_is_help=True, help="Submit a JSONL batch, follow it, download its results")

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


@app.command("submit")
def submit(
    items: Path = ItemsFile,
    wait: bool = typer.Option(False, "--wait", help="Wait with a progress bar until every item is done"),
    idempotency_key: str | None = typer.Option(
        None, "--idempotency-key", help="Default: derived from the file, so a re-run returns the same batch"),
    as_json: bool = typer.Option(False, "--json", help="Print the batch as JSON"),
    timeout: float | None = Timeout, api_url: str = ApiUrl, api_key: str | None = ApiKey,
) -> None:
    """Submit a batch (all-or-nothing); print its id."""
    body = _checked_jsonl(items)
    key = idempotency_key or "cli-batch-" + hashlib.sha256(body).hexdigest()[:48]
    with open_client(api_url, api_key) as client:
        try:
            batch = client.create_batch([json.loads(line) for line in body.splitlines()], key)
        except ApiError as exc:
            raise fail(exc) from None
        typer.echo(dumps(batch) if json_mode(as_json) else batch["id"])
        if wait:
            _wait_and_report(client, batch, timeout)


@app.command("wait")
def wait_cmd(batch_id: str, timeout: float | None = Timeout, api_url: str = ApiUrl,
             api_key: str | None = ApiKey) -> None:
    """Wait for a batch already submitted (resumable: run it again any time)."""
    with open_client(api_url, api_key) as client:
        try:
            _wait_and_report(client, client.get_batch(batch_id), timeout)
        except ApiError as exc:
            raise fail(exc) from None


@app.command("show")
def show(batch_id: str, api_url: str = ApiUrl, api_key: str | None = ApiKey) -> None:
    """A batch as JSON (counts per status; the manifest link when done)."""
    echo_call(api_url, api_key, lambda client: client.get_batch(batch_id))


@app.command("cancel")
def cancel(batch_id: str, api_url: str = ApiUrl, api_key: str | None = ApiKey) -> None:
    """Cancel every item of a batch that has not finished."""
    echo_call(api_url, api_key, lambda client: client.cancel_batch(batch_id))


@app.command("download")
def download(
    batch_id: str,
    directory: Path = TargetDir,
    manifest: Path | None = ManifestOut,
    api_url: str = ApiUrl, api_key: str | None = ApiKey,
) -> None:
    """Download results named by custom_id: images as NAME.png (NAME-1.png, ... for several), answers NAME.txt."""
    directory.mkdir(parents=True, exist_ok=True)
    if manifest is not None:
        manifest = directory / manifest  # a relative path is inside DIR, like the results (absolute: as given)
    written = skipped = failed = 0
    with open_client(api_url, api_key) as client:
        try:
            batch_id = client.batch_id(batch_id)
            if manifest is not None:
                manifest.parent.mkdir(parents=True, exist_ok=True)
                manifest.write_bytes(client.sdk.download_manifest(batch_id))
            for job in client.iter_jobs(batch_id=batch_id, limit=100):
                if job["status"] != JobStatus.SUCCEEDED:
                    failed += job["status"] in TERMINAL_STATUSES
                    continue
                w, s = _save_job(client, job, directory)
                written, skipped = written + w, skipped + s
        except ApiError as exc:
            raise fail(exc) from None
    if json_mode():
        typer.echo(dumps({"written": written, "skipped": skipped, "without_results": failed,
                          "directory": str(directory), "manifest": str(manifest) if manifest else None}))
        return
    typer.echo(f"{written} files written, {skipped} already present, {failed} items without results, in {directory}")


# ---- helpers --------------------------------------------------------------------------------------------------
def _checked_jsonl(path: Path) -> bytes:
    """The file's non-empty lines, each checked to be a JSON object; exits 2 naming the first bad line."""
    lines = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            typer.secho(f"error: {path}:{number}: not JSON ({exc.msg})", err=True, fg="red")
            raise typer.Exit(2) from None
        if not isinstance(obj, dict):
            typer.secho(f"error: {path}:{number}: expected a JSON object", err=True, fg="red")
            raise typer.Exit(2)
        lines.append(json.dumps(obj))
    if not lines:
        typer.secho(f"error: {path} holds no items", err=True, fg="red")
        raise typer.Exit(2)
    return ("\n".join(lines) + "\n").encode()


def _wait_and_report(client: ApiClient, batch: dict[str, Any], timeout: float | None) -> None:
    try:
        batch = wait_batch(client, batch, timeout)
    except WaitTimeout as exc:
        typer.secho(f"gave up waiting: batch {exc}; `unipic batch wait {exc.last.id}` resumes",
                    err=True, fg="red")
        raise typer.Exit(1) from None
    counts = batch_counts(batch)
    typer.echo(dumps(batch) if json_mode() else " ".join(f"{k}={v}" for k, v in sorted(counts.items()) if v))
    if not batch_done(batch) or any(v for k, v in counts.items() if k != JobStatus.SUCCEEDED):
        raise typer.Exit(1)


def item_name(job: dict[str, Any]) -> str:
    """A safe relative file stem for a batch item: its custom_id, or its job id when it has none.

    `/` in a custom_id makes subdirectories (`cats/1` -> `cats/1.png`); other unsafe characters become `_`,
    `.`/`..` parts are dropped (nothing escapes the target directory), and an id that had to change gets a
    short hash of the original so two different ids never share a file."""
    custom_id = job.get("custom_id") or ""
    parts = [_UNSAFE.sub("_", part).strip("._") for part in custom_id.split("/")]
    safe = "/".join(part for part in parts if part)
    if not safe:
        return str(job["id"])
    if safe != custom_id:
        safe += "-" + hashlib.sha1(custom_id.encode()).hexdigest()[:8]
    return safe


def _save_job(client: ApiClient, job: dict[str, Any], directory: Path) -> tuple[int, int]:
    name = item_name(job)
    result = job.get("result") or {}
    images = result.get("images") or []
    targets: list[tuple[Path, str | None]] = []
    for i, image in enumerate(images):
        suffix = Path(urlsplit(image["url"]).path).suffix or ".png"
        stem = name if len(images) == 1 else f"{name}-{i + 1}"
        targets.append((directory / f"{stem}{suffix}", image["url"]))
    if result.get("text") is not None:
        targets.append((directory / f"{name}.txt", None))
    written = skipped = 0
    for path, url in targets:
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.exists():
            skipped += 1
            continue
        data = client.download(url) if url else str(result["text"]).encode()
        tmp = path.with_name(path.name + ".part")
        tmp.write_bytes(data)
        tmp.replace(path)  # never leave a half file under the final name
        written += 1
    return written, skipped
