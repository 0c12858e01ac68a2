"""The `unipic` command: the composition root.

Each subcommand lives in its own module under `cli/commands/` and imports the heavy packages (torch, the model, FastAPI,
Celery workers) inside the command function, so `unipic --help` and the client commands start fast and the
API image never needs torch.
"""

from __future__ import annotations

import os
from pathlib import Path

import typer
from dotenv import dotenv_values

from cli.commands import admin as admin_cmd
from cli.commands import batch as batch_cmd
from cli.commands import cpu as cpu_cmd
from cli.commands import health as health_cmd
from cli.commands import jobs as jobs_cmd
from cli.commands import keys as keys_cmd
from cli.commands import model as model_cmd
from cli.commands import submit as submit_cmd
from cli.commands import up
from cli.commands import webhooks as webhooks_cmd
from cli.commands import worker as worker_cmd
from cli.commands import worker_tokens as worker_tokens_cmd
from cli.output import set_json_mode


def load_env_file() -> Path:
    """`KEY=value` lines of `./.env` (or of the file `UNIPIC_ENV_FILE` names), parsed by python-dotenv without
    `${...}` expansion, become environment variables unless the variable is already set and non-empty: the
    environment wins over the file. A missing file changes nothing. Returns the file looked at."""
    path = Path(os.environ.get("UNIPIC_ENV_FILE") or ".env")
    for name, value in dotenv_values(path, interpolate=False).items():
        if value is not None and not os.environ.get(name):
            os.environ[name] = value
    return path


load_env_file()  # before typer reads any UNIPIC_* option

app = typer.Typer(no_args_is_help=True, add_completion=True, help="Skywork UniPic job queue")


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import PackageNotFoundError, version

        import unipic_client

        try:
            server = version("unipic-queue")
        except PackageNotFoundError:
            server = "unknown"
        typer.echo(f"unipic {server} (unipic-client {unipic_client.__version__})")
        raise typer.Exit()


@app.callback()
def root(
    as_json: bool = typer.Option(False, "--json", help="Print every answer as JSON (scripts)"),
    _show_version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                       help="Print the version and exit"),
) -> None:
    """Skywork UniPic job queue. Settings come from UNIPIC_* variables, also read from ./.env."""
    set_json_mode(as_json)


app.add_typer(model_cmd.app, name="model", help="Inspect model configurations and checkpoints")
admin_cmd.register(app)
up.register(app)
worker_cmd.register(app)
cpu_cmd.register(app)
submit_cmd.register(app)
jobs_cmd.register(app)
app.add_typer(batch_cmd.app, name="batch")
health_cmd.register(app)
keys_cmd.register(app)
webhooks_cmd.register(app)
worker_tokens_cmd.register(app)

if __name__ == "__main__":
    app()
