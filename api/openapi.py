"""The OpenAPI document: error responses per route, and request bodies FastAPI can't infer.

Job and batch submission read their bodies by hand (JSON or multipart; JSON array, object or JSONL), so their
request bodies are declared here with `openapi_extra` and the schemas they reference (`JobCreate`, its three
kinds, `BatchCreate`) are added to the components by `install_openapi`. `errors(...)` documents the error
shape for the statuses a route can answer, so clients (and schemathesis) know every response.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel, TypeAdapter

from api.schemas import JOB_CREATE, BatchCreate, EditCreate, ErrorOut, GenerateCreate, UnderstandCreate

REF = "#/components/schemas/{model}"
DESCRIPTIONS = {
    400: "Malformed request (`invalid_json`, `invalid_image`)",
    401: "Missing, unknown or revoked API key (`unauthorized`)",
    404: "No such resource for this key (`not_found`)",
    409: "Conflict (`idempotency_conflict`, `illegal_transition`)",
    413: "Too large (`payload_too_large`, `image_too_large`)",
    415: "Unsupported media type (`unsupported_media_type`)",
    422: "Invalid values (`validation_error`, `prompt_too_long`, `unsafe_webhook_url`)",
    429: "Rate limit or quota (`rate_limited`, `quota_exceeded`); see Retry-After",
    503: "Overloaded or a backing service is down (`overloaded`, `unavailable`); see Retry-After",
}
RETRY_AFTER = {"Retry-After": {"description": "Seconds to wait", "schema": {"type": "integer"}}}
WITH_AUTH = (401, 422, 429, 503)


def errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """`responses=` entries with the error shape for these statuses (auth, validation and 503 always)."""
    out: dict[int | str, dict[str, Any]] = {}
    for status in sorted(set(statuses) | set(WITH_AUTH)):
        entry: dict[str, Any] = {"model": ErrorOut, "description": DESCRIPTIONS.get(status, "Error")}
        if status in (429, 503):
            entry["headers"] = RETRY_AFTER
        out[status] = entry
    return out


def submission(model: type[BaseModel], summary: str, noun: str, body: dict[str, Any]) -> dict[str, Any]:
    """The route options of an idempotent submission (`POST /v1/jobs`, `POST /v1/batches`): 202 when it is made,
    200 with the same `model` when an `Idempotency-Key` replays it; `body` is its `openapi_extra`."""
    replay = {"model": model, "description": f"Idempotent replay: the {noun} made by the same key and body"}
    return {"status_code": 202, "response_model": model, "summary": summary, "openapi_extra": body,
            "responses": {200: replay, **errors(400, 404, 409, 413, 415)}}


def json_or_multipart_body() -> dict[str, Any]:
    """The request body of `POST /v1/jobs`."""
    fields = {name: {"type": "string"} for model in (GenerateCreate, EditCreate, UnderstandCreate)
              for name in model.model_fields if name != "image"}
    multipart = {
        "type": "object",
        "properties": {
            **fields,
            "image": {"type": "string", "format": "binary", "description": "The input image (edit, understand)"},
            "request": {"type": "string", "description": "The job as JSON (`JobCreate` without `image`)"},
        },
        "additionalProperties": False,
        "description": "An `image` file part plus either a `request` JSON part or the job's fields as form fields",
    }
    return {"requestBody": {"required": True, "content": {
        "application/json": {"schema": {"$ref": REF.format(model="JobCreate")}},
        "multipart/form-data": {"schema": multipart},
    }}}


def batch_body() -> dict[str, Any]:
    """The request body of `POST /v1/batches`."""
    array = {"type": "array", "items": {"$ref": REF.format(model="JobCreate")}, "minItems": 1}
    return {"requestBody": {"required": True, "content": {
        "application/json": {"schema": {"oneOf": [array, {"$ref": REF.format(model="BatchCreate")}]}},
        "application/x-ndjson": {"schema": {"type": "string", "description": "One JobCreate JSON per line"}},
    }}}


def install_openapi(app: FastAPI) -> None:
    """Generate the document once, with the hand-read body schemas added to the components."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        doc = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
        schemas = doc.setdefault("components", {}).setdefault("schemas", {})
        job = JOB_CREATE.json_schema(ref_template=REF)
        schemas.update(job.pop("$defs", {}))
        schemas["JobCreate"] = job
        batch = TypeAdapter(BatchCreate).json_schema(ref_template=REF)
        schemas.update(batch.pop("$defs", {}))
        batch["properties"]["requests"]["items"] = {"$ref": REF.format(model="JobCreate")}
        schemas["BatchCreate"] = batch
        app.openapi_schema = doc
        return doc

    app.openapi = openapi  # type: ignore[method-assign]
