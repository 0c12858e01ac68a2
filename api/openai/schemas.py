"""Request and response bodies of the OpenAI-compatible routes, and their translation to our job bodies.

Owns the OpenAI field names (`n`, `size` "WxH", `response_format`, chat `messages` with `image_url` parts) and
the extensions ours need (`seed`, `steps`, `guidance`, `negative_prompt`), turning each request into a
`generate`, `edit` or `understand` job body that api.intake.submission validates like any other. `model` goes into
the job body as is: it must name a model this deployment serves (`api.intake.models`; none sent or `unipic`: the
default), else 404 `model_not_found` as OpenAI answers; `output_format` (png, jpeg, webp) is the result images' format. Fields OpenAI's clients send that
mean nothing here (`quality`, `style`, `user`) are accepted and ignored.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from api.errors import ApiError

MAX_CHOICES = 4
SIZE = re.compile(r"^(\d{1,5})x(\d{1,5})$")
UPLOAD_URL = re.compile(r"^(?:upload://|unipic-upload:)(?P<id>[^/\s]+)$")


class _Ignoring(BaseModel):
    model_config = ConfigDict(extra="ignore")


class ImageExtensions(_Ignoring):
    """Our sampling options, sent by OpenAI's client as `extra_body`."""

    seed: int | None = None
    steps: int | None = None
    guidance: float | None = Field(None, description="Classifier-free guidance scale")
    negative_prompt: str | None = None
    output_format: Literal["png", "jpeg", "webp"] | None = None


class ImageGeneration(ImageExtensions):
    prompt: str
    n: int = Field(1, ge=1, le=4)
    size: str | None = Field(None, description='"WxH" (square sizes only), e.g. "512x512"')
    response_format: Literal["url", "b64_json"] = "url"
    model: str | None = None


class ImageEdit(ImageExtensions):
    prompt: str
    n: int = Field(1, ge=1, le=4)
    size: str | None = None
    response_format: Literal["url", "b64_json"] = "url"
    model: str | None = None


class ChatCompletion(_Ignoring):
    model: str | None = None
    messages: list[dict[str, Any]] = Field(min_length=1)
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    temperature: float | None = None
    seed: int | None = None
    stream: bool = False
    n: int = Field(1, ge=1, le=MAX_CHOICES, description="Number of answers (each one job)")
    size: int | None = Field(None, description="Extension: side the image is resized to")


def parse_size(size: str | None) -> tuple[int, int] | tuple[None, None]:
    if size is None or size == "auto":
        return None, None
    match = SIZE.fullmatch(size)
    if not match:
        raise ApiError(400, "invalid_size", f'size must be "WxH", e.g. "512x512" (got {size!r})', "size")
    return int(match.group(1)), int(match.group(2))


def _sampling(req: ImageGeneration | ImageEdit, n: int, size: str | None) -> dict[str, Any]:
    width, height = parse_size(size)
    body = {"num_images": n, "width": width, "height": height, "seed": req.seed, "steps": req.steps,
            "guidance_scale": req.guidance, "output_format": req.output_format, "model": req.model or None}
    return {k: v for k, v in body.items() if v is not None}


def generate_body(req: ImageGeneration) -> dict[str, Any]:
    body = {"kind": "generate", "prompt": req.prompt, **_sampling(req, req.n, req.size)}
    if req.negative_prompt:
        body["negative_prompt"] = req.negative_prompt
    return body


def edit_body(req: ImageEdit) -> dict[str, Any]:
    return {"kind": "edit", "instruction": req.prompt, **_sampling(req, req.n, req.size)}


def understand_body(req: ChatCompletion) -> dict[str, Any]:
    """The last user message's text is the question; its (first) `image_url` part the image: a data URL, or an
    upload of ours as `upload://<upload_id>`."""
    if req.stream:
        raise ApiError(400, "unsupported", "streaming is not supported; send stream=false", "stream")
    user = [m for m in req.messages if m.get("role") == "user"]
    if not user:
        raise ApiError(400, "invalid_messages", "messages need a user message with an image", "messages")
    content = user[-1].get("content")
    parts = content if isinstance(content, list) else [{"type": "text", "text": str(content or "")}]
    texts = [str(p.get("text") or "") for p in parts if isinstance(p, dict) and p.get("type") == "text"]
    urls = [_image_url(p) for p in parts if isinstance(p, dict) and p.get("type") == "image_url"]
    if not urls:
        raise ApiError(400, "invalid_messages", "the user message needs an image_url part", "messages")
    body: dict[str, Any] = {"kind": "understand", "question": " ".join(t for t in texts if t).strip(),
                            "image": _image_input(urls[0])}
    tokens = req.max_completion_tokens or req.max_tokens
    extras = {"max_new_tokens": tokens, "temperature": req.temperature, "seed": req.seed, "size": req.size,
              "model": req.model or None}
    body.update({k: v for k, v in extras.items() if v is not None})
    return body


def _image_url(part: dict[str, Any]) -> str:
    value = part.get("image_url")
    url = value.get("url") if isinstance(value, dict) else value
    if not isinstance(url, str) or not url:
        raise ApiError(400, "invalid_messages", "image_url needs a url", "messages")
    return url


def _image_input(url: str) -> str | dict[str, str]:
    upload = UPLOAD_URL.fullmatch(url)
    if upload:
        return {"upload_id": upload.group("id")}
    if url.startswith("data:"):
        return url
    raise ApiError(400, "unsupported_image_url",
                   "image_url must be a data: URL or an upload reference upload://<upload_id> (remote URLs are "
                   "not fetched)", "messages")
