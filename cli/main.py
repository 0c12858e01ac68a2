"""The `unipic` command: the composition root.

Each subcommand lives in its own module under `cli/` and imports the heavy packages (torch, the model, FastAPI,
Celery workers) inside the command function, so `unipic --help` and the client commands start fast and the
API image never needs torch.
"""

from __future__ import annotations

import typer

from cli import (
    admin_cmd,
    batch_cmd,
    cpu_cmd,
    health_cmd,
    jobs_cmd,
    keys_cmd,
    model_cmd,
    submit_cmd,
    up,
    worker_cmd,
)

app = typer.Typer(no_args_is_help=True, add_completion=False, help="Skywork UniPic job queue")
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

if __name__ == "__main__":
    app()
