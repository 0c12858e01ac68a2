"""`unipic worker` (the model worker) and `unipic sweeper` (the queue sweeper loop).

`unipic worker` runs Celery's worker in this process with the solo pool and concurrency 1: one process, one
model. Options are settings overrides: the command builds `Settings` from the environment plus its options and
hands them to `workers.gpu.configure`, so the Celery app, the queues it subscribes to and the runtime all see the
same settings. Load before consume: the model is loaded and warmed up
here, before Celery starts; when that fails the command prints one line (what failed, what to do) and exits with
the code of `workers.startup.ExitCode`, having subscribed to nothing. The worker's own exit code (e.g.
`DEVICE_LOST`) becomes this command's.

`unipic worker --gateway URL --token wk_...` is the same worker on the remote transport
(`workers.transport.gateway_runtime`): no Celery, no database, broker or storage settings (it refuses to start when it
finds any), work pulled from the API's worker gateway over HTTPS.
"""

from __future__ import annotations

import logging
import os
import socket
from pathlib import Path
from typing import Any

import typer

DataDir = typer.Option(None, "--data-dir", envvar="UNIPIC_DATA_DIR", help="Where embedded state lives")


def register(app: typer.Typer) -> None:
    @app.command()
    def worker(
        device: str | None = typer.Option(None, "--device", help="cpu, cuda or cuda:N (default: UNIPIC_WORKER_DEVICE, "
                                           "else cpu)"),
        model: str | None = typer.Option(None, "--model", help="HF repo id, local path, or 'tiny'"),
        model_name: str | None = typer.Option(None, "--model-name", help="Serve the checkpoint as this model (jobs "
                                              "naming it run here); default: the deployment's default model"),
        kinds: str | None = typer.Option(None, "--kinds", help="Comma-separated: generate,edit,understand"),
        max_batch: int | None = typer.Option(None, "--max-batch", help="Jobs per batch at most"),
        max_pixels: int | None = typer.Option(None, "--max-pixels", help="Largest image (pixels) served"),
        queues: str | None = typer.Option(None, "--queues", "-Q", help="Override the subscribed queues"),
        metrics_port: int | None = typer.Option(None, "--metrics-port", help="Serve Prometheus metrics"),
        name: str | None = typer.Option(None, "--name", help="Worker name (default: the host name)"),
        loglevel: str = typer.Option("INFO", "--loglevel"),
        data_dir: Path | None = DataDir,
        gateway: str | None = typer.Option(None, "--gateway", help="Pull work over HTTPS from this API URL"),
        token: str | None = typer.Option(None, "--token", envvar="UNIPIC_WORKER_TOKEN",
                                         help="Worker token (wk_...) for --gateway"),
    ) -> None:
        """Start a model worker: one model on one device, serving batches from the GPU queues (or, with
        --gateway and --token, from the API's worker gateway over HTTPS, with no database/broker/storage)."""
        from cli.runtime import settings_for

        overrides = _overrides(device, model, kinds, max_batch, max_pixels, name)
        if model_name is not None:
            overrides["model_name"] = model_name
        if gateway is not None or token is not None:
            _gateway_worker(gateway, token, overrides, loglevel)
            return
        if metrics_port is not None:
            overrides["worker_metrics_port"] = metrics_port
        settings = settings_for(data_dir, **overrides)  # exits 2 naming a bad value; creates the embedded data dir

        from cli.logs import celery_argv, take_over_celery
        from workers.app import WORKER_FLAGS
        from workers.gpu import configure, start_runtime, worker_settings
        from workers.startup import StartupFailure

        celery_app = configure(settings)
        take_over_celery(loglevel, settings)
        subscribed = queues or ",".join(q.name for q in celery_app.conf.task_queues)
        hostname = f"gpu-{worker_settings().worker_name or socket.gethostname()}-{os.getpid()}@%h"
        try:
            start_runtime(hostname=hostname.replace("%h", socket.gethostname()))
        except StartupFailure as failure:
            typer.echo(failure.line(), err=True)
            raise typer.Exit(int(failure.code)) from None
        # returns the worker's exit code (celery-types says NoReturn)
        code: int | None = celery_app.start(celery_argv([
            "worker", "--pool", "solo", "--concurrency", "1", "--queues", subscribed,
            "--hostname", hostname, "--loglevel", loglevel, *WORKER_FLAGS,
        ], loglevel, settings))
        raise typer.Exit(int(code or 0))

    @app.command()
    def sweeper(
        once: bool = typer.Option(False, "--once", help="Sweep once and exit"),
        interval: float | None = typer.Option(None, "--interval", help="Seconds between sweeps"),
        data_dir: Path | None = DataDir,
    ) -> None:
        """Run the queue sweeper: requeue lost work, expire overdue jobs, re-enqueue jobs with no message."""
        from cli.runtime import settings_for
        from workers.sweeper import Sweeper

        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        overrides: dict[str, Any] = {"sweep_interval_seconds": interval} if interval else {}
        the_sweeper = Sweeper.from_settings(settings_for(data_dir, **overrides))
        if once:
            report = the_sweeper.sweep()
            typer.echo(
                f"requeued {len(report.requeued)}, expired {len(report.expired)}, "
                f"re-enqueued {len(report.reenqueued)}, workers gone {len(report.workers_gone)}"
            )
            return
        try:
            the_sweeper.run_forever()
        except KeyboardInterrupt:
            typer.echo("sweeper stopped")


def _overrides(device: str | None, model: str | None, kinds: str | None, max_batch: int | None, max_pixels: int | None,
               name: str | None) -> dict[str, Any]:
    """The worker's options as `Settings` fields (an option not given leaves the environment's value)."""
    given = {"worker_device": device, "model": model, "worker_kinds": kinds, "worker_max_batch": max_batch,
             "worker_max_pixels": max_pixels, "worker_name": name}
    return {field: value for field, value in given.items() if value is not None}


def _gateway_worker(gateway: str | None, token: str | None, overrides: dict[str, Any], loglevel: str) -> None:
    """`unipic worker --gateway URL --token wk_...`: the remote transport (workers.transport.gateway_runtime)."""
    from workers.transport.gateway_runtime import CredentialsGiven, refuse_credentials

    if not gateway or not token:
        typer.echo("error: --gateway and --token go together (create a token with `unipic worker-tokens create`)",
                   err=True)
        raise typer.Exit(2)
    try:
        refuse_credentials(os.environ)
    except CredentialsGiven as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    logging.basicConfig(level=loglevel.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from storage.settings import SettingsError, load_settings
    from workers.device.card_fit import fit_to_card
    from workers.transport.gateway_runtime import run

    try:
        settings = load_settings(**overrides)  # no data dir: this worker keeps no state of its own
    except SettingsError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(2) from None
    raise typer.Exit(run(fit_to_card(settings), gateway, token))
