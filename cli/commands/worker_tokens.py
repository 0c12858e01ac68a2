"""`unipic worker-tokens create|list|revoke`: manage the worker tokens of the HTTPS worker gateway.

A worker token (`wk_...`) lets `unipic worker --gateway URL --token wk_...` pull jobs of its allowed kinds and
sizes over HTTPS, with no database, broker or bucket credentials. Its plaintext is printed once, at creation,
and never stored; revoking it refuses the worker's next call. Same settings (database) as the server; in
embedded mode the SQLite database is migrated first.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from cli.commands.credentials import database_for, print_created, print_listing, print_revoked
from cli.runtime import DataDir

if TYPE_CHECKING:
    from storage.fleet.tokens import WorkerTokenStore

app = typer.Typer(no_args_is_help=True, help="Create, list and revoke worker tokens (remote GPUs over HTTPS)")


def _token_store(data_dir: Path | None) -> WorkerTokenStore:
    from storage.fleet.tokens import WorkerTokenStore

    return WorkerTokenStore(database_for(data_dir))


@app.command("create")
def create(
    name: str = typer.Option(..., "--name", help="A label for the worker (e.g. 'alice-4090')"),
    kinds: str = typer.Option("generate,edit,understand", "--kinds", help="Comma-separated kinds it may run"),
    max_pixels: int = typer.Option(1024 * 1024, "--max-pixels", min=1, help="Largest image (pixels) it may run"),
    as_json: bool = typer.Option(False, "--json", help='Print {"id", "token", "kinds", "max_pixels"}'),
    data_dir: Path | None = DataDir,
) -> None:
    """Create a worker token and print it (shown only this once)."""
    from storage.fleet.tokens import InvalidWorkerToken

    try:
        record, plaintext = _token_store(data_dir).create(name, kinds.split(","), max_pixels)
    except InvalidWorkerToken as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(2) from None
    data = {"id": record.id, "token": plaintext, "kinds": record.kinds, "max_pixels": record.max_pixels}
    print_created(as_json, data,
                  [f"id:     {record.id}", f"token:  {plaintext}   (shown once: store it now)",
                   f"serves: {', '.join(record.kinds)} up to {record.max_pixels} pixels"])


@app.command("list")
def list_tokens(
    include_revoked: bool = typer.Option(False, "--all", help="Include revoked tokens"),
    as_json: bool = typer.Option(False, "--json"),
    data_dir: Path | None = DataDir,
) -> None:
    """List worker tokens (id, name, prefix, kinds, max pixels, created, revoked); never the token itself."""
    rows: list[dict[str, Any]] = [
        {"id": r.id, "name": r.name, "prefix": r.token_prefix, "kinds": r.kinds, "max_pixels": r.max_pixels,
         "created_at": r.created_at.isoformat(), "revoked_at": r.revoked_at.isoformat() if r.revoked_at else None}
        for r in _token_store(data_dir).page(include_revoked=include_revoked)]
    print_listing(rows, as_json, lambda row: f"{row['id']}  {row['prefix']}…  {row['name']}  "
                                             f"{','.join(row['kinds'])}  {row['max_pixels']} px  {row['created_at']}")


@app.command("revoke")
def revoke(token_id: str = typer.Argument(..., help="The token's id"), data_dir: Path | None = DataDir) -> None:
    """Revoke a worker token: its workers' next call is refused (401); their jobs return to the queue."""
    print_revoked(lambda: _token_store(data_dir).revoke(token_id), str)


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="worker-tokens")
