"""Helpers shared by subcommands: settings honoring --data-dir, clear startup errors."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

if TYPE_CHECKING:
    from storage.settings import Settings

DataDir = typer.Option(None, "--data-dir", envvar="UNIPIC_DATA_DIR", help="Where embedded state lives")


def settings_for(data_dir: Path | None = None, must_exist: bool = False, **overrides: Any) -> Settings:
    """Settings from the environment, with `--data-dir` applied; exits with the message on invalid settings.

    `must_exist`: a command that only reads or edits an existing deployment (`keys ...`) exits 2 instead of
    creating an empty embedded data dir (the one `unipic up` made is elsewhere, or UNIPIC_DATA_DIR is unset)."""
    from storage.settings import SettingsError, load_settings

    if data_dir is not None:
        overrides["data_dir"] = data_dir
    try:
        settings = load_settings(**overrides)
    except SettingsError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(2) from None
    if must_exist and settings.embedded and not settings.data_dir.is_dir():
        typer.echo(f"error: no unipic data dir at {settings.data_dir}; `unipic up` creates it, or point "
                   "UNIPIC_DATA_DIR (or --data-dir) at the one it uses", err=True)
        raise typer.Exit(2)
    settings.ensure_data_dir()
    return settings

