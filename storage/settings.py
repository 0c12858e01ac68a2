"""Settings shared by the API, the workers and the CLI.

One `Settings` object, read from `UNIPIC_*` environment variables. The defaults are the embedded ones (a SQLite
file, a local-directory object store and a SQLite-backed Celery broker under `UNIPIC_DATA_DIR`), so a fresh
machine runs with no configuration; production points the same code at Postgres, Redis and S3 by URL.

It deliberately knows nothing of how the values are used: engines, stores and apps are built from it by
factories (`make_engine`, `make_object_store`, `make_celery`, `create_app`), never at import time.
"""

from __future__ import annotations

import ipaddress
import re
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

DEFAULT_MODEL = "Skywork/Skywork-UniPic-1.5B"
MODEL_NAME = r"^([A-Za-z0-9][A-Za-z0-9._-]{0,63})?$"  # a model's name: it goes into queue names
KINDS = ("generate", "edit", "understand")


class SettingsError(ValueError):
    """Raised at start when the environment holds an invalid value; the message names the variable."""


class Settings(BaseSettings):
    """Every knob of the service. Field `x` is read from `UNIPIC_X`."""

    model_config = SettingsConfigDict(env_prefix="UNIPIC_", extra="ignore", validate_default=True)

    # where the embedded defaults live
    data_dir: Path = Field(default=Path("~/.local/share/unipic"),
                           description="Embedded database, objects and broker (per user unless set)")
    # connections (empty = embedded default under data_dir)
    database_url: str = Field(default="", description="SQLAlchemy URL; default sqlite file in data_dir")
    broker_url: str = Field(default="", description="Celery broker URL (redis://...); default embedded SQLite")
    redis_url: str = Field(default="", description="Redis for rate limits and job event fan-out; default: broker if redis")
    storage_url: str = Field(default="", description="s3://bucket/prefix or file:///dir; default data_dir/objects")
    s3_endpoint_url: str = Field(default="", description="S3-compatible endpoint (MinIO, R2, moto)")
    s3_public_endpoint_url: str = Field(default="", description="S3 endpoint in presigned URLs, if clients "
                                        "reach it elsewhere than UNIPIC_S3_ENDPOINT_URL")
    s3_region: str = Field(default="us-east-1", description="S3 region (AWS); any value for MinIO/moto")
    s3_path_style: bool = Field(default=True, description="Path-style addressing (MinIO, moto)")
    db_schema: str = Field(default="", description="Postgres schema to use (tests isolate by schema)")
    # the model
    model: str = Field(default=DEFAULT_MODEL, description="HF repo id, local path, or 'tiny'")
    model_dtype: str = Field(default="bfloat16", description="bfloat16, float16 or float32")
    model_fast: bool = Field(default=False,
          description="torch.compile the model's hot modules (issue 20 fast paths); off: the eager reference")
    model_int8: bool = Field(default=False,
          description="Weight-only int8 for the LLM's decoder linears (1.2 GiB less at bf16 for a small drift, "
                      "`python -m bench.memory --drift`); off: the weights as the checkpoint has them")
    model_cache_dir: str = Field(default="", description="Hugging Face cache dir (default HF_HOME)")
    default_model: str = Field(default="", pattern=MODEL_NAME,
          description="The name the deployment's default model goes by (jobs naming no model or `unipic` run "
                      "on it); default: derived from UNIPIC_MODEL (`tiny` -> `unipic-tiny`, a repo or path -> its "
                      "last part, lower case). Set it alike on the API and every worker when serving several models")
    model_name: str = Field(default="", pattern=MODEL_NAME,
          description="A worker: the name its checkpoint is served under when it is not the default model (a "
                      "fine-tuned checkpoint beside it); empty, `unipic` or UNIPIC_DEFAULT_MODEL: the default")
    # workers
    worker_kinds: Annotated[list[str], NoDecode] = Field(default=list(KINDS),
          description="Job kinds a model worker serves")
    worker_max_batch: int = Field(default=8, ge=1, le=64, description="Most jobs in one batch")
    worker_max_pixels: int = Field(default=1024 * 1024, ge=64 * 64,
          description="Largest image (w*h) a worker serves; picks its queues")
    worker_batch_pixel_budget: int = Field(default=8 * 1024 * 1024, ge=64 * 64,
          description="Most pixels (w*h*num_images summed) in one batch")
    worker_pipeline: bool = Field(default=False,
          description="Write a batch's results while the next batch samples (opt-in; default: one after the other)")
    worker_batching: Literal["continuous", "whole"] = Field(default="continuous",
          description="continuous: running sets that admit, pause and retire image jobs between sampling steps; "
                      "whole: a claimed batch runs to its last step (the fallback)")
    worker_step_companions: Annotated[int, Field(ge=0, le=63)] | Literal["auto"] = Field(default="auto",
          description="continuous: while a less-served key's job is live, how many others share its steps; auto: "
                      "none on a CPU; on a GPU as many as keep a step within 20 % of its time alone, measured")
    worker_claim_ahead: bool = Field(default=True,
          description="continuous: claim the rows a step frees, and a job heard arriving, (and read their inputs) "
                      "while the model runs, off the sampling thread; false: between steps, on it")
    worker_host_memory_reuse: bool = Field(default=True,
          description="Keep freed host memory in the worker for the next model call (glibc malloc: large blocks "
                      "from the heap, not mapped and zeroed again each call; a 256 px decode on a CPU 25 % faster); "
                      "the worker keeps its high-water mark of host memory")
    batch_wait_ms: int = Field(default=0, ge=0, le=60_000,
          description="Wait this long for more compatible jobs before running a batch (0: take what is queued)")
    lease_seconds: float = Field(default=60.0, gt=0,
          description="A claimed job's lease; renewed while its batch runs")
    max_attempts: int = Field(default=3, ge=1, le=20,
          description="Runs a job gets after lost workers before failing `worker_lost`")
    sweep_interval_seconds: float = Field(default=10.0, gt=0, description="Seconds between sweeper passes")
    requeue_after_seconds: float = Field(default=120.0, gt=0,
                                         description="unsent this long, a queued job of a queue short of messages is sent again")
    progress_interval_ms: int = Field(default=250, ge=0, description="At most one progress update per job this often")
    time_limit_floor_seconds: float = Field(default=120.0, gt=0,
          description="A batch's time limit is never below this")
    time_limit_seconds_per_megapixel_step: float = Field(default=2.0, gt=0,
          description="Time limit grows with megapixels x steps of the batch")
    heartbeat_seconds: float = Field(default=10.0, gt=0, description="Worker heartbeat period; three missed = gone")
    worker_device: str = Field(default="cpu", description="cpu, cuda or cuda:N (the model worker's device)")
    worker_metrics_port: int = Field(default=0, ge=0, le=65535, description="Worker Prometheus port; 0 = off")
    cpu_metrics_port: int = Field(default=0, ge=0, le=65535, description="CPU worker Prometheus port; 0 = off")
    log_level: str = Field(default="INFO", pattern=r"(?i)^(debug|info|warning|error|critical)$",
          description="Console log level of every process")
    log_format: str = Field(default="text", pattern="^(text|json)$",
          description="`json`: one JSON object per log line (log shipping)")
    otel_endpoint: str = Field(default="", description="OTLP/HTTP traces endpoint; empty = tracing off")
    worker_shutdown_grace_seconds: float = Field(default=30.0, ge=0, description="SIGTERM: finish or release")
    worker_name: str = Field(default="", description="Worker id prefix; default: the host name")
    # API limits
    max_upload_bytes: int = Field(default=20 * 1024 * 1024, ge=1024,
          description="Largest upload / image input (bytes)")
    max_upload_pixels: int = Field(default=4096 * 4096, ge=64 * 64,
          description="Largest image input (pixels), checked before decoding")
    max_batch_items: int = Field(default=10_000, ge=1, description="Most items in one batch submission")
    max_prompt_tokens: int = Field(default=512, ge=1, description="Longest prompt/instruction/question (Qwen tokens)")
    max_steps: int = Field(default=128, ge=1, description="Most MAR steps a job may ask for")
    max_new_tokens_limit: int = Field(default=1024, ge=1, description="Most tokens an understand job may ask for")
    allowed_sizes: Annotated[list[int], NoDecode] = Field(default=[256, 512, 1024],
          description="Square image sizes accepted")
    rate_limit_per_minute: int = Field(default=600, ge=1,
          description="Requests per minute per API key (unless the key has its own)")
    max_active_jobs_per_key: int = Field(default=20_000, ge=1,
          description="Queued+running jobs per key before 429 quota_exceeded")
    max_queue_depth: int = Field(default=100_000, ge=1,
          description="Queued jobs in all before 503 overloaded (backpressure)")
    presign_expiry_seconds: int = Field(default=3600, ge=60, le=7 * 24 * 3600,
          description="Lifetime of presigned result/upload URLs")
    job_deadline_seconds: float = Field(default=24 * 3600.0, gt=0, description="queued longer -> expired")
    # webhooks
    webhook_allowlist: Annotated[list[str], NoDecode] = Field(default=[], description="CIDRs admitted by SSRF guard")
    webhook_allow_http: bool = Field(default=False, description="Allow http:// webhook URLs (https otherwise)")
    webhook_timeout_seconds: float = Field(default=15.0, gt=0, description="Webhook request timeout")
    webhook_secret_overlap_seconds: float = Field(default=24 * 3600.0, ge=0,
          description="Old signing secret keeps signing this long after a rotation")
    # the API server and the CLI client
    api_url: str = Field(default="http://127.0.0.1:8000", description="API base URL for the CLI client")
    api_key: str = Field(default="", description="API key for the CLI client")
    public_url: str = Field(default="", description="Base URL the API is reached at (local download links)")
    # data lifecycle and exposure (storage.lifecycle.store, README "Security")
    result_ttl: int = Field(default=30 * 24 * 3600, ge=60,
          description="Seconds a finished job's input and result objects are kept; then deleted, tombstone kept")
    upload_ttl: int = Field(default=24 * 3600, ge=60,
          description="Seconds an upload slot (POST /v1/uploads) lives; then its object is deleted")
    max_storage_bytes_per_key: int = Field(default=2 * 1024**3, ge=1024,
          description="Upload bytes one key may hold at once (each live slot reserves UNIPIC_MAX_UPLOAD_BYTES)")
    lifecycle_batch_size: int = Field(default=200, ge=1, le=10_000,
          description="Most jobs or uploads one sweeper pass deletes objects for (bounded batches)")
    metrics_token: str = Field(default="", description="Bearer token /metrics requires; empty: /metrics is public")
    ui_public: bool = Field(default=True,
          description="Anonymous /ui shows queue depths and workers (host, pid); false: sign-in required")
    # job/batch event streams and ?wait= (api.events.hub)
    events_mode: str = Field(default="push", pattern="^(push|poll)$",
          description="push: one Redis subscription per API process wakes streams; poll: each reads Postgres on a "
                      "tick (always poll without Redis)")
    events_max_streams: int = Field(default=5_000, ge=1,
          description="Open event streams and waits per API process before 429")
    events_max_streams_per_key: int = Field(default=1_000, ge=1,
          description="Open event streams and waits per API key and process before 429")
    events_reconcile_seconds: float = Field(default=20.0, gt=0,
          description="A pushed stream re-reads Postgres about this often (jittered 0.75-1.5x)")
    gateway_claim_tick_seconds: float = Field(default=5.0, gt=0,
          description="A waiting gateway claim re-reads its queues about this often without a wake-up (jittered)")
    api_shutdown_grace_seconds: int = Field(default=30, ge=1,
          description="On SIGTERM an API process waits this long for ordinary requests in flight, then ends them "
                      "(held streams and long-polls end at once)")

    @field_validator("worker_kinds", mode="before")
    @classmethod
    def _split_kinds(cls, v: Any) -> Any:
        if isinstance(v, str):
            v = [p.strip() for p in v.split(",") if p.strip()]
        bad = [k for k in v if k not in KINDS]
        if bad:
            raise ValueError(f"unknown kinds {bad}; expected a subset of {list(KINDS)}")
        return v

    @field_validator("allowed_sizes", mode="before")
    @classmethod
    def _split_sizes(cls, v: Any) -> Any:
        if isinstance(v, str):
            v = [int(p) for p in v.split(",") if p.strip()]
        if any(s <= 0 or s % 16 for s in v):
            raise ValueError("sizes must be positive multiples of 16")
        return v

    @field_validator("webhook_allowlist", mode="before")
    @classmethod
    def _split_cidrs(cls, v: Any) -> Any:
        if isinstance(v, str):
            v = [p.strip() for p in v.split(",") if p.strip()]
        for cidr in v:
            ipaddress.ip_network(cidr, strict=False)  # raises ValueError naming the bad CIDR
        return v

    @field_validator("worker_device")
    @classmethod
    def _device(cls, v: str) -> str:
        if v not in ("cpu", "cuda", "mps") and not (v.startswith("cuda:") and v[5:].isdigit()):
            raise ValueError("expected cpu, cuda, cuda:N or mps")
        return v

    @field_validator("model_dtype")
    @classmethod
    def _dtype(cls, v: str) -> str:
        if v not in ("bfloat16", "float16", "float32"):
            raise ValueError("expected bfloat16, float16 or float32")
        return v

    @field_validator("storage_url")
    @classmethod
    def _storage(cls, v: str) -> str:
        if v and not v.startswith(("s3://", "file://")):
            raise ValueError("expected s3://bucket[/prefix] or file:///directory")
        return v

    @model_validator(mode="after")
    def _fill_embedded_defaults(self) -> Settings:
        data = self.data_dir = self.data_dir.expanduser().resolve()
        if not self.database_url:
            self.database_url = f"sqlite:///{data / 'unipic.sqlite'}"
        if not self.broker_url:
            self.broker_url = f"sqla+sqlite:///{data / 'broker.sqlite'}"
        if not self.storage_url:
            self.storage_url = (data / "objects").as_uri()
        if not self.redis_url and self.broker_url.startswith(("redis://", "rediss://")):
            self.redis_url = self.broker_url
        if not self.default_model:
            self.default_model = model_name_of(self.model)
        return self

    @property
    def embedded(self) -> bool:
        """True when nothing external is configured: SQLite, local files, SQLite broker."""
        return self.database_url.startswith("sqlite") and self.broker_url.startswith("sqla+sqlite")

    def ensure_data_dir(self) -> None:
        """Create the directory the embedded defaults write into."""
        self.data_dir.expanduser().resolve().mkdir(parents=True, exist_ok=True)
        if self.storage_url.startswith("file://"):
            Path(self.storage_url.removeprefix("file://")).mkdir(parents=True, exist_ok=True)


def model_name_of(source: str) -> str:
    """A model name derived from a checkpoint source: `tiny` -> `unipic-tiny`; a repo id or path -> its last
    part, lower case, with characters a name cannot hold turned into `-`."""
    if source == "tiny":
        return "unipic-tiny"
    last = source.replace("\\", "/").rstrip("/").rsplit("/", 1)[-1].replace(":", "-").lower()
    name = re.sub(r"[^a-z0-9._-]+", "-", last).lstrip("._-")[:64]
    return name or "unipic"


def load_settings(**overrides: Any) -> Settings:
    """Build settings from the environment (plus overrides); turn validation errors into one clear message."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            name = "UNIPIC_" + "_".join(str(p) for p in err["loc"]).upper() if err["loc"] else "UNIPIC_*"
            lines.append(f"{name}: {err['msg']} (got {err.get('input')!r})")
        raise SettingsError("invalid settings:\n  " + "\n  ".join(lines)) from None


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read once. Tests build their own with `load_settings`."""
    return load_settings()
