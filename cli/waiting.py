"""Waiting for jobs and batches with a progress bar, and saving what they produced.

Owns the polling loop (GET /v1/jobs/{id} or /v1/batches/{id} every half second; progress is throttled by the
server anyway), the rich progress display (on stderr, so stdout stays clean for answers and ids), and writing
result images next to the path the user asked for.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from cli.client import ApiClient

TERMINAL = frozenset({"succeeded", "failed", "canceled", "expired"})
POLL_S = 0.5

err_console = Console(stderr=True)


class WaitTimeout(Exception):
    """Still not finished after the time the user allowed; carries the last state seen."""

    def __init__(self, last: dict[str, Any], seconds: float) -> None:
        super().__init__(f"{last['id']} still {last.get('status', 'in progress')} after {seconds:.0f} s")
        self.last = last


def _progress() -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    console=err_console, transient=False)


def _describe(job: dict[str, Any]) -> str:
    status = job["status"]
    if status == "queued" and job.get("queue_position") is not None:
        return f"{job['id'][:13]} queued (position {job['queue_position']})"
    return f"{job['id'][:13]} {status}"


def _deadline(timeout: float | None) -> float:
    return time.monotonic() + timeout if timeout else float("inf")


def wait_job(client: ApiClient, job: dict[str, Any], timeout: float | None = None) -> dict[str, Any]:
    """Poll a job until it is terminal, drawing its sampling progress; return the final job.

    Raises `WaitTimeout` after `timeout` seconds (None: wait as long as it takes)."""
    deadline = _deadline(timeout)
    with _progress() as bar:
        task = bar.add_task(_describe(job), total=None)
        while job["status"] not in TERMINAL:
            if time.monotonic() > deadline:
                raise WaitTimeout(job, timeout or 0)
            time.sleep(POLL_S)
            job = client.get_job(job["id"])
            prog = job.get("progress") or {}
            total = prog.get("total") or None
            bar.update(task, description=_describe(job), completed=prog.get("step") or 0, total=total)
        if job["status"] == "succeeded":
            total = (job.get("progress") or {}).get("total") or 1
            bar.update(task, completed=total, total=total)
    return job


def wait_batch(client: ApiClient, batch: dict[str, Any], timeout: float | None = None) -> dict[str, Any]:
    """Poll a batch until every item is terminal, drawing done/total; return the final batch."""
    deadline = _deadline(timeout)
    with _progress() as bar:
        task = bar.add_task(f"batch {batch['id'][:13]}", total=batch_total(batch))
        while not batch_done(batch):
            if time.monotonic() > deadline:
                raise WaitTimeout(batch, timeout or 0)
            bar.update(task, completed=batch_finished(batch), total=batch_total(batch),
                       description=f"batch {batch['id'][:13]} {_count_text(batch)}")
            time.sleep(POLL_S)
            batch = client.get_batch(batch["id"])
        bar.update(task, completed=batch_finished(batch), total=batch_total(batch),
                   description=f"batch {batch['id'][:13]} {_count_text(batch)}")
    return batch


def batch_counts(batch: dict[str, Any]) -> dict[str, int]:
    return {k: int(v) for k, v in (batch.get("counts") or {}).items()}


def batch_total(batch: dict[str, Any]) -> int:
    return int(batch.get("total") or sum(batch_counts(batch).values()))


def batch_finished(batch: dict[str, Any]) -> int:
    return sum(n for status, n in batch_counts(batch).items() if status in TERMINAL)


def batch_done(batch: dict[str, Any]) -> bool:
    if batch.get("status") in ("completed", "succeeded", "done", "canceled"):
        return True
    return batch_finished(batch) >= batch_total(batch) > 0


def _count_text(batch: dict[str, Any]) -> str:
    return " ".join(f"{k}={v}" for k, v in sorted(batch_counts(batch).items()) if v)


def image_paths(out: Path, count: int) -> list[Path]:
    """Where `count` images go for `-o out`: `out` itself for one, `out-1`, `out-2`, ... for several."""
    if count == 1:
        return [out]
    return [out.with_name(f"{out.stem}-{i + 1}{out.suffix}") for i in range(count)]


def save_images(client: ApiClient, job: dict[str, Any], paths: list[Path]) -> list[Path]:
    """Download the job's result images to the given paths (as many as there are images)."""
    images = (job.get("result") or {}).get("images") or []
    written = []
    for image, path in zip(images, paths):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(client.download(image["url"]))
        written.append(path)
    return written
