"""Encoding results and decoding inputs: bytes in and out of the object store.

Images leave the worker as PNG by default, or WebP / JPEG when `params.output_format` asks; answers of
understand jobs leave as a small JSON document. Inputs (edit/understand images) come back from the object
store as bytes and are decoded here; a payload that does not decode is the job's own fault (`invalid_input`).
It knows nothing of jobs, stores or the model.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from typing import Any

from PIL import Image, UnidentifiedImageError

from storage.states import JobErrorCode

FORMATS: dict[str, tuple[str, str, str]] = {
    # output_format -> (PIL format, file extension, content type)
    "png": ("PNG", "png", "image/png"),
    "webp": ("WEBP", "webp", "image/webp"),
    "jpeg": ("JPEG", "jpg", "image/jpeg"),
    "jpg": ("JPEG", "jpg", "image/jpeg"),
}
DEFAULT_FORMAT = "png"
LOSSY_QUALITY = 92


class InvalidInput(ValueError):
    """An input that cannot be used (undecodable image, unknown output format)."""

    code = JobErrorCode.INVALID_INPUT


@dataclass(frozen=True)
class EncodedImage:
    data: bytes
    extension: str
    content_type: str


def output_format(params: dict[str, Any]) -> str:
    """The normalized output format named by the job's params (PNG when absent)."""
    name = str(params.get("output_format") or DEFAULT_FORMAT).lower()
    if name not in FORMATS:
        raise InvalidInput(f"unsupported output_format {name!r}; expected one of png, webp, jpeg")
    return name


def encode_image(image: Image.Image, fmt: str = DEFAULT_FORMAT) -> EncodedImage:
    """Encode one result image in the named format."""
    pil_format, extension, content_type = FORMATS[fmt]
    if image.mode not in ("RGB", "L"):
        image = image.convert("RGB")
    buffer = io.BytesIO()
    if pil_format == "PNG":
        image.save(buffer, format="PNG")
    else:
        image.save(buffer, format=pil_format, quality=LOSSY_QUALITY)
    return EncodedImage(buffer.getvalue(), extension, content_type)


def decode_image(data: bytes) -> Image.Image:
    """Decode an input image to RGB; raises `InvalidInput` when the bytes are not a readable image."""
    try:
        with Image.open(io.BytesIO(data)) as opened:
            opened.load()
            return opened.convert("RGB")
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as exc:
        raise InvalidInput(f"input image cannot be decoded: {exc}") from exc


def encode_answer(job_id: str, text: str, seed: int | None, model_id: str | None) -> bytes:
    """The `answer.json` document of an understand job."""
    return json.dumps(
        {"job_id": job_id, "text": text, "seed": seed, "model_id": model_id}, ensure_ascii=False
    ).encode("utf-8")
