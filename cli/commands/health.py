"""`unipic healthcheck api|worker|celery`: container health checks (exit 0 healthy, 1 not), for compose.yaml.

- `api`: GET /readyz on the local API (database, broker, object store reachable).
- `worker`: a model worker on this host has a fresh heartbeat in the `workers` table (so its model is loaded
  and it is consuming), read straight from the database the worker writes to.
- `celery`: a Celery worker named NODE answers a remote-control ping (Redis broker; the embedded SQLite broker
  has no broadcast, so this one is for production only).
"""

from __future__ import annotations

import socket
from pathlib import Path

import typer

from cli.runtime import DataDir, settings_for

app = typer.Typer(no_args_is_help=True, help="Health checks for containers (exit 0 = healthy)")


@app.command("api")
def api(url: str = typer.Option("http://127.0.0.1:8000", "--url", help="The API to check")) -> None:
    """The API answers /readyz with 200."""
    import httpx

    try:
        ok = httpx.get(f"{url.rstrip('/')}/readyz", timeout=5.0).status_code == 200
    except httpx.HTTPError as exc:
        typer.echo(f"unhealthy: {exc}", err=True)
        raise typer.Exit(1) from None
    if not ok:
        typer.echo("unhealthy: /readyz is not 200", err=True)
        raise typer.Exit(1)


@app.command("worker")
def worker(
    hostname: str | None = typer.Option(None, "--hostname", help="Default: this host's name"),
    max_age: float | None = typer.Option(None, "--max-age", help="Seconds; default 3 heartbeat intervals"),
    data_dir: Path | None = DataDir,
) -> None:
    """A model worker on this host has a fresh heartbeat."""
    from storage.db import make_engine, make_session_factory
    from storage.fleet.registry import WorkerRegistry

    settings = settings_for(data_dir)
    engine = make_engine(settings)
    try:
        live = WorkerRegistry(make_session_factory(engine)).live(max_age or 3 * settings.heartbeat_seconds)
    finally:
        engine.dispose()
    host = hostname or socket.gethostname()
    mine = [w for w in live if w.hostname == host or w.hostname.endswith(f"@{host}")]  # `name@host` too
    if not mine:
        typer.echo(f"unhealthy: no model worker on {host} with a recent heartbeat", err=True)
        raise typer.Exit(1)
    typer.echo(", ".join(w.id for w in mine))


@app.command("celery")
def celery(
    node: str = typer.Option(..., "--node", help="Node name, e.g. cpu@$HOSTNAME"),
    timeout: float = typer.Option(5.0, "--timeout"),
    data_dir: Path | None = DataDir,
) -> None:
    """A Celery worker answers a ping over the broker."""
    from workers.app import make_celery

    settings = settings_for(data_dir)
    replies = make_celery(settings).control.ping(destination=[node.replace("%h", socket.gethostname())],
                                                 timeout=timeout)
    if not replies:
        typer.echo(f"unhealthy: {node} did not answer", err=True)
        raise typer.Exit(1)


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="healthcheck")
