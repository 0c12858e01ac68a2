"""OpenAI's error shape for the OpenAI-compatible routes: `{"error": {"message", "type", "param", "code"}}`.

Owns the mapping from our errors (`ApiError`, storage's typed errors, request validation, HTTP errors) to that
shape, and `OpenAIRoute`, a route class whose handler answers every such failure in it, so code written for
OpenAI's client reads our errors as it reads theirs. Paths in OpenAI's namespace that we do not serve
(`/v1/embeddings`, `/v1/images/variations`, ...) and oversize bodies sent to OpenAI paths answer in it too
(`install`, `render_for_path`). Elsewhere the API keeps its own shape (api.errors). An anonymous caller hears
401 before any complaint about the body (api.auth_first).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException as StarletteHTTPException

from api.auth_first import require_caller
from api.errors import ApiError, error_response, from_store_error, from_validation_errors
from storage.errors import StoreError

TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
         404: "invalid_request_error", 429: "rate_limit_error"}
# our field names -> the OpenAI request's
PARAMS = {"width": "size", "height": "size", "num_images": "n", "instruction": "prompt", "question": "messages",
          "image": "image", "guidance_scale": "guidance", "max_new_tokens": "max_tokens"}
# what OpenAI's client calls under /v1 (our own /v1/batches and /v1/uploads keep our shape)
OPENAI_PATHS = ("/v1/chat/", "/v1/images/", "/v1/models", "/v1/completions", "/v1/embeddings", "/v1/audio/",
                "/v1/moderations", "/v1/responses", "/v1/files", "/v1/fine_tuning/", "/v1/assistants",
                "/v1/threads", "/v1/vector_stores", "/v1/realtime", "/v1/evals", "/v1/containers",
                "/v1/conversations")


def is_openai_path(path: str) -> bool:
    return any(path == prefix.rstrip("/") or path.startswith(prefix) for prefix in OPENAI_PATHS)


def openai_body(status: int, message: str, code: str | None = None, param: str | None = None) -> dict[str, Any]:
    kind = TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def openai_error(status: int, message: str, code: str | None = None, param: str | None = None,
                 headers: dict[str, str] | None = None) -> JSONResponse:
    status = 400 if status == 422 else status  # OpenAI answers invalid requests with 400
    return JSONResponse(openai_body(status, message, code, param), status_code=status, headers=headers)


def render_for_path(path: str, err: ApiError) -> bytes:
    """An error body in the shape the path's clients read (api.intake.bodies' early 413)."""
    if is_openai_path(path):
        return json.dumps(openai_body(err.status, err.message, err.code)).encode()
    return bytes(error_response(err).body)


def as_api_error(exc: Exception) -> ApiError | None:
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, StoreError):
        return from_store_error(exc)
    if isinstance(exc, RequestValidationError):
        errors = list(exc.errors())
        if errors and errors[0].get("type") == "json_invalid":
            return ApiError(400, "invalid_json", "request body is not valid JSON")
        return from_validation_errors(errors)
    if isinstance(exc, StarletteHTTPException):
        return ApiError(exc.status_code, "http_error", str(exc.detail), headers=dict(exc.headers or {}))
    return None


def from_exception(err: ApiError) -> JSONResponse:
    field = (err.field or "").split(".")[0] or None
    return openai_error(err.status, err.message, err.code, PARAMS.get(field or "", field), err.headers)


class OpenAIRoute(APIRoute):
    """A route whose failures (including auth and body validation) answer in OpenAI's error shape."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def answer(request: Request) -> Response:
            try:
                return await handler(request)
            except Exception as exc:
                err = as_api_error(exc)
                if err is None:
                    raise
                if isinstance(exc, RequestValidationError) and err.status != 401:
                    try:
                        await require_caller(request)  # FastAPI parses the body before authenticating
                    except ApiError as unauthorized:
                        err = unauthorized
                return from_exception(err)

        return answer


def install(app: FastAPI) -> None:
    """Answer HTTP errors (404, 405) on paths of OpenAI's namespace in OpenAI's shape."""
    native: Any = app.exception_handlers[StarletteHTTPException]

    async def _http_error(request: Request, exc: Exception) -> Any:
        err = as_api_error(exc)
        if err is not None and is_openai_path(request.url.path):
            if err.status == 404:
                err = ApiError(404, "unknown_url", f"Unknown request URL: {request.method} {request.url.path}. "
                                                  "This server serves /v1/images/generations, /v1/images/edits, "
                                                  "/v1/chat/completions and /v1/models.")
            return from_exception(err)
        return await native(request, exc)

    app.add_exception_handler(StarletteHTTPException, _http_error)
