"""Reading request bodies the routes accept by hand: JSON, multipart with an image part, JSON arrays and JSONL.

Job submission takes JSON or multipart, and batches take a JSON array, a JSON object or JSONL, which FastAPI's
declarative body parameters can't express together; this module reads them into plain Python values with the
error codes of the API (400 `invalid_json` naming the line, 415 for other media types). Body size is bounded
before anything is parsed by `BodyLimit`, an ASGI middleware that checks `Content-Length` and counts the bytes
as they arrive, so an oversized body is refused with 413 without being buffered whole.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.requests import Request

from api.errors import ApiError, error_body
from api.intake import json_limits

JSON_TYPES = ("application/json", "text/json")
JSONL_TYPES = ("application/x-ndjson", "application/jsonl", "application/x-jsonlines", "application/jsonlines")
JSON_FIELDS = ("metadata", "webhook_events", "image")
MAX_FORM_FIELDS = 64
INLINE_PARSE_BYTES = 64 * 1024  # larger JSON bodies are parsed in a worker thread
NUMBER_FIELDS = ("width", "height", "num_images", "steps", "guidance_scale", "temperature", "seed", "priority",
                 "size", "max_new_tokens")
_NUMBER = re.compile(r"-?\d{1,30}(\.\d{1,30})?([eE][+-]?\d{1,4})?")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class BodyTooLarge(ApiError):
    def __init__(self, limit: int) -> None:
        super().__init__(413, "payload_too_large", f"request body is larger than {limit} bytes")


class BodyLimit:
    """ASGI middleware: refuse bodies over `limit_for(path)` bytes (413) early, without buffering them."""

    def __init__(self, app: ASGIApp, limit_for: Callable[[str], int],
                 render: Callable[[str, ApiError], bytes] | None = None) -> None:
        self.app = app
        self.limit_for = limit_for
        self.render = render  # the error body for a path (the OpenAI routes answer in OpenAI's shape)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit_for(scope["path"])
        declared = _content_length(scope)
        if declared is not None and declared > limit:
            await _send_413(send, limit, scope["path"], self.render)
            return
        received = 0

        async def limited() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge(limit)
            return message

        await self.app(scope, limited, send)


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", []):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


async def _send_413(send: Send, limit: int, path: str, render: Callable[[str, ApiError], bytes] | None) -> None:
    err = BodyTooLarge(limit)
    body = render(path, err) if render else json.dumps(error_body(err.code, err.message)).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
               (b"connection", b"close")]
    await send({"type": "http.response.start", "status": 413, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";", 1)[0].strip().lower()


def parse_json(raw: bytes, line: int | None = None) -> Any:
    """JSON from bytes; 400 `invalid_json` (naming the line, if given) when malformed."""
    try:
        return json_limits.loads(raw)  # refuses NaN/Infinity and absurd number literals, unlike json.loads
    except (ValueError, RecursionError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        where = f"line {line}: " if line is not None else ""
        raise ApiError(400, "invalid_json", f"{where}body is not valid JSON ({exc})", line=line) from None


@dataclass
class JobBody:
    """A job submission as received: the JSON-ish body, and an attached image file's bytes (multipart)."""

    body: Any
    image_bytes: bytes | None = None

    def digest(self) -> str | None:
        return hashlib.sha256(self.image_bytes).hexdigest() if self.image_bytes is not None else None


async def read_job_body(request: Request) -> JobBody:
    """JSON (`application/json` or no type) or multipart (`image` file part + `request` JSON part or fields)."""
    kind = media_type(request)
    if kind in JSON_TYPES or kind == "":
        raw = await request.body()
        return JobBody(await run_in_threadpool(parse_json, raw) if len(raw) > INLINE_PARSE_BYTES else parse_json(raw))
    if kind == "multipart/form-data":
        return await _read_multipart(request)
    raise ApiError(415, "unsupported_media_type", f"unsupported content type {kind!r}; use JSON or multipart")


async def _read_multipart(request: Request) -> JobBody:
    try:
        form = await request.form(max_files=1, max_fields=MAX_FORM_FIELDS)
    except BodyTooLarge:
        raise
    except Exception as exc:  # noqa: BLE001 - starlette's parser raises several types for bad input
        raise ApiError(422, "validation_error", f"malformed multipart body: {exc}") from None
    body: dict[str, Any] = {}
    image: bytes | None = None
    for name, value in form.multi_items():
        if isinstance(value, UploadFile):
            if name != "image":
                raise ApiError(422, "validation_error", f"unexpected file part {name!r}; send the image as 'image'",
                               name)
            image = await value.read()
        elif name == "request":
            parsed = parse_json(value.encode())
            if not isinstance(parsed, dict):
                raise ApiError(422, "validation_error", "the 'request' part must be a JSON object", "request")
            body.update(parsed)
        else:
            body[name] = _form_value(name, value)
    return JobBody(body, image)


def _form_value(name: str, value: str) -> Any:
    if name in JSON_FIELDS and value[:1] in ("{", "["):
        return parse_json(value.encode())
    if name in NUMBER_FIELDS and _NUMBER.fullmatch(value.strip()):
        # form fields are text; JSON bodies are typed strictly, so numbers are read here as JSON would read them
        return parse_json(value.strip().encode())
    return value


@dataclass
class BatchBody:
    """A batch as received: the item bodies (with their 1-based lines) and batch-level options."""

    items: list[Any]
    options: dict[str, Any]
    lines: list[int]


async def read_batch_body(request: Request) -> BatchBody:
    """A JSON array, a JSON object `{"requests": [...], ...}`, or JSONL (one job body per line)."""
    kind = media_type(request)
    if kind not in JSONL_TYPES and kind not in JSON_TYPES and kind != "":
        raise ApiError(415, "unsupported_media_type", f"unsupported content type {kind!r}; use JSON or JSONL")
    raw = await request.body()
    return await run_in_threadpool(_parse_batch, kind, raw)  # megabytes of JSON: parsed off the event loop


def _parse_batch(kind: str, raw: bytes) -> BatchBody:
    if kind in JSONL_TYPES:
        items, lines = [], []
        for number, line in enumerate(raw.splitlines(), start=1):
            if line.strip():
                items.append(parse_json(line, number))
                lines.append(number)
        return BatchBody(items, {}, lines)
    if kind in JSON_TYPES or kind == "":
        parsed = parse_json(raw)
        if isinstance(parsed, list):
            return BatchBody(parsed, {}, list(range(1, len(parsed) + 1)))
        if isinstance(parsed, dict) and isinstance(parsed.get("requests"), list):
            items = parsed["requests"]
            options = {k: v for k, v in parsed.items() if k != "requests"}
            return BatchBody(items, options, list(range(1, len(items) + 1)))
        raise ApiError(422, "validation_error", "a batch is a JSON array, {\"requests\": [...]} or JSONL",
                       "requests")
    raise ApiError(415, "unsupported_media_type", f"unsupported content type {kind!r}; use JSON or JSONL")
