"""401 before anything is said about a request's body, on every route that needs a key or a worker token.

FastAPI parses a declared JSON body before it resolves the route's dependencies, so an anonymous request with
malformed JSON would hear 400 `invalid_json` (and an anonymous multipart with bad fields a validation error)
before 401. `require_caller` checks the credentials a route needs (an API key through `api.deps`, a worker
token through `api.gateway.auth`) and raises the 401 they would; `install` makes the app's request-validation
handler call it first. The OpenAI routes' own error handler (api.openai.errors) calls it too.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.concurrency import run_in_threadpool

from api.deps import _calls, _require_key, authenticate
from api.errors import ApiError, error_response
from api.gateway.auth import authenticate_worker, worker_token
from api.services import Services


async def require_caller(request: Request) -> None:
    """Raise the route's 401 when it needs a key or a worker token and the request has no valid one."""
    dependant = getattr(request.scope.get("route"), "dependant", None)
    if dependant is None:
        return
    if _calls(dependant, authenticate):
        await _require_key(request)
    elif _calls(dependant, authenticate_worker):
        await _require_worker(request)


async def _require_worker(request: Request) -> None:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    services: Services = request.app.state.services
    await run_in_threadpool(worker_token, services, scheme, token.strip())


def install(app: FastAPI) -> None:
    """Wrap the app's request-validation handler (api.errors) so an unauthenticated caller hears 401 first."""
    answer_invalid: Any = app.exception_handlers[RequestValidationError]

    async def _auth_first(request: Request, exc: Exception) -> Any:
        try:
            await require_caller(request)
        except ApiError as err:
            return error_response(err)
        return await answer_invalid(request, exc)

    app.add_exception_handler(RequestValidationError, _auth_first)
