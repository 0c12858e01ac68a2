"""Turning a validated request into a normalized job: settings-dependent checks, defaults, routing.

`JobCreate` (api.schemas) checks types and static bounds; this module checks what depends on the deployment
(allowed square sizes, max steps, max new tokens, the prompt token limit, metadata size, webhook URL safety, the
model: `api.intake.models`, 404 `model_not_found`), fills in defaults (sizes, a random seed) and computes the
compatibility key, queue (its model's) and pixel weight that the workers batch by. It builds `storage.records.NewJob` values but knows nothing of HTTP bodies, images or the
database; every refusal is a 422 naming the field.
"""

from __future__ import annotations

import hashlib
import json
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

from api.errors import ApiError, validation_error
from api.intake.models import ModelCatalog
from api.intake.tokens import PromptCounter
from api.schemas import MAX_METADATA_BYTES, EditCreate, GenerateCreate, UnderstandCreate
from egress.url_guard import UnsafeWebhookUrl, check_webhook_url
from egress.verdicts import VerdictCache
from storage.clock import utcnow
from storage.jobs.params import DEFAULT_SIZE, EditParams, GenerateParams, JobParams, UnderstandParams
from storage.records import NewJob
from storage.routing import queue_for
from storage.settings import Settings

AnyCreate = GenerateCreate | EditCreate | UnderstandCreate
SEED_BITS = 32
TEXT_FIELDS = {"generate": ("prompt", "negative_prompt"), "edit": ("instruction",), "understand": ("question",)}


@dataclass(frozen=True)
class PreparedJob:
    """A job ready to insert once its input image (if any) is stored: the NewJob plus the image source."""

    new: NewJob
    image: Any = None  # str data URL | UploadRef | None (multipart bytes are passed separately)
    size: int = DEFAULT_SIZE


def default_size(settings: Settings) -> int:
    return DEFAULT_SIZE if DEFAULT_SIZE in settings.allowed_sizes else max(settings.allowed_sizes)


def request_hash(body: Any, image_digest: str | None = None) -> str:
    """A stable digest of a request body (canonical JSON) plus an attached file's digest."""
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    h = hashlib.sha256(canonical.encode())
    if image_digest:
        h.update(b"\0" + image_digest.encode())
    return h.hexdigest()


class JobPreparer:
    """Normalizes `JobCreate` values for one deployment's settings."""

    def __init__(self, settings: Settings, counter: PromptCounter, models: ModelCatalog) -> None:
        self.settings = settings
        self.counter = counter
        self.models = models
        self._safe_urls = VerdictCache()

    def prepare(self, owner_id: str, req: AnyCreate, now: datetime | None = None) -> PreparedJob:
        """One request -> PreparedJob; raises ApiError (422) naming the field."""
        return self.prepare_many(owner_id, [req], now)[0]

    def prepare_many(self, owner_id: str, reqs: Sequence[AnyCreate], now: datetime | None = None,
                     line_offset: int | None = None) -> list[PreparedJob]:
        """Many requests; with `line_offset`, errors name the 1-based line (`line_offset + index`)."""
        now = now or utcnow()
        deadline = now + timedelta(seconds=self.settings.job_deadline_seconds)
        out = []
        models: dict[str | None, str | None] = {}  # each name resolved once per call (a batch names few)
        for i, req in enumerate(reqs):
            try:
                if req.model not in models:
                    models[req.model] = self.models.resolve(req.model)
                out.append(self._prepare(owner_id, req, deadline, models[req.model]))
            except ApiError as err:
                raise _at_line(err, line_offset, i) from None
        self._check_tokens(reqs, line_offset)
        return out

    def _prepare(self, owner_id: str, req: AnyCreate, deadline: datetime, model: str | None) -> PreparedJob:
        self.check_metadata(req.metadata)
        if req.webhook_url:
            self.check_webhook(req.webhook_url, owner_id=owner_id)
        params: JobParams
        if isinstance(req, UnderstandCreate):
            params = self._understand(req)
            size = params.size
            compat = f"understand:{size}"
            pixels = size * size
        else:
            params = self._sampling(req)
            size = params.width
            compat = f"{req.kind}:{size}:{params.steps}:{params.guidance_scale}:{params.guidance_schedule}"
            pixels = size * size * params.num_images
        new = NewJob(
            owner_id=owner_id, kind=req.kind, params=params.to_dict(), compat_key=compat,
            queue=queue_for(req.kind, size, model), model=model, priority=req.priority, pixels=pixels, seed=params.seed,
            custom_id=req.custom_id,
            webhook_url=req.webhook_url, webhook_events=list(req.webhook_events) if req.webhook_events else None,
            metadata=req.metadata, max_attempts=self.settings.max_attempts, deadline_at=deadline,
        )
        return PreparedJob(new=new, image=getattr(req, "image", None), size=size)

    def _sampling(self, req: GenerateCreate | EditCreate) -> GenerateParams | EditParams:
        size = self._square(req.width, req.height, "size" if req.size is not None else "width")
        if req.steps > self.settings.max_steps:
            raise validation_error(f"steps must be at most {self.settings.max_steps}", "steps")
        common: dict[str, Any] = {
            "width": size, "height": size, "num_images": req.num_images, "steps": req.steps,
            "guidance_scale": float(req.guidance_scale), "guidance_schedule": req.guidance_schedule,
            "temperature": float(req.temperature), "seed": _seed(req.seed), "output_format": req.output_format,
        }
        if isinstance(req, GenerateCreate):
            return GenerateParams(prompt=_non_blank(req.prompt, "prompt"),
                                  negative_prompt=req.negative_prompt or None, **common)
        return EditParams(instruction=_non_blank(req.instruction, "instruction"), **common)

    def _understand(self, req: UnderstandCreate) -> UnderstandParams:
        size = req.size if req.size is not None else default_size(self.settings)
        self._allowed(size, "size")
        if req.max_new_tokens > self.settings.max_new_tokens_limit:
            raise validation_error(
                f"max_new_tokens must be at most {self.settings.max_new_tokens_limit}", "max_new_tokens"
            )
        return UnderstandParams(question=_non_blank(req.question, "question"), size=size,
                                max_new_tokens=req.max_new_tokens, temperature=float(req.temperature),
                                seed=_seed(req.seed))

    def _square(self, width: int | None, height: int | None, field: str = "width") -> int:
        """The side of the square image; a refusal names `field`, the one the user wrote (`size` or `width`)."""
        width = width if width is not None else height
        height = height if height is not None else width
        if width is None or height is None:
            return default_size(self.settings)
        if width != height:
            raise validation_error("only square images are supported (width must equal height)", "height")
        self._allowed(width, field)
        return width

    def _allowed(self, size: int, field: str) -> None:
        if size not in self.settings.allowed_sizes:
            raise validation_error(f"{field} must be one of {sorted(self.settings.allowed_sizes)}", field)

    @staticmethod
    def check_metadata(metadata: dict[str, Any] | None) -> None:
        if metadata is None:
            return
        size = len(json.dumps(metadata, separators=(",", ":"), ensure_ascii=False).encode())
        if size > MAX_METADATA_BYTES:
            raise validation_error(f"metadata is {size} bytes of JSON; the limit is {MAX_METADATA_BYTES}", "metadata")

    def check_webhook(self, url: str, field: str = "webhook_url", owner_id: str = "") -> None:
        """Refuse URLs the SSRF guard refuses (422 `unsafe_webhook_url`); an admitted URL is remembered for a
        minute, per key (egress.verdicts; the webhook worker checks again before every delivery)."""
        if self._safe_urls.admitted(owner_id, url):
            return
        try:
            check_webhook_url(url, self.settings)
        except UnsafeWebhookUrl as exc:
            raise ApiError(422, "unsafe_webhook_url", exc.message, field) from None
        self._safe_urls.remember(owner_id, url)

    def _check_tokens(self, reqs: Sequence[AnyCreate], line_offset: int | None) -> None:
        texts: list[str] = []
        where: list[tuple[int, str]] = []
        for i, req in enumerate(reqs):
            for field in TEXT_FIELDS[req.kind]:
                value = getattr(req, field)
                if value:
                    texts.append(value)
                    where.append((i, field))
        first = self.counter.first_too_long(texts)  # cheap cap first, stops at the first bad one
        if first is not None:
            i, field = where[first]
            err = ApiError(422, "prompt_too_long", f"{field} is longer than {self.counter.max_tokens} tokens", field)
            raise _at_line(err, line_offset, i)


def _non_blank(value: str, field: str) -> str:
    if not value.strip():
        raise validation_error(f"{field} must not be empty", field)
    return value


def _seed(seed: int | None) -> int:
    return seed if seed is not None else secrets.randbits(SEED_BITS)


def _at_line(err: ApiError, line_offset: int | None, index: int) -> ApiError:
    if line_offset is None:
        return err
    line = line_offset + index
    return ApiError(err.status, err.code, f"line {line}: {err.message}", err.field, err.headers, line=line)


def with_idempotency(job: PreparedJob, key: str | None, digest: str) -> PreparedJob:
    """The prepared job carrying its idempotency key and request hash."""
    return replace(job, new=replace(job.new, idempotency_key=key, request_hash=digest))
