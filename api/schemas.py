"""The API's request and response schemas, in families (`JobCreate`, `JobOut`, `JobsPage`, `BatchOut`, ...).

They describe the wire format only: static bounds live here (so the OpenAPI document shows them), bounds that
depend on settings (allowed sizes, max steps, token limits) are checked by `api.intake.params`. They are separate from
the storage tables and records on purpose; `api.views` turns records into these.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, model_validator

from storage.jobs.params import DEFAULT_SIZE, GuidanceSchedule, OutputFormat, SamplingParams, UnderstandParams
from storage.routing import DEFAULT_MODEL_ALIAS
from storage.scheduling.policy import BATCH_DEFAULT_PRIORITY, SINGLE_DEFAULT_PRIORITY
from storage.states import BatchStatus, EventType, JobStatus

Kind = Literal["generate", "edit", "understand"]
WebhookEventName = EventType  # the webhook event names, as request bodies spell them (storage.states)

MAX_SEED = 2**63 - 1
MAX_METADATA_BYTES = 16 * 1024


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class UploadRef(_Strict):
    """An image previously uploaded through `POST /v1/uploads`."""

    upload_id: str = Field(min_length=1, max_length=128)


ImageInput = Annotated[
    str | UploadRef,
    Field(description="A base64 `data:image/...;base64,` URL, or `{\"upload_id\": ...}` from POST /v1/uploads"),
]


class _JobCommon(_Strict):
    priority: int = Field(SINGLE_DEFAULT_PRIORITY, strict=True, ge=-100, le=100,
                          description="Order among this API key's own queued jobs: higher first, then oldest. "
                                      "Fair share between keys comes first, so it never jumps another key's jobs. "
                                      "Default 0; batch items default to the batch's `priority` (-10)")
    seed: int | None = Field(None, strict=True, ge=0, le=MAX_SEED,
                             description="Random if absent; the value used is returned")
    metadata: dict[str, Any] | None = Field(None, description="Client metadata, at most 16 KB of JSON")
    custom_id: str | None = Field(None, min_length=1, max_length=200)
    webhook_url: str | None = Field(None, min_length=1, max_length=2048)
    webhook_events: list[WebhookEventName] | None = Field(None, max_length=6)
    model: str | None = Field(None, min_length=1, max_length=100,
                              description="The model to run on: one `GET /v1/models` lists (a live worker holds it). "
                                          "Default: the deployment's default model, which `unipic` always names. "
                                          "Another name is 404 `model_not_found`")


class _Sampling(BaseModel):
    width: int | None = Field(None, strict=True, ge=16, le=8192,
                              description=f"Square sizes only; default {DEFAULT_SIZE} (or the largest)")
    height: int | None = Field(None, strict=True, ge=16, le=8192)
    num_images: int = Field(SamplingParams.num_images, strict=True, ge=1, le=4)
    steps: int = Field(SamplingParams.steps, strict=True, ge=1,
                       description="Autoregressive (MAR) steps; at most UNIPIC_MAX_STEPS (the one limit, checked "
                                   "in api.intake.params)")
    guidance_scale: float = Field(SamplingParams.guidance_scale, strict=True, ge=0.0, le=30.0)
    guidance_schedule: GuidanceSchedule = Field(SamplingParams.guidance_schedule)
    temperature: float = Field(SamplingParams.temperature, strict=True, gt=0.0, le=5.0)
    output_format: OutputFormat = Field(SamplingParams.output_format)
    size: int | None = Field(None, strict=True, ge=16, le=8192,
                             description="Shorthand for width = height = size (as understand's `size`)")

    @model_validator(mode="after")
    def _size_shorthand(self) -> Self:
        if self.size is None:
            return self
        if (self.width or self.size) != self.size or (self.height or self.size) != self.size:
            raise ValueError("size is width = height; give size alone, or width and height")
        self.width = self.width or self.size
        self.height = self.height or self.size
        return self


class GenerateCreate(_JobCommon, _Sampling):
    """Text to image."""

    kind: Literal["generate"]
    prompt: str = Field(min_length=1, max_length=20_000)
    negative_prompt: str | None = Field(None, max_length=20_000)


class EditCreate(_JobCommon, _Sampling):
    """Edit an image following an instruction."""

    kind: Literal["edit"]
    image: ImageInput | None = Field(None, description="Required unless sent as a multipart `image` file part")
    instruction: str = Field(min_length=1, max_length=20_000)


class UnderstandCreate(_JobCommon):
    """Answer a question about an image."""

    kind: Literal["understand"]
    image: ImageInput | None = Field(None, description="Required unless sent as a multipart `image` file part")
    question: str = Field(min_length=1, max_length=20_000)
    size: int | None = Field(None, strict=True, ge=16, le=8192,
                             description=f"Side the image is resized to; default {DEFAULT_SIZE}")
    max_new_tokens: int = Field(UnderstandParams.max_new_tokens, strict=True, ge=1,
                                description="At most UNIPIC_MAX_NEW_TOKENS_LIMIT (checked in api.intake.params)")
    temperature: float = Field(UnderstandParams.temperature, strict=True, ge=0.0, le=5.0, description="0 = greedy")


JobCreate = Annotated[GenerateCreate | EditCreate | UnderstandCreate, Field(discriminator="kind")]
JOB_CREATE = TypeAdapter(JobCreate)
JOB_CREATE_LIST = TypeAdapter(list[JobCreate])  # a whole batch in one call into pydantic-core


class BatchCreate(_Strict):
    """A batch as a JSON object (a bare JSON array or a JSONL body are accepted too)."""

    requests: list[dict[str, Any]] = Field(min_length=1, description="Job bodies, each with optional custom_id")
    webhook_url: str | None = Field(None, min_length=1, max_length=2048)
    webhook_events: list[WebhookEventName] | None = Field(None, max_length=6)
    metadata: dict[str, Any] | None = None
    priority: int = Field(BATCH_DEFAULT_PRIORITY, strict=True, ge=-100, le=100,
                          description="Priority of the items that set none (default -10: below single jobs, so "
                                      "the key's interactive calls run before its bulk)")


class Progress(BaseModel):
    step: int
    total: int


class ImageOut(BaseModel):
    url: str
    expires_at: datetime
    width: int
    height: int


class ResultOut(BaseModel):
    images: list[ImageOut] = Field(default_factory=list)
    text: str | None = None
    expired: bool = Field(False, description="The result was deleted (UNIPIC_RESULT_TTL or DELETE); status stays")


class JobErrorOut(BaseModel):
    code: str
    message: str | None = None


class ExecutionOut(BaseModel):
    worker: str | None = None
    batch_size: int | None = None
    attempts: int = 0
    queue_seconds: float | None = None
    model_seconds: float | None = None
    upload_seconds: float | None = None
    model_id: str | None = None
    model_revision: str | None = None


class JobOut(BaseModel):
    """A job as the API shows it."""

    id: str
    kind: Kind
    status: JobStatus
    priority: int
    model: str = Field(DEFAULT_MODEL_ALIAS, description="The model it runs on: `unipic` for the deployment's default "
                                                        "(whichever that is when it runs), else the name it gave; "
                                                        "`execution.model_id` says what ran it")
    params: dict[str, Any]
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    progress: Progress | None = None
    queue_position: int | None = Field(
        None, description="Estimate: queued jobs the fair-share policy runs before this one (0 = next)")
    estimated_start_at: datetime | None = Field(
        None, description="Estimate: when this queued job should start, from the queue's measured throughput")
    result: ResultOut | None = None
    error: JobErrorOut | None = None
    execution: ExecutionOut
    batch_id: str | None = None
    custom_id: str | None = None
    metadata: dict[str, Any] | None = None
    cancel_requested: bool = False
    warnings: list[str] = Field(
        default_factory=list,
        description="Why a job waits, e.g. `no_worker_for_queue`: no live worker serves this queued job's queue")


class JobsPage(BaseModel):
    data: list[JobOut]
    next_cursor: str | None = None


class BatchCounts(BaseModel):
    queued: int = 0
    running: int = 0
    succeeded: int = 0
    failed: int = 0
    canceled: int = 0
    expired: int = 0


class BatchOut(BaseModel):
    id: str
    status: BatchStatus
    total: int
    counts: BatchCounts
    created_at: datetime
    finished_at: datetime | None = None
    canceled_at: datetime | None = None
    metadata: dict[str, Any] | None = None
    manifest_url: str | None = Field(None, description="JSONL results manifest, once the batch is done")
    manifest_expires_at: datetime | None = None
    estimated_completion_at: datetime | None = Field(
        None, description="Estimate: when the batch's last job should finish (while it is in progress)")


class BatchesPage(BaseModel):
    data: list[BatchOut]
    next_cursor: str | None = None


class UploadCreate(_Strict):
    content_type: Literal["image/png", "image/jpeg", "image/webp"] | None = None


class UploadOut(BaseModel):
    upload_id: str
    url: str
    method: Literal["PUT"] = "PUT"
    expires_at: datetime
    max_bytes: int
    headers: dict[str, str] = Field(default_factory=dict, description="Headers the PUT must carry")


class UploadDone(BaseModel):
    upload_id: str
    bytes: int


class ErrorBody(BaseModel):
    code: str = Field(description="Stable machine-readable code")
    message: str
    field: str | None = None
    line: int | None = Field(None, description="For batches: the 1-based line/item that failed")


class ErrorOut(BaseModel):
    error: ErrorBody


class HealthOut(BaseModel):
    status: str
    checks: dict[str, str] = Field(default_factory=dict)
