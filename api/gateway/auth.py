"""Worker-token authentication for the worker gateway: `Authorization: Bearer wk_...` -> `WorkerCaller`.

A worker token (storage.fleet.tokens) is not an API key: API routes refuse it (it is not in `api_keys`) and
the gateway refuses API keys. Tokens are checked through the process's `WorkerTokenCache` (`storage.fleet.
token_cache`: no database work per request): a revoked token is refused (401) at most `REVOCATION_SECONDS` (2 s)
after its revoke commits, so a worker cut off cannot renew its leases, report or complete, and its jobs go to
another worker when they expire. Every remote worker id is prefixed with its token's id (`remote-<token id>:
<name>`), which is how the gateway knows that a job was claimed under this token. Knows nothing of jobs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from api.deps import ServicesDep
from api.errors import ApiError
from api.services import Services
from storage.fleet.tokens import WorkerTokenRecord

worker_bearer = HTTPBearer(auto_error=False, description="A worker token: `Authorization: Bearer wk_...`")


@dataclass(frozen=True)
class WorkerCaller:
    """The authenticated worker token."""

    token: WorkerTokenRecord

    @property
    def prefix(self) -> str:
        """What every worker id under this token starts with."""
        return f"remote-{self.token.id}:"

    def worker_id(self, name: str) -> str:
        return (self.prefix + name)[:200]

    def owns(self, worker_id: str | None) -> bool:
        """Whether a job claimed by `worker_id` was claimed under this token."""
        return bool(worker_id) and str(worker_id).startswith(self.prefix)


def authenticate_worker(
    services: ServicesDep, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(worker_bearer)]
) -> WorkerCaller:
    """The caller for a valid, unrevoked worker token; 401 otherwise."""
    if credentials is None:
        raise _unauthorized("missing bearer worker token")
    return WorkerCaller(worker_token(services, credentials.scheme, credentials.credentials))


def worker_token(services: Services, scheme: str, token: str) -> WorkerTokenRecord:
    """The live token a bearer credential names, or the 401 a worker hears (this dependency and the 401-first
    check of `api.auth_first` both ask here)."""
    if scheme.lower() != "bearer" or not token:
        raise _unauthorized("missing bearer worker token")
    record = services.worker_token_cache.authenticate(token)
    if record is None:
        raise _unauthorized("invalid or revoked worker token")
    return record


def _unauthorized(message: str) -> ApiError:
    return ApiError(401, "unauthorized", message, headers={"WWW-Authenticate": "Bearer"})


WorkerDep = Annotated[WorkerCaller, Depends(authenticate_worker)]
