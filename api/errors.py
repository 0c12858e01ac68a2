"""HTTP errors: one shape, stable codes, one place that maps every failure to a response.

Every error the API answers is `{"error": {"code", "message", "field"}}` with a code from docs/architecture.md.
Routes raise `ApiError` (or let storage errors propagate); `install_error_handlers` maps `ApiError`, storage's
typed `StoreError`s, FastAPI's request validation errors and database outages to that shape, so no route
builds an error response by hand and nothing the client did wrong becomes a 500.
HTTP status codes live here and in the routes, never in `storage/`.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from storage import errors as store_errors
from storage.db import DATABASE_UNAVAILABLE, DatabaseError, DatabaseValueError, connection_lost

log = logging.getLogger(__name__)

# stable code -> HTTP status (for the storage errors and the generic fallbacks)
STORE_STATUS: dict[str, int] = {
    "not_found": 404,
    "illegal_transition": 409,
    "conflict": 409,
    "idempotency_conflict": 409,
    "invalid_key": 400,
    "payload_too_large": 413,
    "checksum_mismatch": 409,
    "unavailable": 503,
    "quota_exceeded": 429,
    "storage_quota_exceeded": 429,
}
HTTP_STATUS_CODES: dict[int, str] = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "validation_error",
    429: "rate_limited",
    503: "unavailable",
}
RETRY_AFTER_UNAVAILABLE = 2
RETRY_AFTER_QUOTA = 5


class ApiError(Exception):
    """An error answered to the client: HTTP status, stable code, message, offending field, extra headers."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        field: str | None = None,
        headers: dict[str, str] | None = None,
        line: int | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.field = field
        self.headers = headers or {}
        self.line = line


def validation_error(message: str, field: str | None = None) -> ApiError:
    """A 422 `validation_error` naming the field."""
    return ApiError(422, "validation_error", message, field)


def not_found(what: str = "resource") -> ApiError:
    return ApiError(404, "not_found", f"{what} not found")


def retry_later(status: int, code: str, message: str, retry_after: float) -> ApiError:
    """A 429/503 carrying `Retry-After` in whole seconds (at least 1)."""
    seconds = max(1, int(retry_after + 0.999))
    return ApiError(status, code, message, headers={"Retry-After": str(seconds)})


def error_body(code: str, message: str, field: str | None = None, line: int | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"code": code, "message": message, "field": field}
    if line is not None:
        body["line"] = line
    return {"error": body}


def error_response(err: ApiError) -> JSONResponse:
    body = error_body(err.code, err.message, err.field, err.line)
    return JSONResponse(body, status_code=err.status, headers=err.headers)


def field_path(loc: tuple[Any, ...] | list[Any]) -> str | None:
    """`("body", "params", 0, "width")` -> `"params[0].width"`; the location prefix is dropped."""
    parts = list(loc)
    if parts and parts[0] in ("body", "query", "path", "header", "cookie"):
        parts = parts[1:]
    out = ""
    for part in parts:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out or None


def from_validation_errors(errors: list[Any], prefix: str = "") -> ApiError:
    """The first pydantic error as a 422, naming its field (prefixed, e.g. with a batch line)."""
    if not errors:
        return validation_error(f"{prefix}invalid request".strip())
    first = _most_specific(errors)
    loc = [p for p in first.get("loc", ()) if not _is_union_tag(p)]
    field = "kind" if first.get("type") in ("union_tag_not_found", "union_tag_invalid") else field_path(loc)
    message = str(first.get("msg", "invalid value"))
    if first.get("type") in ("union_tag_not_found", "union_tag_invalid"):
        sent = (first.get("ctx") or {}).get("tag")
        message = (f"unknown kind {str(sent)[:50]!r}; " if sent is not None and first.get("type") == "union_tag_invalid"
                   else "a job needs a kind; ") + f"kinds: {', '.join(KINDS)}"
    if field:
        message = f"{field}: {message}"
    return ApiError(422, "validation_error", f"{prefix}{message}", field)


def _is_union_tag(part: Any) -> bool:
    # pydantic puts the discriminator value into the location of tagged-union errors ("generate", ...), and
    # the member type into plain unions' ("str", "UploadRef" for an image input)
    return part in ("generate", "edit", "understand", "json-or-python[json=str,python=function-after]",
                    *UNION_MEMBERS)


UNION_MEMBERS = ("str", "UploadRef")
KINDS = ("generate", "edit", "understand")


def _most_specific(errors: list[Any]) -> Any:
    """Of a union's errors for one field, the one that went deepest: for `"image": {"upload_id": ""}` that is
    `image.upload_id` (what the user wrote), not `image` as a string."""
    first = errors[0]
    base = [p for p in first.get("loc", ()) if not _is_union_tag(p)]
    best, depth = first, len(base)
    for err in errors[1:]:
        raw = list(err.get("loc", ()))
        loc = [p for p in raw if not _is_union_tag(p)]
        if loc[:len(base)] == base and len(loc) > depth and any(p in UNION_MEMBERS for p in raw):
            best, depth = err, len(loc)
    return best


def from_store_error(exc: store_errors.StoreError) -> ApiError:
    status = STORE_STATUS.get(exc.code, 409 if isinstance(exc, store_errors.Conflict) else 400)
    if isinstance(exc, store_errors.NotFound):
        return ApiError(404, "not_found", exc.message)
    if status == 503:
        return retry_later(503, "unavailable", exc.message, RETRY_AFTER_UNAVAILABLE)
    if status == 429:
        return retry_later(429, exc.code, exc.message, RETRY_AFTER_QUOTA)
    field = exc.details.get("field") if isinstance(exc.details.get("field"), str) else None
    return ApiError(status, exc.code, exc.message, field)  # type: ignore[arg-type]


def install_error_handlers(app: FastAPI) -> None:
    """Map every failure to the one error shape."""

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return error_response(exc)

    @app.exception_handler(store_errors.StoreError)
    async def _store_error(request: Request, exc: store_errors.StoreError) -> JSONResponse:
        return error_response(from_store_error(exc))

    @app.exception_handler(RequestValidationError)
    async def _request_validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = list(exc.errors())
        if errors and errors[0].get("type") == "json_invalid":
            return error_response(ApiError(400, "invalid_json", "request body is not valid JSON"))
        return error_response(from_validation_errors(errors))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = HTTP_STATUS_CODES.get(exc.status_code, "error" if exc.status_code >= 500 else "bad_request")
        message = str(exc.detail) if exc.detail else code
        return error_response(ApiError(exc.status_code, code, message, headers=dict(exc.headers or {})))

    async def _db_down(request: Request, exc: Exception) -> JSONResponse:
        log.warning("database unavailable on %s %s: %s", request.method, request.url.path, exc)
        return error_response(retry_later(503, "unavailable", "database unavailable", RETRY_AFTER_UNAVAILABLE))

    for unavailable in DATABASE_UNAVAILABLE:
        app.add_exception_handler(unavailable, _db_down)

    @app.exception_handler(DatabaseError)
    async def _db_error(request: Request, exc: DatabaseError) -> JSONResponse:
        if connection_lost(exc):
            return error_response(retry_later(503, "unavailable", "database unavailable", RETRY_AFTER_UNAVAILABLE))
        if isinstance(exc, DatabaseValueError):  # a value api.intake.json_limits let through but the database refused
            log.warning("database refused a value on %s %s: %s", request.method, request.url.path, exc)
            return error_response(ApiError(422, "invalid_value", "a value cannot be stored"))
        log.exception("database error on %s %s", request.method, request.url.path)
        return error_response(ApiError(500, "internal_error", "internal error"))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        if _is_redis_down(exc):
            log.warning("redis unavailable on %s %s: %s", request.method, request.url.path, exc)
            return error_response(retry_later(503, "unavailable", "queue unavailable", RETRY_AFTER_UNAVAILABLE))
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return error_response(ApiError(500, "internal_error", "internal error"))


def _is_redis_down(exc: BaseException) -> bool:
    name = type(exc).__module__ + "." + type(exc).__name__
    return name.startswith(("redis.exceptions.ConnectionError", "redis.exceptions.TimeoutError", "kombu.exceptions.OperationalError"))
