"""Writing a job's results: encode, upload to the object store, and only then mark the job succeeded.

The object keys are scoped to the claim's lease (`results/{job_id}/{lease}/{index}.{ext}`,
`results/{job_id}/{lease}/answer.json`, storage.objects.base): a worker that lost its lease writes only under its own
old prefix, which nothing serves and the sweeper deletes. Each upload happens only while `still_held()` says the
lease is held (`LeaseLost` otherwise, before anything is written). A failed upload (a cut connection, an expired
URL, the store briefly down) is retried with backoff for as long as the lease holds, up to about half a minute:
a finished result is worth keeping, and the lease keeper renews meanwhile (fresh presigned URLs come with each
renewal). A store that stays down past that raises `UploadFailed` and the caller hands the job back to the queue;
a lease that can no longer be proven raises `LeaseLost` and nothing more is written. Knows nothing of batching.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from storage.objects.base import answer_key, result_key
from storage.records import JobRecord
from workers.runner.encoding import encode_answer, encode_image, output_format
from workers.transport.base import ObjectPort

log = logging.getLogger(__name__)

# about 32 s in all, each pause only while the lease is held: a cut or a store restart, not an outage
UPLOAD_BACKOFF_SECONDS = (0.2, 0.5, 1.0, 2.0, 4.0, 8.0, 8.0, 8.0)


class UploadFailed(RuntimeError):
    """The object store refused a result after every retry (an infrastructure failure, not the job's)."""


class LeaseLost(RuntimeError):
    """The worker can no longer prove it holds the job's lease: it must not write (or complete) the job."""


@dataclass(frozen=True)
class WrittenResult:
    keys: list[str]
    text: str | None
    upload_seconds: float


def write_result(objects: ObjectPort, job: JobRecord, lease: str, result: Any, model_id: str | None,
                 still_held: Callable[[], bool] = lambda: True) -> WrittenResult:
    """Encode and upload one job's result (an `ImageResult` or `TextResult`) under the keys of `lease`; returns
    its keys. `LeaseLost` as soon as `still_held()` is false before an upload."""
    started = time.perf_counter()
    if job.kind == "understand":
        key = answer_key(job.id, lease)
        body = encode_answer(job.id, result.text, result.seed, model_id)
        _put_with_retries(objects, key, body, "application/json", job.id, still_held)
        return WrittenResult([key], result.text, time.perf_counter() - started)
    fmt = output_format(job.params)
    keys = []
    for index, image in enumerate(result.images):
        encoded = encode_image(image, fmt)
        key = result_key(job.id, lease, index, encoded.extension)
        _put_with_retries(objects, key, encoded.data, encoded.content_type, job.id, still_held)
        keys.append(key)
    return WrittenResult(keys, None, time.perf_counter() - started)


def _put_with_retries(
    objects: ObjectPort, key: str, data: bytes, content_type: str, job_id: str,
    still_held: Callable[[], bool], sleep: Callable[[float], None] = time.sleep,
) -> None:
    for attempt, pause in enumerate((*UPLOAD_BACKOFF_SECONDS, None)):
        if not still_held():
            raise LeaseLost(f"job {job_id}: lease no longer held; {key} not written")
        try:
            objects.put(key, data, content_type=content_type)
            return
        except Exception as exc:
            if pause is None:
                raise UploadFailed(f"upload of {key} failed: {exc}") from exc
            log.warning("job %s: upload of %s failed (attempt %d): %s", job_id, key, attempt + 1, exc)
            sleep(pause)
