"""`/v1/objects/{key}`: signed links for the local-directory object store (the embedded default).

S3 hands out presigned URLs itself; the local backend signs `(method, key, expires)` with an HMAC secret and
points links here. `GET` streams the file (results); `PUT` takes an upload's bytes (under
`uploads/`) or a remote worker's result (under `results/`, signed only by the worker gateway for its job's
keys). No API key is needed: the signature is the authorization, as with S3. With the S3 backend these routes
answer 404.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import FileResponse
from starlette.concurrency import run_in_threadpool

from api.deps import ServicesDep, reject_unknown_query
from api.errors import ApiError
from api.openapi import DESCRIPTIONS
from api.routes.uploads import spool_body, store_upload
from api.schemas import ErrorOut, UploadDone
from api.services import Services
from storage.errors import InvalidKey
from storage.objects.base import lease_of_result_key
from storage.objects.local import LocalObjectStore

router = APIRouter(prefix="/v1/objects", tags=["objects"], dependencies=[Depends(reject_unknown_query)])

SIGNED_ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorOut, "description": DESCRIPTIONS[status]} for status in (400, 401, 404, 413, 415, 422)
}
Expires = Annotated[int, Query(ge=0, le=2**40, description="Unix time the link expires")]
Signature = Annotated[str, Query(min_length=1, max_length=128, description="HMAC-SHA256 signature")]


def _local_store(services: Services) -> LocalObjectStore:
    store = services.objects
    if not isinstance(store, LocalObjectStore):
        raise ApiError(404, "not_found", "this deployment serves objects from S3")
    return store


def _verify(services: Services, key: str, expires: int, sig: str, method: str) -> LocalObjectStore:
    store = _local_store(services)
    try:
        ok = store.verify_signature(key, expires, sig, method)
    except InvalidKey:
        raise ApiError(404, "not_found", "object not found") from None
    if not ok:
        raise ApiError(401, "unauthorized", "invalid or expired signature")
    return store


@router.get(
    "/{key:path}", summary="Download an object (signed link)", response_class=FileResponse,
    responses={200: {"description": "The object's bytes", "content": {"application/octet-stream": {}}},
               **SIGNED_ERRORS},
)
def get_object(services: ServicesDep, key: str, expires: Expires, sig: Signature) -> FileResponse:
    store = _verify(services, key, expires, sig, "GET")
    try:
        info = store.stat(key)
        path = store.path(key)
    except InvalidKey:
        raise ApiError(404, "not_found", "object not found") from None
    return FileResponse(path, media_type=info.content_type, headers={"Cache-Control": "private, max-age=300"})


@router.put(
    "/{key:path}", summary="Upload an object (signed link)", response_model=UploadDone, responses=SIGNED_ERRORS,
    openapi_extra={"requestBody": {"required": True, "content": {
        "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}}},
)
async def put_object(request: Request, services: ServicesDep, key: str, expires: Expires, sig: Signature,
                     method: Annotated[str, Query(pattern="^PUT$")] = "PUT") -> UploadDone:
    if key.startswith("results/"):  # a remote worker's result: the worker gateway signs exactly a job's keys
        return await _put_result(request, services, key, expires, sig)
    if not key.startswith("uploads/"):
        raise ApiError(404, "not_found", "only uploads can be written")
    _verify(services, key, expires, sig, "PUT")
    data, size = await spool_body(request, services.settings.max_upload_bytes)
    with data:
        await run_in_threadpool(store_upload, services, key, data, size)
    return UploadDone(upload_id=key.removeprefix("uploads/"), bytes=size)


async def _put_result(request: Request, services: Services, key: str, expires: int, sig: str) -> UploadDone:
    """Store a result a remote worker uploads (api.gateway.routes checks it before `complete`); only under
    the lease that holds the running job now (`results/{job}/{lease}/...`), so neither a finished job's checked
    result nor anything by a lease that was released, expired, reclaimed or revoked can be written (409)."""
    store = _verify(services, key, expires, sig, "PUT")
    scope = lease_of_result_key(key)
    if scope is None:
        raise ApiError(404, "not_found", "only uploads, or a running job's results, can be written")
    job_id, lease = scope
    if not any(job.status == "running" and job.lease_token == lease for job in services.jobs.get_many([job_id])):
        raise ApiError(409, "lease_lost", f"job {job_id}: this lease no longer holds the job; nothing written")
    data, size = await spool_body(request, services.settings.max_upload_bytes)
    content_type = request.headers.get("content-type") or "application/octet-stream"
    with data:
        await run_in_threadpool(store.put, key, data, content_type)  # type: ignore[arg-type] # a binary file
    return UploadDone(upload_id=key, bytes=size)
