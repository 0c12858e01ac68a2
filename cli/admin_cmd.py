"""`unipic version` and `unipic migrate`: commands that touch the service's own state."""

from __future__ import annotations

from pathlib import Path

import typer

from cli.runtime import DataDir


def register(app: typer.Typer) -> None:
    @app.command()
    def version() -> None:
        """Print the installed version."""
        from importlib.metadata import version as dist_version

        typer.echo(dist_version("unipic-queue"))

    @app.command()
    def migrate(data_dir: Path | None = DataDir, revision: str = "head") -> None:
        """Apply database migrations (alembic upgrade) to the configured database."""
        from cli.runtime import settings_for
        from storage.migrate import upgrade

        settings = settings_for(data_dir)
        upgrade(settings, revision)
        typer.echo(f"database at {settings.database_url} is at {revision}")
