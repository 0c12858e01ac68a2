"""`unipic cpu-worker` (webhook delivery + maintenance tasks, optionally with beat) and `unipic beat`.

Both run the torch-free Celery app of `workers.cpu` in this process. The CPU worker is scalable (each one also
drains the webhook outbox on its own threads); beat (the periodic sweeper) must run exactly once per deployment:
`unipic up` runs `cpu-worker --beat`, compose runs `webhooks` replicas plus one `beat`. Options are settings overrides: the
command builds `Settings` and hands them to `workers.cpu.configure`, which builds the app from them.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from cli.runtime import DataDir, settings_for

if TYPE_CHECKING:
    from storage.settings import Settings


def register(app: typer.Typer) -> None:
    app.command("cpu-worker")(cpu_worker)
    app.command("beat")(beat)


def cpu_worker(
    with_beat: bool = typer.Option(False, "--beat", help="Also run beat in this process (one per deployment)"),
    concurrency: int = typer.Option(4, "--concurrency", min=1, help="Threads running maintenance tasks, and "
                                    "dispatch-loop threads delivering webhooks"),
    name: str = typer.Option("cpu@%h", "--name", help="Celery node name"),
    loglevel: str = typer.Option("INFO", "--loglevel"),
    metrics_port: int | None = typer.Option(None, "--metrics-port", help="Serve Prometheus metrics (deliveries, "
                                            "sweeper actions); 0 = off (default: UNIPIC_CPU_METRICS_PORT)"),
    data_dir: Path | None = DataDir,
) -> None:
    """Run the CPU worker: webhook delivery and maintenance tasks (no model, no torch)."""
    overrides: dict[str, Any] = {"cpu_metrics_port": metrics_port} if metrics_port is not None else {}
    settings = settings_for(data_dir, **overrides)
    from cli.logs import celery_argv, take_over_celery
    from workers.app import WORKER_FLAGS
    from workers.cpu import configure

    app = configure(settings)
    if settings.cpu_metrics_port:
        from workers.cpu_metrics import serve_cpu_metrics

        serve_cpu_metrics(settings.cpu_metrics_port)

    take_over_celery(loglevel, settings)
    argv = ["worker", "--pool", "threads", "--concurrency", str(concurrency), "--hostname", name,
            "--loglevel", loglevel, *WORKER_FLAGS]
    if with_beat:
        argv += ["--beat", "--schedule", str(_schedule(settings))]
    app.worker_main(celery_argv(argv, loglevel, settings))


def beat(
    loglevel: str = typer.Option("INFO", "--loglevel"),
    data_dir: Path | None = DataDir,
) -> None:
    """Run beat alone: it schedules the sweeper (run exactly one)."""
    settings = settings_for(data_dir)
    from cli.logs import take_over_celery
    from workers.cpu import configure

    app = configure(settings)
    take_over_celery(loglevel, settings)
    app.start(["beat", "--schedule", str(_schedule(settings)), "--loglevel", loglevel])


def _schedule(settings: Settings) -> Path:
    return settings.data_dir.expanduser().resolve() / "celerybeat-schedule"
