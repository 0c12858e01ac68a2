"""The OpenAI-compatible routes, driven by the official `openai` package against the real stack (Postgres,
Redis, S3, a tiny-model worker process), plus their error shape in process."""

from __future__ import annotations

import base64
import io
from typing import Any

import httpx
import openai
import pytest
from PIL import Image

from tests.support.api import generate_body, png_bytes
from tests.support.production_stack import new_key, prod_stack
from tests.support.stack import Stack

__all__ = ["new_key", "prod_stack"]  # fixtures


def openai_client(stack: Stack, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=stack.url + "/v1", api_key=key, max_retries=0, timeout=300)


@pytest.mark.system
def test_openai_client_generates_edits_and_asks(prod_stack: Stack, new_key: str) -> None:
    client = openai_client(prod_stack, new_key)
    # When the openai package generates an image (our sampling options as extensions)
    made = client.images.generate(prompt="a red fox", n=1, size="64x64", response_format="b64_json",
                                  extra_body={"steps": 2, "seed": 7})
    # Then it gets one 64 px PNG inline
    (image,) = made.data
    assert image.b64_json
    with Image.open(io.BytesIO(base64.b64decode(image.b64_json))) as decoded:
        assert decoded.size == (64, 64)

    # When it edits an image (multipart) and asks for URLs
    edited = client.images.edit(image=("in.png", png_bytes(64, 64), "image/png"), prompt="make it blue", n=2,
                                size="64x64", extra_body={"steps": 2})
    # Then both results are downloadable URLs
    assert len(edited.data) == 2
    for item in edited.data:
        assert item.url and httpx.get(item.url, timeout=30).status_code == 200

    # When it asks about an image with a data URL in a chat message
    data_url = "data:image/png;base64," + base64.b64encode(png_bytes(64, 64)).decode()
    answer = client.chat.completions.create(model="unipic", max_tokens=4, messages=[{"role": "user", "content": [
        {"type": "text", "text": "What color is it?"}, {"type": "image_url", "image_url": {"url": data_url}}]}])
    # Then the answer is one assistant message
    assert answer.choices[0].message.role == "assistant"
    assert isinstance(answer.choices[0].message.content, str)

    # And all three are ordinary jobs in /v1/jobs
    jobs = httpx.get(f"{prod_stack.url}/v1/jobs", headers={"Authorization": f"Bearer {new_key}"}, timeout=30)
    assert sorted(j["kind"] for j in jobs.json()["data"]) == ["edit", "generate", "understand"]


@pytest.mark.system
def test_chat_with_an_upload_reference(prod_stack: Stack, new_key: str) -> None:
    headers = {"Authorization": f"Bearer {new_key}"}
    ticket = httpx.post(f"{prod_stack.url}/v1/uploads", json={}, headers=headers, timeout=30).json()
    url = ticket["url"] if ticket["url"].startswith("http") else prod_stack.url + ticket["url"]
    put = httpx.put(url, content=png_bytes(64, 64), headers={**ticket["headers"],
                    **(headers if url.startswith(prod_stack.url) else {})}, timeout=30)
    assert put.status_code < 300, put.text
    answer = openai_client(prod_stack, new_key).chat.completions.create(
        model="unipic", max_tokens=2, extra_body={"size": 64},
        messages=[{"role": "user", "content": [{"type": "text", "text": "what is this?"},
                  {"type": "image_url", "image_url": {"url": f"upload://{ticket['upload_id']}"}}]}])
    assert answer.object == "chat.completion" and answer.choices[0].finish_reason == "stop"


def test_errors_use_openai_shape(client: Any, auth: dict[str, str]) -> None:
    # no key: OpenAI's authentication error
    r = client.post("/v1/images/generations", json={"prompt": "x"})
    assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"
    # a size that is not WxH, and one that the server does not allow: invalid_request_error naming `size`
    for size in ("big", "999x999"):
        r = client.post("/v1/images/generations", json={"prompt": "x", "size": size}, headers=auth)
        err = r.json()["error"]
        assert r.status_code == 400 and err["type"] == "invalid_request_error" and err["param"] == "size", r.text
    # streaming and remote image URLs are refused with a reason
    body = {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "https://x/y.png"}}]}]}
    r = client.post("/v1/chat/completions", json=body, headers=auth)
    assert r.status_code == 400 and "data: URL" in r.json()["error"]["message"]
    r = client.post("/v1/chat/completions", json={**body, "stream": True}, headers=auth)
    assert r.status_code == 400 and r.json()["error"]["param"] == "stream"
    # other routes keep our own shape
    r = client.post("/v1/jobs", json=generate_body(width=999, height=999), headers=auth)
    assert r.json()["error"]["code"] == "validation_error"
