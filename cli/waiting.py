"""Waiting for jobs and batches with a progress bar, and saving what they produced.

Owns the rich progress display (on stderr, so stdout stays clean for answers and ids) and where result images
go for `-o`. The waiting itself is the SDK's (SSE with long-poll fallback for a job; counts for a batch).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from cli.client import ApiClient
from unipic_client import Batch, Job
from unipic_client.errors import WaitTimeout
from unipic_client.models import TERMINAL_STATUSES
from unipic_client.models import Progress as JobProgress

TERMINAL = TERMINAL_STATUSES

__all__ = ["TERMINAL", "WaitTimeout", "batch_counts", "batch_done", "image_paths", "save_images", "wait_batch",
           "wait_job"]

err_console = Console(stderr=True)


def _progress() -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    console=err_console, transient=False)


def _describe(job: Job) -> str:
    if job.status == "queued" and job.queue_position is not None:
        return f"{job.id[:13]} queued (position {job.queue_position})"
    return f"{job.id[:13]} {job.status}"


def wait_job(client: ApiClient, job: dict[str, Any], timeout: float | None = None) -> dict[str, Any]:
    """Wait (SSE, long-poll fallback) until the job is finished, drawing its sampling progress.

    Raises `WaitTimeout` after `timeout` seconds (None: wait as long as it takes)."""
    with _progress() as bar:
        task = bar.add_task(f"{job['id'][:13]} {job['status']}", total=None)

        def show(current: Job, progress: JobProgress | None) -> None:
            step, total = (progress.step, progress.total) if progress else (0, None)
            if current.status == "succeeded":
                step = total = total or 1
            bar.update(task, description=_describe(current), completed=step, total=total)

        done = client.sdk.wait(job["id"], timeout=timeout, on_progress=show)
        show(done, done.progress)
    return done.model_dump(mode="json")


def wait_batch(client: ApiClient, batch: dict[str, Any], timeout: float | None = None) -> dict[str, Any]:
    """Wait until every item of the batch is finished, drawing done/total; return the final batch."""
    with _progress() as bar:
        task = bar.add_task(f"batch {batch['id'][:13]}", total=batch.get("total") or None)

        def show(current: Batch) -> None:
            bar.update(task, completed=current.counts.finished, total=current.total,
                       description=f"batch {current.id[:13]} {_count_text(current)}")

        final = client.sdk.wait_batch(batch["id"], timeout=timeout, on_update=show)
        show(final)
    return final.model_dump(mode="json")


def batch_counts(batch: dict[str, Any]) -> dict[str, int]:
    return {k: int(v) for k, v in (batch.get("counts") or {}).items()}


def batch_done(batch: dict[str, Any]) -> bool:
    return Batch.model_validate(batch).done


def _count_text(batch: Batch) -> str:
    return " ".join(f"{k}={v}" for k, v in sorted(batch.counts.model_dump().items()) if v)


def image_paths(out: Path, count: int) -> list[Path]:
    """Where `count` images go for `-o out`: `out` itself for one, `out-1`, `out-2`, ... for several."""
    if count == 1:
        return [out]
    return [out.with_name(f"{out.stem}-{i + 1}{out.suffix}") for i in range(count)]


def save_images(client: ApiClient, job: dict[str, Any], paths: list[Path]) -> list[Path]:
    """Download the job's result images to the given paths (as many as there are images)."""
    images = (job.get("result") or {}).get("images") or []
    written = []
    for image, path in zip(images, paths, strict=False):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(client.download(image["url"]))
        written.append(path)
    return written
