"""Accepting work: one job or a whole batch, from a parsed body to rows in Postgres and messages on the broker.

The order is what makes submission safe: validate everything (types, settings bounds, prompt tokens, images)
before writing anything; admit against quota and queue depth; store input images at their final keys; insert
(one transaction for a batch, all or nothing; an idempotent replay returns the original job and drops the new
input); then enqueue. A crash
after the insert leaves `queued` rows with no message, which the sweeper re-enqueues.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from pydantic import ValidationError

from api.errors import ApiError, from_validation_errors, validation_error
from api.intake.images import NormalizedImage, decode_data_url, normalize_image
from api.intake.json_limits import refuse_unsafe
from api.intake.params import AnyCreate, PreparedJob, request_hash, with_idempotency
from api.schemas import JOB_CREATE, JOB_CREATE_LIST, BatchCreate, UploadRef
from api.services import Services
from storage.errors import IdempotencyConflict, NotFound
from storage.jobs.ids import new_id
from storage.objects.base import input_key, upload_key
from storage.records import BatchRecord, JobRecord, NewBatch, NewJob
from storage.routing import JobRef

log = logging.getLogger(__name__)

IMAGE_KINDS = ("edit", "understand")


@dataclass
class Submitted:
    job: JobRecord
    created: bool


def parse_job(body: Any, line: int | None = None) -> AnyCreate:
    """A JSON value as a `JobCreate`, or a 422 naming the field (and line)."""
    prefix = f"line {line}: " if line is not None else ""
    if not isinstance(body, dict):
        raise ApiError(422, "validation_error", f"{prefix}a job is a JSON object", None, line=line)
    refuse_unsafe(body, prefix, line)  # what Postgres or the encoder would refuse: 422, same on SQLite
    try:
        return JOB_CREATE.validate_python(body)
    except ValidationError as exc:
        err = from_validation_errors(exc.errors(include_url=False), prefix)
        err.line = line
        raise err from None


def parse_jobs(items: Sequence[Any], lines: Sequence[int]) -> list[AnyCreate]:
    """Many JSON values at once (fast); the first invalid one is a 422 naming its line and field."""
    for item, line in zip(items, lines, strict=True):
        refuse_unsafe(item, f"line {line}: ", line)
    try:
        return JOB_CREATE_LIST.validate_python(list(items))
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        index = first["loc"][0] if first["loc"] and isinstance(first["loc"][0], int) else 0
        parse_job(items[index], lines[index])  # raises the item's own error, named by its line
        raise  # unreachable unless the item is valid alone; then report pydantic's error as is


def upload_id_for(owner_id: str, token: str) -> str:
    """Upload ids carry their owner, so another key can never reference them (it answers 404)."""
    return f"{owner_id}.{token}"


class Submitter:
    """Creates jobs and batches for a caller."""

    def __init__(self, services: Services) -> None:
        self.s = services

    # ---- one job ----
    def submit_job(self, owner_id: str, body: Any, image_bytes: bytes | None, idempotency_key: str | None,
                   image_digest: str | None, max_active: int | None = None) -> Submitted:
        req = parse_job(body)
        prepared = self.s.preparer.prepare(owner_id, req)
        if idempotency_key:
            prepared = with_idempotency(prepared, idempotency_key, request_hash(body, image_digest))
        image = self._image_for(owner_id, prepared, image_bytes, field="image")
        self.s.admission.admit(owner_id, 1, max_active)
        job_id = new_id()
        prepared = self._store_input(prepared, job_id, image)
        try:
            record = self._create(prepared, self._quota(max_active))
        except IdempotencyConflict as exc:
            self._forget_inputs([prepared])
            raise ApiError(409, "idempotency_conflict", exc.message, "Idempotency-Key") from None
        except BaseException:
            self._forget_inputs([prepared])
            raise
        if record.id != job_id:  # a replay: the same key and body made this job before
            self._forget_inputs([prepared])
            log.info("job %s replayed for idempotency key owner=%s", record.id, owner_id)
            return Submitted(record, created=False)
        log.info("job %s accepted kind=%s owner=%s queue=%s", record.id, record.kind, owner_id, record.queue)
        return Submitted(record, created=True)

    def _quota(self, max_active: int | None) -> int:
        return max_active or self.s.settings.max_active_jobs_per_key

    def _create(self, prepared: PreparedJob, quota: int) -> JobRecord:
        """Store and enqueue: with an idempotency key on its own (the key is looked up first), otherwise in a
        group with concurrent submissions (api.intake.writer)."""
        if prepared.new.idempotency_key:
            record = self.s.jobs.create(prepared.new)
            if record.id == prepared.new.id:
                self.s.enqueuer.enqueue([record.ref])
            return record
        return self.s.intake.write(prepared.new, quota)

    # ---- a batch ----
    def submit_batch(self, owner_id: str, items: Sequence[Any], lines: Sequence[int], options: dict[str, Any],
                     max_active: int | None = None, idempotency: tuple[str, str] | None = None) -> BatchRecord:
        """`idempotency`: (Idempotency-Key, request hash) stored on the batch row (see api.intake.batch_replay)."""
        batch_opts = self._batch_options(options, owner_id)
        batch_priority = batch_opts.pop("priority")
        limit = self.s.settings.max_batch_items
        if not items:
            raise validation_error("a batch needs at least one request", "requests")
        if len(items) > limit:
            raise validation_error(f"a batch has at most {limit} requests (got {len(items)})", "requests")
        reqs = parse_jobs(items, lines)
        _check_custom_ids(reqs, lines)
        prepared = self._prepare_lines(owner_id, reqs, lines)
        self.s.admission.admit(owner_id, len(prepared), max_active)
        prepared = self._store_inputs(owner_id, prepared, lines)
        key, digest = idempotency or (None, None)
        batch = NewBatch(owner_id=owner_id, id=new_id(), idempotency_key=key, request_hash=digest, **batch_opts)
        news = [_item_priority(p.new, req, batch_priority) for p, req in zip(prepared, reqs, strict=True)]
        try:
            # the messages are built while the rows are written and sent once they are committed
            refs = [JobRef(str(n.id), n.queue) for n in news]
            record, jobs = self.s.enqueuer.send_after(refs, lambda: self.s.jobs.create_many(
                news, batch, quotas={owner_id: self._quota(max_active)}))
        except BaseException:
            self._forget_inputs(prepared)
            raise
        assert record is not None
        log.info("batch %s accepted: %d jobs owner=%s", record.id, len(jobs), owner_id)
        return record

    def _store_inputs(self, owner_id: str, prepared: list[PreparedJob], lines: Sequence[int]) -> list[PreparedJob]:
        """Validate and store each item's image one at a time (never all decoded at once); if one is bad,
        delete those already stored and raise its error, naming its line."""
        done: list[PreparedJob] = []
        try:
            for p, line in zip(prepared, lines, strict=True):
                image = self._image_for(owner_id, p, None, field="image", line=line)
                done.append(self._store_input(p, new_id(), image))
        except BaseException:
            self._forget_inputs(done)
            raise
        return done

    def _prepare_lines(self, owner_id: str, reqs: list[AnyCreate], lines: Sequence[int]) -> list[PreparedJob]:
        contiguous = list(lines) == list(range(lines[0], lines[0] + len(lines))) if lines else True
        if contiguous:
            return self.s.preparer.prepare_many(owner_id, reqs, line_offset=lines[0] if lines else 1)
        out = []
        for req, line in zip(reqs, lines, strict=True):
            out.extend(self.s.preparer.prepare_many(owner_id, [req], line_offset=line))
        return out

    def _batch_options(self, options: dict[str, Any], owner_id: str = "") -> dict[str, Any]:
        refuse_unsafe(options)
        try:
            parsed = BatchCreate.model_validate({"requests": [{}], **options})
        except ValidationError as exc:
            raise from_validation_errors(exc.errors(include_url=False)) from None
        if parsed.webhook_url:
            self.s.preparer.check_webhook(parsed.webhook_url, owner_id=owner_id)
        if parsed.metadata is not None:
            self.s.preparer.check_metadata(parsed.metadata)
        events = list(parsed.webhook_events) if parsed.webhook_events else None
        return {"webhook_url": parsed.webhook_url, "webhook_events": events, "metadata": parsed.metadata,
                "priority": parsed.priority}

    # ---- images ----
    def _image_for(self, owner_id: str, prepared: PreparedJob, image_bytes: bytes | None, field: str,
                   line: int | None = None) -> NormalizedImage | None:
        kind = prepared.new.kind
        source = prepared.image
        if kind not in IMAGE_KINDS:
            if image_bytes is not None or source is not None:
                raise _at(validation_error(f"a {kind} job takes no image", field), line)
            return None
        if image_bytes is not None and source is not None:
            raise _at(validation_error("send the image either as a file part or in the body, not both", field),
                      line)
        try:
            return self._decode(owner_id, source, image_bytes, field)
        except ApiError as err:
            raise _at(err, line) from None

    def _decode(self, owner_id: str, source: Any, image_bytes: bytes | None, field: str) -> NormalizedImage:
        settings = self.s.settings
        if image_bytes is None and source is None:
            raise validation_error("this kind of job needs an image", field)
        if image_bytes is None and isinstance(source, str):
            image_bytes = decode_data_url(source, settings.max_upload_bytes, field)
        elif image_bytes is None and isinstance(source, UploadRef):
            image_bytes = self._read_upload(owner_id, source.upload_id, field)
        assert image_bytes is not None
        return normalize_image(image_bytes, settings.max_upload_pixels, settings.max_upload_bytes, field)

    def _read_upload(self, owner_id: str, upload_id: str, field: str) -> bytes:
        if not upload_id.startswith(owner_id + ".") or "/" in upload_id:
            raise ApiError(404, "not_found", f"upload {upload_id} not found", f"{field}.upload_id")
        key = upload_key(upload_id)
        try:
            size = self.s.objects.size(key)
            if size > self.s.settings.max_upload_bytes:
                raise ApiError(413, "payload_too_large",
                               f"upload is larger than {self.s.settings.max_upload_bytes} bytes", field)
            return self.s.objects.get(key)
        except NotFound:
            raise ApiError(404, "not_found", f"upload {upload_id} not found (not uploaded yet?)",
                           f"{field}.upload_id") from None

    def _store_input(self, prepared: PreparedJob, job_id: str, image: NormalizedImage | None) -> PreparedJob:
        new = replace(prepared.new, id=job_id)
        if image is not None:
            key = input_key(job_id)
            self.s.objects.put(key, image.png, content_type="image/png")
            new = replace(new, input_key=key)
        return replace(prepared, new=new)

    def _forget_inputs(self, prepared: Sequence[PreparedJob]) -> None:
        for p in prepared:
            if p.new.input_key:
                try:
                    self.s.objects.delete(p.new.input_key)
                except Exception:  # noqa: BLE001 - best effort cleanup of an orphan input
                    log.warning("could not delete orphan input %s", p.new.input_key)


def _item_priority(new: NewJob, req: AnyCreate, batch_priority: int) -> NewJob:
    """A batch item without its own `priority` takes the batch's (default `BATCH_DEFAULT_PRIORITY`, below single
    jobs), so a key's interactive calls run before its own bulk (see storage.scheduling.policy)."""
    return new if "priority" in req.model_fields_set else replace(new, priority=batch_priority)


def _at(err: ApiError, line: int | None) -> ApiError:
    if line is None:
        return err
    return ApiError(err.status, err.code, f"line {line}: {err.message}", err.field, err.headers, line=line)


def _check_custom_ids(reqs: Sequence[AnyCreate], lines: Sequence[int]) -> None:
    seen: dict[str, int] = {}
    for req, line in zip(reqs, lines, strict=True):
        if req.custom_id is None:
            continue
        if req.custom_id in seen:
            raise ApiError(422, "validation_error",
                           f"line {line}: custom_id {req.custom_id!r} repeats line {seen[req.custom_id]}",
                           "custom_id", line=line)
        seen[req.custom_id] = line

