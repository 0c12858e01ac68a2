"""What `unipic keys` and `unipic worker-tokens` share: the deployment's database, and how a credential is
printed when it is created (its plaintext, the only time it is shown) and when it is listed (never the secret)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import typer

from cli.runtime import settings_for

if TYPE_CHECKING:
    from storage.db import SessionFactory
    from storage.errors import NotFound


class Credential(Protocol):
    @property
    def id(self) -> str: ...

    @property
    def name(self) -> str: ...


def database_for(data_dir: Path | None) -> SessionFactory:
    """Sessions on an existing deployment's database (same settings as the server). In embedded mode the SQLite
    database is migrated first, so these commands work on a fresh data directory."""
    from storage.db import make_engine, make_session_factory

    settings = settings_for(data_dir, must_exist=True)
    if settings.embedded:
        from storage.migrate import upgrade

        upgrade(settings)
    return make_session_factory(make_engine(settings))


def print_created(as_json: bool, data: dict[str, Any], lines: list[str]) -> None:
    """A credential just created: `data` as JSON, or `lines` for people."""
    typer.echo(json.dumps(data) if as_json else "\n".join(lines))


def print_listing(rows: list[dict[str, Any]], as_json: bool, line: Callable[[dict[str, Any]], str]) -> None:
    """Credentials as JSON rows, or one `line` each, followed by when it was revoked."""
    if as_json:
        typer.echo(json.dumps(rows))
        return
    for row in rows:
        typer.echo(line(row) + (f"  revoked {row['revoked_at']}" if row["revoked_at"] else ""))


def print_revoked(revoke: Callable[[], Credential], missing: Callable[[NotFound], str]) -> None:
    """Revoke and say so; an unknown id exits 1 with `missing`'s message."""
    from storage.errors import NotFound

    try:
        record = revoke()
    except NotFound as exc:
        typer.echo(missing(exc), err=True)
        raise typer.Exit(1) from None
    typer.echo(f"revoked {record.id} ({record.name})")
