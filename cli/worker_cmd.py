"""`unipic worker` (the model worker) and `unipic sweeper` (the queue sweeper loop).

`unipic worker` runs Celery's worker in this process with the solo pool and concurrency 1: one process, one
model, loaded after start. Options become `UNIPIC_*` variables before `workers.gpu` is imported, so the
Celery app, the queues it subscribes to and the runtime all see the same settings.
"""

from __future__ import annotations

import logging
import os
import socket
from pathlib import Path

import typer

DataDir = typer.Option(None, "--data-dir", envvar="UNIPIC_DATA_DIR", help="Where embedded state lives")


def register(app: typer.Typer) -> None:
    @app.command()
    def worker(
        device: str = typer.Option("cpu", "--device", envvar="UNIPIC_WORKER_DEVICE", help="cpu, cuda or cuda:N"),
        model: str | None = typer.Option(None, "--model", help="HF repo id, local path, or 'tiny'"),
        kinds: str | None = typer.Option(None, "--kinds", help="Comma-separated: generate,edit,understand"),
        max_batch: int | None = typer.Option(None, "--max-batch", help="Jobs per batch at most"),
        max_pixels: int | None = typer.Option(None, "--max-pixels", help="Largest image (pixels) served"),
        queues: str | None = typer.Option(None, "--queues", "-Q", help="Override the subscribed queues"),
        metrics_port: int | None = typer.Option(None, "--metrics-port", help="Serve Prometheus metrics"),
        name: str | None = typer.Option(None, "--name", help="Worker name (default: the host name)"),
        loglevel: str = typer.Option("INFO", "--loglevel"),
        data_dir: Path | None = DataDir,
    ) -> None:
        """Start a model worker: one model on one device, serving batches from the GPU queues."""
        from cli.runtime import settings_for

        env = {
            "UNIPIC_WORKER_DEVICE": device, "UNIPIC_MODEL": model, "UNIPIC_WORKER_KINDS": kinds,
            "UNIPIC_WORKER_MAX_BATCH": max_batch, "UNIPIC_WORKER_MAX_PIXELS": max_pixels,
            "UNIPIC_WORKER_METRICS_PORT": metrics_port, "UNIPIC_WORKER_NAME": name,
            "UNIPIC_DATA_DIR": data_dir,
        }
        os.environ.update({k: str(v) for k, v in env.items() if v is not None})
        settings_for(data_dir)  # validates the environment and creates the embedded data dir

        from workers.gpu import app as celery_app
        from workers.gpu import settings as worker_settings

        subscribed = queues or ",".join(q.name for q in celery_app.conf.task_queues)
        hostname = f"gpu-{worker_settings.worker_name or socket.gethostname()}-{os.getpid()}@%h"
        celery_app.worker_main([
            "worker", "--pool", "solo", "--concurrency", "1", "--queues", subscribed,
            "--hostname", hostname, "--loglevel", loglevel, "--without-gossip", "--without-mingle",
        ])

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
        overrides = {"sweep_interval_seconds": interval} if interval else {}
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
