"""`/v1/uploads`: the presigned upload flow for input images.

`POST /v1/uploads` answers an `upload_id` and a URL to `PUT` the bytes to: a presigned S3 URL, or (local
directory backend) a signed link to `PUT /v1/objects/...`. `PUT /v1/uploads/{upload_id}` takes the bytes with
the API key instead, on any backend. Jobs then name `{"upload_id": ...}` as their image; the upload is decoded
and validated when the job is submitted. Upload ids embed the owner's key id, so no other key can use them.
Bodies are streamed and counted (413 past `max_upload_bytes`); the header is sniffed on PUT so a non-image
or a pixel bomb is refused at once.
"""

from __future__ import annotations

import secrets
import tempfile
from typing import IO, Annotated

from fastapi import APIRouter, Depends, Path, Request
from starlette.concurrency import run_in_threadpool

from api.deps import CallerDep, LifecycleDep, ServicesDep, reject_unknown_query
from api.errors import ApiError
from api.intake.bodies import BodyTooLarge
from api.intake.images import sniff_image
from api.intake.submission import upload_id_for
from api.openapi import errors
from api.schemas import UploadCreate, UploadDone, UploadOut
from api.services import Services
from storage.objects.base import upload_key

router = APIRouter(prefix="/v1/uploads", tags=["uploads"], dependencies=[Depends(reject_unknown_query)])

SPOOL_IN_MEMORY = 2 * 1024 * 1024
UPLOAD_ID = r"^[0-9a-fA-F-]{36}\.[A-Za-z0-9_-]{16,64}$"


@router.post("", status_code=201, response_model=UploadOut, summary="Start an upload", responses=errors(400, 429))
def create_upload(services: ServicesDep, lifecycle: LifecycleDep, caller: CallerDep,
                  body: UploadCreate | None = None) -> UploadOut:
    """An upload id and the URL to PUT the image bytes to (valid until `expires_at`). Each live slot reserves
    `max_bytes` of the key's storage quota until it expires (`UNIPIC_UPLOAD_TTL`); past the quota, 429
    `storage_quota_exceeded`."""
    upload_id = upload_id_for(caller.id, secrets.token_urlsafe(18))
    content_type = body.content_type if body else None
    settings = services.settings
    ttl = min(settings.presign_expiry_seconds, settings.upload_ttl)
    lifecycle.open_upload(caller.id, upload_id, settings.max_upload_bytes, settings.max_storage_bytes_per_key,
                          settings.upload_ttl)
    url, expires_at = services.objects.presign_put(upload_key(upload_id), ttl, content_type)
    headers: dict[str, str] = {"Content-Type": content_type} if content_type else {}
    return UploadOut(upload_id=upload_id, url=url, expires_at=expires_at,
                     max_bytes=services.settings.max_upload_bytes, headers=headers)


async def spool_body(request: Request, max_bytes: int) -> tuple[IO[bytes], int]:
    """The request body in a temp file (memory first), counted as it arrives; 413 past `max_bytes`."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        raise BodyTooLarge(max_bytes)
    out = tempfile.SpooledTemporaryFile(max_size=SPOOL_IN_MEMORY)  # noqa: SIM115 - returned to the caller
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_bytes:
            out.close()
            raise BodyTooLarge(max_bytes)
        out.write(chunk)
    out.seek(0)
    return out, size


def store_upload(services: Services, key: str, data: IO[bytes], size: int) -> None:
    """Sniff the header (format, pixel count) without decoding, then store the bytes as they came."""
    if size == 0:
        raise ApiError(400, "invalid_image", "the upload is empty")
    content_type = sniff_image(data, services.settings.max_upload_pixels)
    data.seek(0)
    services.objects.put(key, data, content_type=content_type,  # type: ignore[arg-type] # a binary file
                         max_bytes=services.settings.max_upload_bytes)


@router.put("/{upload_id}", response_model=UploadDone, summary="Upload the image bytes", responses=errors(
    400, 404, 413, 415), openapi_extra={"requestBody": {"required": True, "content": {
        "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}}})
async def put_upload(
    request: Request, services: ServicesDep, lifecycle: LifecycleDep, caller: CallerDep,
    upload_id: Annotated[str, Path(max_length=128)],
) -> UploadDone:
    """The raw image bytes (PNG, JPEG or WebP) as the request body."""
    if not upload_id.startswith(caller.id + ".") or len(upload_id) > 128 or "/" in upload_id:
        raise ApiError(404, "not_found", "upload not found")
    if not await run_in_threadpool(lifecycle.upload_live, caller.id, upload_id):
        raise ApiError(404, "not_found", "upload not found or expired (POST /v1/uploads first)")
    data, size = await spool_body(request, services.settings.max_upload_bytes)
    with data:
        await run_in_threadpool(store_upload, services, upload_key(upload_id), data, size)
    return UploadDone(upload_id=upload_id, bytes=size)
