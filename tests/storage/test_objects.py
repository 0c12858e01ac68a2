"""Both object-store backends pass the same contract: S3 (against a moto server over HTTP) and local."""

from __future__ import annotations

import copy
import io
import os
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import httpx
import pytest

from storage.errors import ChecksumMismatch, InvalidKey, NotFound, ObjectTooLarge
from storage.objects.base import (
    ObjectStore,
    answer_key,
    input_key,
    make_object_store,
    result_key,
    upload_key,
    validate_key,
)
from storage.objects.local import LocalObjectStore
from storage.objects.s3 import S3ObjectStore
from storage.settings import load_settings


@pytest.fixture(scope="module")
def s3_base(settings: Any) -> S3ObjectStore:
    return S3ObjectStore.from_settings(settings)


@pytest.fixture(params=["s3", "local"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> ObjectStore:
    if request.param == "s3":
        s3 = copy.copy(request.getfixturevalue("s3_base"))  # same client, a prefix of its own
        s3.prefix = f"contract-{os.urandom(4).hex()}/"
        return s3
    return make_object_store(load_settings(data_dir=tmp_path, public_url="http://testserver"))


def test_factory_picks_backend(settings: Any, tmp_path: Path) -> None:
    assert isinstance(make_object_store(settings), S3ObjectStore)
    assert isinstance(make_object_store(load_settings(data_dir=tmp_path)), LocalObjectStore)


def test_put_get_stat_list_delete(store: ObjectStore) -> None:
    info = store.put("results/j1/0.png", b"png-bytes", "image/png")
    assert (info.size, info.content_type) == (9, "image/png") and info.sha256 and len(info.sha256) == 64
    store.put("results/j1/answer.json", io.BytesIO(b'{"text": "hi"}'), "application/json")
    store.put("inputs/j1/image.png", b"in")
    assert store.get("results/j1/0.png", verify=True) == b"png-bytes"
    stat = store.stat("results/j1/0.png")
    assert (stat.size, stat.content_type, stat.sha256) == (9, "image/png", info.sha256)
    assert store.exists("results/j1/0.png") and store.size("inputs/j1/image.png") == 2
    assert store.page("results/j1/") == ["results/j1/0.png", "results/j1/answer.json"]
    assert store.page() == ["inputs/j1/image.png", "results/j1/0.png", "results/j1/answer.json"]
    store.put("results/j1/0.png", b"rewritten", "image/png")  # re-running a job overwrites the same key
    assert store.get("results/j1/0.png") == b"rewritten"
    store.delete("results/j1/0.png")
    store.delete("results/j1/0.png")  # idempotent
    assert not store.exists("results/j1/0.png")
    with pytest.raises(NotFound):
        store.get("results/j1/0.png")
    with pytest.raises(NotFound):
        store.stat("results/j1/0.png")


@pytest.mark.parametrize("key", ["../etc/passwd", "a/../../b", "/abs/key", "a\\b", "a\x00b", "", "a//b",
                                 ".hidden", "a/./b", "C:/x", "a/\nb"])
def test_unsafe_keys_rejected(store: ObjectStore, key: str) -> None:
    with pytest.raises(InvalidKey):
        store.put(key, b"x")
    with pytest.raises(InvalidKey):
        store.get(key)


def test_size_bound(store: ObjectStore) -> None:
    with pytest.raises(ObjectTooLarge):
        store.put("uploads/big", io.BytesIO(b"x" * 2048), max_bytes=1024)
    assert not store.exists("uploads/big")
    assert store.put("uploads/ok", b"x" * 1024, max_bytes=1024).size == 1024


def test_key_helpers() -> None:
    assert input_key("j") == "inputs/j/image.png"
    assert result_key("j", "L", 2, "webp") == "results/j/L/2.webp"
    assert answer_key("j", "L") == "results/j/L/answer.json"
    assert upload_key("u") == "uploads/u"
    with pytest.raises(InvalidKey):
        result_key("j", "L", 0, "exe")
    with pytest.raises(InvalidKey):
        input_key("../x")
    assert validate_key("results/a/b.png") == "results/a/b.png"


def test_s3_presigned_get_and_put(s3_base: S3ObjectStore) -> None:
    store = s3_base
    store.put("results/p/0.png", b"hello", "image/png")
    url, expires_at = store.presign_get("results/p/0.png", expires_in=600)
    assert expires_at > datetime.now(UTC)
    response = httpx.get(url)
    assert response.status_code == 200 and response.content == b"hello"
    put_url, _ = store.presign_put("uploads/u1", expires_in=600, content_type="image/png")
    assert httpx.put(put_url, content=b"uploaded", headers={"Content-Type": "image/png"}).status_code == 200
    assert store.get("uploads/u1") == b"uploaded"
    assert store.stat("uploads/u1").content_type == "image/png"


def test_s3_multipart_upload(settings: Any) -> None:
    mb = 1024 * 1024
    store = S3ObjectStore.from_settings(settings, multipart_threshold=5 * mb, multipart_chunk=5 * mb)
    data = os.urandom(11 * mb)
    info = store.put("results/big/0.png", io.BytesIO(data), "image/png")
    head = store.client.head_object(Bucket=store.bucket, Key=store.prefix + "results/big/0.png")
    assert head["ETag"].strip('"').endswith("-3")  # three parts
    assert store.get("results/big/0.png", verify=True) == data and info.size == len(data)


def test_checksum_verified_on_get(store: ObjectStore) -> None:
    store.put("results/c/0.png", b"original")
    if isinstance(store, S3ObjectStore):
        store.client.put_object(Bucket=store.bucket, Key=store.prefix + "results/c/0.png", Body=b"tampered",
                                Metadata={"sha256": store.stat("results/c/0.png").sha256 or ""})
    else:
        assert isinstance(store, LocalObjectStore)
        store.path("results/c/0.png").write_bytes(b"tampered")
    assert store.get("results/c/0.png") == b"tampered"
    with pytest.raises(ChecksumMismatch):
        store.get("results/c/0.png", verify=True)


def test_local_signed_urls(tmp_path: Path) -> None:
    store = make_object_store(load_settings(data_dir=tmp_path, public_url="http://api.example"))
    assert isinstance(store, LocalObjectStore)
    url, expires_at = store.presign_get("results/j/0.png", expires_in=120)
    parsed = urlparse(url)
    query = {k: v[0] for k, v in parse_qs(parsed.query).items()}
    assert parsed.netloc == "api.example" and parsed.path == "/v1/objects/results/j/0.png"
    assert int(query["expires"]) == int(expires_at.timestamp())
    assert store.verify_signature("results/j/0.png", query["expires"], query["sig"])
    assert not store.verify_signature("results/j/1.png", query["expires"], query["sig"])
    assert not store.verify_signature("results/j/0.png", int(query["expires"]) + 1, query["sig"])
    assert not store.verify_signature("results/j/0.png", query["expires"], query["sig"], method="PUT")
    assert not store.verify_signature("../x", query["expires"], query["sig"])
    past = int(time.time()) - 1
    assert not store.verify_signature("results/j/0.png", past, store.sign("results/j/0.png", past))
    put_url, _ = store.presign_put("uploads/u")
    assert "method=PUT" in put_url
    # another process sharing the data directory verifies the same links
    twin = make_object_store(load_settings(data_dir=tmp_path))
    assert isinstance(twin, LocalObjectStore)
    assert twin.verify_signature("results/j/0.png", query["expires"], query["sig"])


def test_local_writes_are_atomic_and_confined(tmp_path: Path) -> None:
    store = make_object_store(load_settings(data_dir=tmp_path))
    assert isinstance(store, LocalObjectStore)

    class Exploding(io.RawIOBase):
        def read(self, n: int = -1) -> bytes:
            raise OSError("disk gone")

    store.put("results/a/0.png", b"complete")
    with pytest.raises(OSError):
        store.put("results/a/0.png", Exploding())  # type: ignore[arg-type]
    assert store.get("results/a/0.png") == b"complete"
    assert store.page() == ["results/a/0.png"]  # no temp files or sidecars listed
    (tmp_path / "outside").write_bytes(b"secret")
    (store.root / "results" / "link").symlink_to(tmp_path / "outside")
    with pytest.raises(InvalidKey):
        store.get("results/link")


def test_presigned_urls_use_the_public_endpoint_when_set(s3_server: str, settings: Any) -> None:
    # Given a store that talks to the server at one address but whose clients reach it at another
    store = S3ObjectStore.from_settings(settings.model_copy(update={
        "s3_endpoint_url": s3_server, "s3_public_endpoint_url": "https://objects.example.com"}))
    store.put("results/x/0.png", b"png", content_type="image/png")
    # When URLs are presigned, Then they name the public endpoint while the store still works internally
    get_url, _ = store.presign_get("results/x/0.png")
    put_url, _ = store.presign_put("uploads/u1")
    assert get_url.startswith("https://objects.example.com/") and put_url.startswith("https://objects.example.com/")
    assert store.get("results/x/0.png") == b"png"
