"""Helpers of the API tests: request bodies, images as bytes and data URLs, and the broker's queued messages.

Knows the wire shapes a client sends and the kombu message layout on Redis; knows nothing of the app's fixtures.
"""

from __future__ import annotations

import base64
import io
import json
from typing import Any

from PIL import Image


def queued_job_ids(redis_client: Any, queue: str) -> list[str]:
    """The job id of every `run_batch` message waiting on a broker queue (kombu's Redis list)."""
    ids = []
    for raw in redis_client.lrange(queue, 0, -1):
        message = json.loads(raw)
        assert message["headers"]["task"] == "unipic.gpu.run_batch"
        args, _kwargs, _embed = json.loads(base64.b64decode(message["body"]))
        ids.append(args[0])
    return ids


def png_bytes(width: int = 32, height: int = 32, color: tuple[int, int, int] = (200, 10, 10),
              fmt: str = "PNG", **save: Any) -> bytes:
    """A solid-color image encoded as `fmt`."""
    out = io.BytesIO()
    Image.new("RGB", (width, height), color).save(out, format=fmt, **save)
    return out.getvalue()


def data_url(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64," + base64.b64encode(data).decode()


def generate_body(**over: Any) -> dict[str, Any]:
    """A valid `generate` request body, with `over` replacing fields."""
    body = {"kind": "generate", "prompt": "a red fox in the snow", "width": 256, "height": 256, "steps": 4}
    body.update(over)
    return body
