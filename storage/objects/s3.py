"""The S3 object store: any S3-compatible endpoint (AWS, MinIO, R2, moto) through boto3.

`s3://bucket/prefix` names the bucket and a key prefix; credentials come from the standard AWS variables.
Small objects go up in one PUT, large ones in parts (boto3 TransferConfig), each object carries its sha256 as
user metadata (`x-amz-meta-sha256`), and presigned GET/PUT URLs come back with their explicit expiry time.
"""

from __future__ import annotations

import hashlib
import logging
from datetime import UTC, datetime, timedelta
from typing import Any, BinaryIO

import boto3
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import ClientError

from storage.errors import ChecksumMismatch, NotFound
from storage.objects.base import ObjectInfo, spool, validate_key, validate_prefix
from storage.settings import Settings

log = logging.getLogger(__name__)

MULTIPART_THRESHOLD = 16 * 1024 * 1024
MULTIPART_CHUNK = 8 * 1024 * 1024
_MISSING = {"404", "NoSuchKey", "NotFound", "NoSuchBucket"}


class S3ObjectStore:
    """Objects in one bucket under an optional key prefix."""

    def __init__(self, bucket: str, prefix: str = "", *, endpoint_url: str | None = None,
                 region: str = "us-east-1", path_style: bool = True, default_expiry: int = 3600,
                 multipart_threshold: int = MULTIPART_THRESHOLD, multipart_chunk: int = MULTIPART_CHUNK,
                 create_bucket: bool = False, public_endpoint_url: str | None = None) -> None:
        self.bucket = bucket
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        self.default_expiry = default_expiry
        config = Config(signature_version="s3v4", retries={"max_attempts": 5, "mode": "standard"},
                        s3={"addressing_style": "path" if path_style else "virtual"})
        session = boto3.session.Session()
        self.client: Any = session.client("s3", endpoint_url=endpoint_url or None, region_name=region, config=config)
        # Presigned URLs are for clients outside the deployment's network (compose reaches MinIO as
        # http://minio:9000, a browser cannot): sign them for the public endpoint when one is set. Signing
        # makes no request, so this client never needs to reach that endpoint itself.
        self.signer: Any = (session.client("s3", endpoint_url=public_endpoint_url, region_name=region, config=config)
                            if public_endpoint_url else self.client)
        self.transfer = TransferConfig(multipart_threshold=multipart_threshold, multipart_chunksize=multipart_chunk)
        if create_bucket:
            self.ensure_bucket()

    @classmethod
    def from_settings(cls, settings: Settings, **kwargs: Any) -> S3ObjectStore:
        bucket, _, prefix = settings.storage_url.removeprefix("s3://").partition("/")
        return cls(bucket, prefix, endpoint_url=settings.s3_endpoint_url, region=settings.s3_region,
                   path_style=settings.s3_path_style, default_expiry=settings.presign_expiry_seconds,
                   public_endpoint_url=settings.s3_public_endpoint_url or None, **kwargs)

    def ensure_bucket(self) -> None:
        """Create the bucket if missing (MinIO, moto, dev setups)."""
        try:
            self.client.head_bucket(Bucket=self.bucket)
        except ClientError:
            self.client.create_bucket(Bucket=self.bucket)
            log.info("created bucket %s", self.bucket)

    def _full(self, key: str) -> str:
        return self.prefix + validate_key(key)

    # ---- the contract ----
    def put(self, key: str, data: bytes | BinaryIO, content_type: str = "application/octet-stream",
            max_bytes: int | None = None) -> ObjectInfo:
        full = self._full(key)
        spooled, size, sha = spool(data, max_bytes)
        with spooled:
            extra = {"ContentType": content_type, "Metadata": {"sha256": sha}}
            if size < self.transfer.multipart_threshold:
                # one PUT, as upload_fileobj would send for it, without its transfer manager: that started a
                # thread pool and futures for every object (a worker's results are a few kB each, 2.4 ms of
                # client CPU a PUT against 1.5 ms, taken from the GIL the sampling thread wants)
                self.client.put_object(Bucket=self.bucket, Key=full, Body=spooled, **extra)
            else:
                self.client.upload_fileobj(spooled, self.bucket, full, ExtraArgs=extra, Config=self.transfer)
        return ObjectInfo(key, size, content_type, sha)

    def get(self, key: str, verify: bool = False) -> bytes:
        try:
            response = self.client.get_object(Bucket=self.bucket, Key=self._full(key))
        except ClientError as exc:
            raise _translate(exc, key) from None
        data: bytes = response["Body"].read()
        expected = response.get("Metadata", {}).get("sha256")
        if verify and expected and hashlib.sha256(data).hexdigest() != expected:
            raise ChecksumMismatch(f"object {key} does not match its sha256", key=key)
        return data

    def stat(self, key: str) -> ObjectInfo:
        try:
            head = self.client.head_object(Bucket=self.bucket, Key=self._full(key))
        except ClientError as exc:
            raise _translate(exc, key) from None
        return ObjectInfo(key, int(head["ContentLength"]), head.get("ContentType", "application/octet-stream"),
                          head.get("Metadata", {}).get("sha256"))

    def exists(self, key: str) -> bool:
        try:
            self.stat(key)
        except NotFound:
            return False
        return True

    def size(self, key: str) -> int:
        return self.stat(key).size

    def delete(self, key: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=self._full(key))

    def page(self, prefix: str = "") -> list[str]:
        validate_prefix(prefix)
        keys: list[str] = []
        paginator = self.client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=self.prefix + prefix):
            keys.extend(obj["Key"][len(self.prefix):] for obj in page.get("Contents", []))
        return sorted(keys)

    def presign_get(self, key: str, expires_in: int | None = None) -> tuple[str, datetime]:
        seconds = int(expires_in or self.default_expiry)
        url = self.signer.generate_presigned_url(
            "get_object", Params={"Bucket": self.bucket, "Key": self._full(key)}, ExpiresIn=seconds
        )
        return url, datetime.now(UTC) + timedelta(seconds=seconds)

    def presign_put(self, key: str, expires_in: int | None = None,
                    content_type: str | None = None) -> tuple[str, datetime]:
        seconds = int(expires_in or self.default_expiry)
        params = {"Bucket": self.bucket, "Key": self._full(key)}
        if content_type:
            params["ContentType"] = content_type
        url = self.signer.generate_presigned_url("put_object", Params=params, ExpiresIn=seconds)
        return url, datetime.now(UTC) + timedelta(seconds=seconds)

    def ping(self) -> None:
        self.client.head_bucket(Bucket=self.bucket)


def _translate(exc: ClientError, key: str) -> Exception:
    code = str(exc.response.get("Error", {}).get("Code", ""))
    if code in _MISSING:
        return NotFound(f"object {key} not found")
    original: Exception = exc  # botocore is untyped: say what it is
    return original
