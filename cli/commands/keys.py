"""`unipic keys create|list|revoke|set-weight`: manage API keys in the configured database (same settings as the server).

A key's plaintext is printed once, at creation, and never stored. In embedded mode the SQLite database is
migrated first, so `unipic keys create` works on a fresh data directory.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from cli.commands.credentials import database_for, print_created, print_listing, print_revoked
from cli.runtime import DataDir

if TYPE_CHECKING:
    from storage.keys import KeyStore

app = typer.Typer(no_args_is_help=True, help="Create, list and revoke API keys; set their fair-share weight")
WEIGHT_HELP = "Fair-share weight (> 0): under contention a key gets work in proportion to its weight"


def _key_store(data_dir: Path | None) -> KeyStore:
    from storage.keys import KeyStore

    return KeyStore(database_for(data_dir))


@app.command("create")
def create(
    name: str = typer.Option(..., "--name", help="A label for the key"),
    rate_limit: int | None = typer.Option(None, "--rate-limit", min=1, help="Requests per minute"),
    max_active: int | None = typer.Option(None, "--max-active", min=1, help="Queued+running jobs allowed"),
    weight: float = typer.Option(1.0, "--weight", help=WEIGHT_HELP),
    as_json: bool = typer.Option(False, "--json", help='Print {"id", "key", "webhook_secret"}'),
    data_dir: Path | None = DataDir,
) -> None:
    """Create a key and print it (shown only this once)."""
    from storage.errors import InvalidWeight

    try:
        record, plaintext = _key_store(data_dir).create(name, rate_limit_per_minute=rate_limit,
                                                        max_active_jobs=max_active, weight=weight)
    except InvalidWeight as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(2) from None
    print_created(as_json, {"id": record.id, "key": plaintext, "webhook_secret": record.webhook_secret},
                  [f"id:             {record.id}", f"key:            {plaintext}   (shown once: store it now)",
                   f"webhook secret: {record.webhook_secret}"])


@app.command("list")
def list_keys(
    include_revoked: bool = typer.Option(False, "--all", help="Include revoked keys"),
    as_json: bool = typer.Option(False, "--json"),
    data_dir: Path | None = DataDir,
) -> None:
    """List keys (id, name, prefix, weight, created, revoked); never the key itself."""
    records = _key_store(data_dir).page(include_revoked=include_revoked)
    rows: list[dict[str, Any]] = [
        {"id": r.id, "name": r.name, "prefix": r.key_prefix, "created_at": r.created_at.isoformat(),
         "revoked_at": r.revoked_at.isoformat() if r.revoked_at else None, "weight": r.weight} for r in records]
    print_listing(rows, as_json, lambda row: f"{row['id']}  {row['prefix']}…  {row['name']}  "
                                             f"weight {row['weight']:g}  {row['created_at']}")


@app.command("revoke")
def revoke(key_id: str = typer.Argument(..., help="The key's id"), data_dir: Path | None = DataDir) -> None:
    """Revoke a key: it can no longer authenticate; its jobs stay."""
    print_revoked(lambda: _key_store(data_dir).revoke(key_id), lambda _: f"no key {key_id}")


@app.command("set-weight")
def set_weight(
    key_id: str = typer.Argument(..., help="The key's id"),
    weight: float = typer.Argument(..., help=WEIGHT_HELP),
    data_dir: Path | None = DataDir,
) -> None:
    """Set a key's fair-share weight: its share of each queue's work against other busy keys (default 1)."""
    from storage.errors import InvalidWeight, NotFound

    try:
        record = _key_store(data_dir).set_weight(key_id, weight)
    except NotFound:
        typer.echo(f"no key {key_id}", err=True)
        raise typer.Exit(1) from None
    except InvalidWeight as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(2) from None
    typer.echo(f"{record.id} ({record.name}) weight {record.weight:g}")


def register(parent: typer.Typer) -> None:
    """Add `unipic keys ...` to the root command."""
    parent.add_typer(app, name="keys")
