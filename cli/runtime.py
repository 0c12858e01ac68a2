"""Helpers shared by subcommands: settings honoring --data-dir, clear startup errors."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

if TYPE_CHECKING:
    from storage.settings import Settings

DataDir = typer.Option(None, "--data-dir", envvar="UNIPIC_DATA_DIR", help="Where embedded state lives")


def settings_for(data_dir: Path | None = None, **overrides: Any) -> Settings:
    """Settings from the environment, with `--data-dir` applied; exits with the message on invalid settings."""
    from storage.settings import SettingsError, load_settings

    if data_dir is not None:
        overrides["data_dir"] = data_dir
    try:
        settings = load_settings(**overrides)
    except SettingsError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(2) from None
    settings.ensure_data_dir()
    return settings
