"""OpenAI-compatible routes: `POST /v1/images/generations`, `/v1/images/edits` (multipart) and
`/v1/chat/completions` (non-streaming, image understanding), so code written for OpenAI's client works here
by changing `base_url`.

Each is a synchronous view over an ordinary job: the request becomes a job body (api.openai.schemas), is
submitted like any other (it shows in `/v1/jobs`, counts against quota, honours `Idempotency-Key`), and the
route waits for it, at most `WAIT_SECONDS` (then 504 naming the job id to follow). Chat's `n` answers are
`n` jobs (seeds `seed`, `seed + 1`, ... when a seed is given); its `usage` counts the question's and the
answers' tokens with the API's prompt tokenizer (api.intake.tokens). `GET /v1/models` lists the served models
(`api.intake.models`: the default, also as `unipic`, and each model a live worker holds, with extensions
`default`, `workers` and `checkpoint_hashes`); a job's `model` is checked by the ordinary intake.
Errors use OpenAI's shape (api.openai.errors).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import time
from typing import Annotated, Any

from fastapi import APIRouter, Header, Request
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from api.deps import CallerDep, ServicesDep
from api.errors import ApiError, from_validation_errors
from api.intake.models import ServedModel
from api.intake.submission import Submitter
from api.openai.errors import OpenAIRoute
from api.openai.schemas import (
    ChatCompletion,
    ImageEdit,
    ImageGeneration,
    edit_body,
    generate_body,
    understand_body,
)
from api.services import Services
from storage.records import JobRecord

router = APIRouter(prefix="/v1", tags=["openai"], route_class=OpenAIRoute)

WAIT_SECONDS = 300.0
POLL_SECONDS = 0.25
IdempotencyKey = Annotated[str | None, Header(max_length=200)]


async def run_job(services: Services, owner_id: str, max_active: int | None, body: dict[str, Any],
                  image: bytes | None, idempotency_key: str | None) -> JobRecord:
    """Submit the job and wait until it is finished (bounded); a failed job raises in OpenAI's terms."""
    digest = hashlib.sha256(image).hexdigest() if image is not None else None
    submitted = await run_in_threadpool(Submitter(services).submit_job, owner_id, body, image,
                                        idempotency_key or None, digest, max_active)
    job = submitted.job
    deadline = time.monotonic() + WAIT_SECONDS
    while not job.terminal:
        if time.monotonic() > deadline:
            raise ApiError(504, "timeout", f"job {job.id} is still {job.status} after {WAIT_SECONDS:.0f} s; "
                                           f"follow it at GET /v1/jobs/{job.id}")
        await asyncio.sleep(POLL_SECONDS)
        job = await run_in_threadpool(services.jobs.get, job.id, owner_id)
    if job.status != "succeeded":
        status = 400 if job.error_code in ("invalid_input", "content_filtered") else 500
        raise ApiError(status, job.error_code or job.status, f"job {job.id} {job.status}: {job.error_message or ''}")
    return job


def images_answer(services: Services, job: JobRecord, response_format: str) -> dict[str, Any]:
    data = []
    for key in job.result_keys or []:
        if response_format == "b64_json":
            data.append({"b64_json": base64.b64encode(services.objects.get(key)).decode()})
        else:
            data.append({"url": services.presign(key)[0]})
    return {"created": int(job.created_at.timestamp()), "data": data, "id": job.id}


@router.post("/images/generations", summary="Generate images (OpenAI-compatible)")
async def images_generations(req: ImageGeneration, services: ServicesDep, caller: CallerDep,
                             idempotency_key: IdempotencyKey = None) -> dict[str, Any]:
    """OpenAI's Images API: `prompt`, `n`, `size` "WxH", `response_format`; extensions `seed`, `steps`,
    `guidance`, `negative_prompt`."""
    await run_in_threadpool(services.models.resolve, req.model)  # the model first, as OpenAI answers
    job = await run_job(services, caller.id, caller.max_active_jobs, generate_body(req), None, idempotency_key)
    return await run_in_threadpool(images_answer, services, job, req.response_format)


@router.post("/images/edits", summary="Edit an image (OpenAI-compatible, multipart)")
async def images_edits(request: Request, services: ServicesDep, caller: CallerDep,
                       idempotency_key: IdempotencyKey = None) -> dict[str, Any]:
    """Multipart: `image` (file), `prompt`, `n`, `size`, `response_format`, and the extensions as fields."""
    try:
        form = await request.form(max_files=2, max_fields=50)
    except Exception as exc:  # noqa: BLE001 - starlette's parser raises several types for bad input
        raise ApiError(400, "invalid_request", f"malformed multipart body: {exc}") from None
    files = [v for k, v in form.multi_items() if isinstance(v, UploadFile) and k in ("image", "image[]")]
    if not files:
        raise ApiError(400, "invalid_request", "an image file part is required", "image")
    if form.get("mask") is not None:
        raise ApiError(400, "unsupported", "masks are not supported: the instruction says what to change", "mask")
    fields = {k: v for k, v in form.items() if isinstance(v, str)}
    try:
        req = ImageEdit.model_validate(fields)
    except ValidationError as exc:  # form fields are checked like a JSON body: 400 naming the field
        raise from_validation_errors(list(exc.errors())) from None
    await run_in_threadpool(services.models.resolve, req.model)
    image = await files[0].read()
    job = await run_job(services, caller.id, caller.max_active_jobs, edit_body(req), image, idempotency_key)
    return await run_in_threadpool(images_answer, services, job, req.response_format)


@router.post("/chat/completions", summary="Ask about an image (OpenAI-compatible chat, non-streaming)")
async def chat_completions(req: ChatCompletion, services: ServicesDep, caller: CallerDep,
                           idempotency_key: IdempotencyKey = None) -> dict[str, Any]:
    """The last user message: its text parts are the question, its `image_url` part (a data URL or
    `upload://<upload_id>`) the image. Answers one assistant message."""
    await run_in_threadpool(services.models.resolve, req.model)
    body = understand_body(req)
    bodies = [body if req.seed is None else {**body, "seed": req.seed + i} for i in range(req.n)]
    keys = [None if not idempotency_key else idempotency_key if i == 0 else f"{idempotency_key}#{i}"
            for i in range(req.n)]
    jobs = await asyncio.gather(*(run_job(services, caller.id, caller.max_active_jobs, one, None, key)
                                  for one, key in zip(bodies, keys, strict=True)))
    answers = [job.result_text or "" for job in jobs]
    count = services.preparer.counter.count
    prompt_tokens = await run_in_threadpool(count, str(body.get("question") or ""))
    completion_tokens = sum([await run_in_threadpool(count, text) for text in answers])
    first = jobs[0]
    return {
        "id": f"chatcmpl-{first.id}", "object": "chat.completion", "created": int(first.created_at.timestamp()),
        "model": req.model or services.models.name_of(None), "job_id": first.id, "job_ids": [job.id for job in jobs],
        "choices": [{"index": i, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
                    for i, text in enumerate(answers)],
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                  "total_tokens": prompt_tokens + completion_tokens},
    }


def model_entry(model: ServedModel) -> dict[str, Any]:
    return {"id": model.name, "object": "model", "created": model.created, "owned_by": "unipic",
            "default": model.default, "workers": model.workers, "checkpoint_hashes": model.checkpoint_hashes}


@router.get("/models", summary="List models (OpenAI-compatible)")
async def list_models(services: ServicesDep, caller: CallerDep) -> dict[str, Any]:
    """The default model (first, and again as `unipic`; always listed: its jobs queue with no worker live) and
    every model some live worker holds."""
    models = await run_in_threadpool(services.models.listing)
    return {"object": "list", "data": [model_entry(m) for m in models]}


@router.get("/models/{model}", summary="Retrieve a model (OpenAI-compatible)")
async def get_model(model: str, services: ServicesDep, caller: CallerDep) -> dict[str, Any]:
    return model_entry(await run_in_threadpool(services.models.get, model))
