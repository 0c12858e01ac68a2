"""`unipic version`, `unipic migrate` and `unipic config`: the service's own state and settings."""

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

    register_config(app)


EMBEDDED_DEFAULTS = {
    "database_url": "sqlite file in data dir",
    "broker_url": "SQLite broker in data dir",
    "storage_url": "file:// data dir/objects",
    "redis_url": "the broker, if Redis",
}


def settings_table() -> str:
    """Every `UNIPIC_*` variable with its default and meaning, as the Markdown table README.md carries."""
    from storage.settings import Settings

    rows = ["| variable | default | meaning |", "|---|---|---|"]
    for name, field in Settings.model_fields.items():
        default = field.default if field.default_factory is None else field.default_factory()  # type: ignore[call-arg]
        if isinstance(default, list):
            default = ",".join(map(str, default)) or "(none)"
        elif isinstance(default, bool):
            default = str(default).lower()
        elif default == "":
            default = EMBEDDED_DEFAULTS.get(name, "(empty)")
        rows.append(f"| `UNIPIC_{name.upper()}` | `{default}` | {field.description or ''} |")
    return "\n".join(rows)


def register_config(app: typer.Typer) -> None:
    @app.command()
    def config(
        markdown: bool = typer.Option(False, "--markdown", help="Print the variables table (as in README.md)"),
        data_dir: Path | None = DataDir,
    ) -> None:
        """Print the effective settings (secrets hidden), or every variable with its default."""
        if markdown:
            typer.echo(settings_table())
            return
        from cli.runtime import settings_for

        for name, value in settings_for(data_dir).model_dump().items():
            shown = "***" if name == "api_key" and value else value
            typer.echo(f"UNIPIC_{name.upper()}={shown}")
