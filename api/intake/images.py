"""Input images: decode a `data:` URL, bound bytes and pixels, validate by decoding, normalize to PNG.

Every image a job receives (JSON `data:` URL, multipart file part, or a presigned upload) passes through
`normalize_image` before the job exists: the format is sniffed (PNG, JPEG and WebP accepted; other images are
415 `unsupported_media_type`), the pixel count is read from the header and compared to the limit *before* the
pixels are decoded (a decompression bomb never reaches memory), the image is fully decoded (corrupt data is
400 `invalid_image`), EXIF orientation is applied, 16-bit grey is scaled (not clipped) to 8 bits,
transparency is flattened onto white and the result is stored as an RGB PNG, so workers read one format.
Decoding is CPU-bound and runs in at most `DECODE_SLOTS` threads at once per process (`decode_slot`), so a burst
of large images cannot take every thread the API serves reads with. It knows nothing of HTTP routes or the
object store.
"""

from __future__ import annotations

import base64
import binascii
import io
import os
import re
import threading
import warnings
from dataclasses import dataclass
from typing import IO

from PIL import Image, ImageOps, UnidentifiedImageError

from api.errors import ApiError

ACCEPTED_FORMATS = ("PNG", "JPEG", "WEBP")
ACCEPTED_MIME = {"image/png": "PNG", "image/jpeg": "JPEG", "image/jpg": "JPEG", "image/webp": "WEBP"}
_DATA_URL = re.compile(r"^data:(?P<mime>[\w.+-]+/[\w.+-]+)?(?P<params>(;[\w.+-]+=[\w.+-]+)*)(?P<b64>;base64)?,", re.IGNORECASE)
PNG_COMPRESS_LEVEL = 3
WIDE_GREY_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")
DECODE_SLOTS = max(1, (os.cpu_count() or 2) // 2)
_DECODE_SLOTS = threading.BoundedSemaphore(DECODE_SLOTS)


@dataclass(frozen=True)
class NormalizedImage:
    """An input image as stored: RGB PNG bytes and its size after EXIF orientation."""

    png: bytes
    width: int
    height: int


def configure_pil(max_pixels: int) -> None:
    """PIL's own bomb guard, as a second line behind the header check (it raises above twice the value)."""
    Image.MAX_IMAGE_PIXELS = max_pixels


def decode_data_url(value: str, max_bytes: int, field: str = "image") -> bytes:
    """The bytes of a base64 `data:` URL; rejects other media types, bad base64 and oversized payloads."""
    match = _DATA_URL.match(value[:512])
    if not match:
        raise ApiError(422, "validation_error", "image must be a data: URL or {\"upload_id\": ...}", field)
    mime = (match.group("mime") or "").lower()
    if mime and mime not in ACCEPTED_MIME:
        raise ApiError(415, "unsupported_media_type", f"unsupported image type {mime!r}; use PNG, JPEG or WebP", field)
    if not match.group("b64"):
        raise ApiError(422, "validation_error", "image data: URL must be base64-encoded", field)
    payload = value[match.end():]
    if len(payload) > (max_bytes + 2) // 3 * 4 + 4:
        raise ApiError(413, "payload_too_large", f"image is larger than {max_bytes} bytes", field)
    try:
        data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise ApiError(400, "invalid_image", "image data: URL is not valid base64", field) from None
    if len(data) > max_bytes:
        raise ApiError(413, "payload_too_large", f"image is larger than {max_bytes} bytes", field)
    if not data:
        raise ApiError(400, "invalid_image", "image is empty", field)
    return data


def normalize_image(data: bytes, max_pixels: int, max_bytes: int, field: str = "image") -> NormalizedImage:
    """Validate and normalize encoded image bytes (see the module docstring for the checks, in order)."""
    if len(data) > max_bytes:
        raise ApiError(413, "payload_too_large", f"image is larger than {max_bytes} bytes", field)
    image = _open(data, field)
    width, height = image.size
    if width * height > max_pixels or width <= 0 or height <= 0:
        raise ApiError(
            413, "image_too_large", f"image is {width}x{height} pixels; the limit is {max_pixels} pixels", field
        )
    with decode_slot():
        return _decode(image, max_pixels, field)


def decode_slot() -> threading.BoundedSemaphore:
    """The process-wide bound on images being decoded at once (used as a context manager)."""
    return _DECODE_SLOTS


def _decode(image: Image.Image, max_pixels: int, field: str) -> NormalizedImage:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image.load()
            image = ImageOps.exif_transpose(image)
            rgb = _to_rgb(image)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ApiError(413, "image_too_large", f"image exceeds {max_pixels} pixels", field) from None
    except (OSError, SyntaxError, ValueError, EOFError, MemoryError) as exc:
        raise ApiError(400, "invalid_image", f"image could not be decoded: {exc}", field) from None
    out = io.BytesIO()
    rgb.save(out, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
    return NormalizedImage(out.getvalue(), rgb.width, rgb.height)


def sniff_image(stream: IO[bytes], max_pixels: int, field: str = "image") -> str:
    """The MIME type of an encoded image, from its header only; refuses other formats and pixel bombs."""
    image = _open(stream, field)
    width, height = image.size
    if width * height > max_pixels:
        raise ApiError(
            413, "image_too_large", f"image is {width}x{height} pixels; the limit is {max_pixels} pixels", field
        )
    return {"PNG": "image/png", "JPEG": "image/jpeg", "WEBP": "image/webp"}[str(image.format)]


def _to_rgb(image: Image.Image) -> Image.Image:
    """RGB; transparent areas become white (not whatever colour the transparent pixels happen to hold)."""
    if image.mode in WIDE_GREY_MODES:
        image = _wide_grey_to_l(image)
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def _wide_grey_to_l(image: Image.Image) -> Image.Image:
    """16-bit (and 32-bit integer) grey scaled to 8 bits: PIL's own `convert` clips at 255 instead, which turns
    a 16-bit gradient white. PNG is the only accepted format that carries these modes, and it holds 16 bits."""
    wide = image.convert("I")
    return wide.point(lambda v: v * (1 / 256)).convert("L")


def _open(data: bytes | IO[bytes], field: str) -> Image.Image:
    stream = io.BytesIO(data) if isinstance(data, bytes) else data
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(stream)  # lazy: reads the header only
    except Image.DecompressionBombError:
        raise ApiError(413, "image_too_large", "image has too many pixels", field) from None
    except UnidentifiedImageError:
        raise ApiError(400, "invalid_image", "data is not a recognizable image", field) from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ApiError(400, "invalid_image", f"image header is invalid: {exc}", field) from None
    if image.format not in ACCEPTED_FORMATS:
        raise ApiError(
            415, "unsupported_media_type", f"unsupported image format {image.format}; use PNG, JPEG or WebP", field
        )
    return image
