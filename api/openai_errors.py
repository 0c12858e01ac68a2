"""OpenAI's error shape for the OpenAI-compatible routes: `{"error": {"message", "type", "param", "code"}}`.

Owns the mapping from our errors (`ApiError`, storage's typed errors, request validation, HTTP errors) to that
shape, and `OpenAIRoute`, a route class whose handler answers every such failure in it, so code written for
OpenAI's client reads our errors as it reads theirs. Elsewhere the API keeps its own shape (api.errors).
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException as StarletteHTTPException

from api.errors import ApiError, from_store_error, from_validation_errors
from storage.errors import StoreError

TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
         404: "invalid_request_error", 429: "rate_limit_error"}
# our field names -> the OpenAI request's
PARAMS = {"width": "size", "height": "size", "num_images": "n", "instruction": "prompt", "question": "messages",
          "image": "image", "guidance_scale": "guidance", "max_new_tokens": "max_tokens"}


def openai_error(status: int, message: str, code: str | None = None, param: str | None = None,
                 headers: dict[str, str] | None = None) -> JSONResponse:
    status = 400 if status == 422 else status  # OpenAI answers invalid requests with 400
    kind = TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
    body = {"error": {"message": message, "type": kind, "param": param, "code": code}}
    return JSONResponse(body, status_code=status, headers=headers)


def as_api_error(exc: Exception) -> ApiError | None:
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, StoreError):
        return from_store_error(exc)
    if isinstance(exc, RequestValidationError):
        return from_validation_errors(list(exc.errors()))
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
                return from_exception(err)

        return answer
