"""`unipic model ...`: model information (owned by the model work; imports model lazily)."""

from __future__ import annotations

import typer

app = typer.Typer(no_args_is_help=True)
