"""What a remote worker may write for a job, and whether what it wrote is a valid result for that job.

The worker gateway (`api.gateway.routes`) hands a remote worker presigned PUT URLs for exactly the keys
`result_keys(job, lease)` names: the job's results scoped to the worker's lease (`results/{job}/{lease}/{i}.{ext}`
for images, `results/{job}/{lease}/answer.json` for understand, storage.objects.base), the same keys a direct worker
writes. Before the job is marked succeeded, `verify_results` checks that every one of them exists, has the
declared size and sha256, and decodes fully as what the job asked for: an image of the requested format and
exactly the requested width and height (every pixel decoded, within the pixel cap, never just a header check), or
an answer document in valid UTF-8 naming this job whose text fits what `max_new_tokens` can decode to. Each
refusal is an `InvalidResult` with a stable machine-readable `code`. Knows nothing of HTTP, tokens or leases'
state.
"""

from __future__ import annotations

import hashlib
import io
import json
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from PIL import Image

from storage.errors import NotFound
from storage.objects.base import ObjectStore, answer_key, result_key
from storage.records import JobRecord

# output_format -> (file extension, PIL format name), as the workers encode them (workers.runner.encoding)
FORMATS: dict[str, tuple[str, str]] = {"png": ("png", "PNG"), "webp": ("webp", "WEBP"), "jpeg": ("jpg", "JPEG"),
                                       "jpg": ("jpg", "JPEG")}
PIL_FORMAT_OF_EXTENSION = {"png": "PNG", "webp": "WEBP", "jpg": "JPEG"}
MAX_RESULT_BYTES = 64 * 1024 * 1024
MAX_RESULT_PIXELS = 4096 * 4096  # no job asks for more; checked from the header before any pixel is decoded
# The longest token of the Qwen2.5 vocabulary decodes to 128 bytes: an answer of more bytes than that many per
# allowed token cannot have come from `max_new_tokens` tokens.
MAX_BYTES_PER_TOKEN = 128


class InvalidResult(ValueError):
    """What the worker declared is not a valid result for this job (the message says which key and why)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class DeclaredObject:
    """One object a worker says it wrote."""

    key: str
    size: int
    sha256: str


def result_keys(job: JobRecord, lease: str) -> list[str]:
    """Every key the job's results are written under by `lease` (the only keys that lease may write)."""
    if job.kind == "understand":
        return [answer_key(job.id, lease)]
    fmt = str(job.params.get("output_format") or "png").lower()
    extension = FORMATS.get(fmt, FORMATS["png"])[0]
    return [result_key(job.id, lease, index, extension) for index in range(int(job.params.get("num_images") or 1))]


def verify_results(objects: ObjectStore, job: JobRecord, lease: str, declared: Sequence[DeclaredObject]) -> str | None:
    """Check the declared objects are exactly the lease's result keys of the job and each is intact and decodes
    as what the job asked for; returns the answer text of an understand job (None for images). Raises
    `InvalidResult`."""
    expected = result_keys(job, lease)
    if sorted(d.key for d in declared) != sorted(expected):
        raise InvalidResult("result_keys_mismatch",
                            f"results must be exactly {expected}, got {[d.key for d in declared]}")
    text = None
    for item in declared:
        data = _read(objects, item)
        if item.key.endswith("/answer.json"):
            text = _answer_text(job, data)
        else:
            _check_image(job, item.key, data)
    return text


def _read(objects: ObjectStore, item: DeclaredObject) -> bytes:
    try:
        size = objects.size(item.key)
    except NotFound:
        raise InvalidResult("result_missing", f"{item.key} was not uploaded") from None
    if size != item.size:
        raise InvalidResult("result_mismatch", f"{item.key} has {size} bytes, not the declared {item.size}")
    if size > MAX_RESULT_BYTES:
        raise InvalidResult("result_too_large", f"{item.key} is larger than {MAX_RESULT_BYTES} bytes")
    data = objects.get(item.key)
    if len(data) != item.size or hashlib.sha256(data).hexdigest() != item.sha256.lower():
        raise InvalidResult("result_mismatch", f"{item.key} does not match its declared size and sha256")
    return data


def _check_image(job: JobRecord, key: str, data: bytes) -> None:
    want_format = PIL_FORMAT_OF_EXTENSION[key.rsplit(".", 1)[1]]
    want_size = (int(job.params.get("width", 0)), int(job.params.get("height", 0)))
    try:
        with Image.open(io.BytesIO(data)) as image:
            found, size = image.format, image.size
            if found == want_format and size == want_size and size[0] * size[1] <= MAX_RESULT_PIXELS:
                with warnings.catch_warnings():
                    warnings.simplefilter("error", Image.DecompressionBombWarning)
                    image.load()  # every pixel: a header with a corrupt body fails here, not in a user's viewer
    except Exception as exc:  # noqa: BLE001 - any decoder error means the object is not a valid image
        raise InvalidResult("result_undecodable", f"{key} does not decode as an image: {type(exc).__name__}") from None
    if found != want_format:
        raise InvalidResult("result_wrong_format", f"{key} is {found}, not {want_format}")
    if size != want_size:
        raise InvalidResult("result_wrong_size", f"{key} is {size[0]}x{size[1]}, the job asked for "
                                                 f"{want_size[0]}x{want_size[1]}")
    if size[0] * size[1] > MAX_RESULT_PIXELS:
        raise InvalidResult("result_too_large", f"{key} has more than {MAX_RESULT_PIXELS} pixels")


def _answer_text(job: JobRecord, data: bytes) -> str:
    try:
        answer: Any = json.loads(data.decode("utf-8"))
    except UnicodeDecodeError:
        raise InvalidResult("answer_not_utf8", "answer.json is not valid UTF-8") from None
    except ValueError:
        raise InvalidResult("answer_invalid", "answer.json is not a JSON document") from None
    if not isinstance(answer, dict) or answer.get("job_id") != job.id or not isinstance(answer.get("text"), str):
        raise InvalidResult("answer_invalid", "answer.json must be an object with this job's job_id and a text")
    text = str(answer["text"])
    try:
        size = len(text.encode("utf-8"))  # strict: a lone surrogate from a JSON escape is not UTF-8
    except UnicodeEncodeError:
        raise InvalidResult("answer_not_utf8", "the answer text is not valid UTF-8") from None
    limit = MAX_BYTES_PER_TOKEN * int(job.params.get("max_new_tokens") or 256)  # storage.jobs.params default
    if size > limit:
        raise InvalidResult("answer_too_long", f"the answer has {size} bytes, more than {limit} "
                                               f"({job.params.get('max_new_tokens')} tokens) can decode to")
    return text
