"""Writing a job's results: encode, upload to the object store, and only then mark the job succeeded.

The object keys are fixed per job (`results/{job_id}/{index}.{ext}`, `results/{job_id}/answer.json`), so a
re-run after a crash overwrites them instead of adding new ones. Uploads are retried with backoff; a store that
stays down raises `UploadFailed` and the caller hands the job back to the queue. Knows nothing of batching.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from storage.objects import answer_key, result_key
from storage.records import JobRecord
from workers.encoding import encode_answer, encode_image, output_format
from workers.transport import ObjectPort

log = logging.getLogger(__name__)

UPLOAD_BACKOFF_SECONDS = (0.2, 1.0, 3.0)


class UploadFailed(RuntimeError):
    """The object store refused a result after every retry (an infrastructure failure, not the job's)."""


@dataclass(frozen=True)
class WrittenResult:
    keys: list[str]
    text: str | None
    upload_seconds: float


def write_result(objects: ObjectPort, job: JobRecord, result: Any, model_id: str | None) -> WrittenResult:
    """Encode and upload one job's result (an `ImageResult` or `TextResult`); returns its keys."""
    started = time.perf_counter()
    if job.kind == "understand":
        key = answer_key(job.id)
        body = encode_answer(job.id, result.text, result.seed, model_id)
        _put_with_retries(objects, key, body, "application/json", job.id)
        return WrittenResult([key], result.text, time.perf_counter() - started)
    fmt = output_format(job.params)
    keys = []
    for index, image in enumerate(result.images):
        encoded = encode_image(image, fmt)
        key = result_key(job.id, index, encoded.extension)
        _put_with_retries(objects, key, encoded.data, encoded.content_type, job.id)
        keys.append(key)
    return WrittenResult(keys, None, time.perf_counter() - started)


def _put_with_retries(
    objects: ObjectPort, key: str, data: bytes, content_type: str, job_id: str,
    sleep: Callable[[float], None] = time.sleep,
) -> None:
    for attempt, pause in enumerate((*UPLOAD_BACKOFF_SECONDS, None)):
        try:
            objects.put(key, data, content_type=content_type)
            return
        except Exception as exc:
            if pause is None:
                raise UploadFailed(f"upload of {key} failed: {exc}") from exc
            log.warning("job %s: upload of %s failed (attempt %d): %s", job_id, key, attempt + 1, exc)
            sleep(pause)
