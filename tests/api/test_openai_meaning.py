"""The OpenAI-compatible routes mean what they are told (issue 27), driven by the official `openai` package in
process (its transport is the app's TestClient), with a thread playing the worker: `model` is checked against
`/v1/models`, chat `n` gives n choices, `usage` counts tokens, `output_format` reaches the job, and every
error reads as OpenAI's."""

from __future__ import annotations

import base64
import io
import threading
from collections.abc import Callable, Iterator
from typing import Any

import openai
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from tests.support.api import png_bytes
from tests.support.claims import claim_queue_of, lease_keys

DATA_URL = "data:image/png;base64," + base64.b64encode(png_bytes(16, 16)).decode()
ANSWERS = {0: "a red square", 1: "it is red"}


class PlayedWorker:
    """A thread that finishes every queued job of one owner: understand jobs with a fixed answer per seed,
    image jobs with images of the job's own `output_format`."""

    def __init__(self, services: Any, owner_id: str) -> None:
        self.services, self.owner_id = services, owner_id
        self.stop = threading.Event()
        self.formats: list[str] = []
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        while not self.stop.is_set():
            queued, _ = self.services.jobs.page(self.owner_id, status="queued")
            for job in queued:  # a wake-up per queued job; the policy picks which job each claim takes
                for claim in claim_queue_of(self.services.jobs, job.id):
                    self.finish(self.services.jobs.get(claim.job_id), claim)
            self.stop.wait(0.05)  # polling the jobs' state

    def finish(self, job: Any, claim: Any) -> None:
        params = job.params or {}
        if job.kind == "understand":
            self.services.jobs.complete(claim, [], ANSWERS[int(params.get("seed") or 0) % 2])
            return
        fmt = params.get("output_format", "png")
        self.formats.append(fmt)
        keys = lease_keys(claim, int(params.get("num_images", 1)), "jpg" if fmt == "jpeg" else fmt)
        for key in keys:
            out = io.BytesIO()
            Image.new("RGB", (8, 8), "red").save(out, format=fmt.upper())
            self.services.objects.put(key, out.getvalue(), content_type=f"image/{fmt}")
        self.services.jobs.complete(claim, keys, None)


@pytest.fixture
def played(client: TestClient, make_key: Callable[..., tuple[Any, dict[str, str]]]) -> Iterator[tuple[openai.OpenAI, PlayedWorker]]:
    record, headers = make_key()
    worker = PlayedWorker(client.app.state.services, record.id)  # type: ignore[attr-defined]
    worker.thread.start()
    key = headers["Authorization"].split(" ", 1)[1]
    yield openai.OpenAI(base_url="http://testserver/v1", api_key=key, http_client=client, max_retries=0), worker
    worker.stop.set()
    worker.thread.join(10)


def ask(client: openai.OpenAI, **extra: Any) -> Any:
    messages: Any = [{"role": "user", "content": [{"type": "text", "text": "What color is this square?"},
                                                  {"type": "image_url", "image_url": {"url": DATA_URL}}]}]
    return client.chat.completions.create(messages=messages, **{"model": "unipic", **extra})


def test_chat_n_gives_n_choices_with_real_usage(played: tuple[openai.OpenAI, PlayedWorker]) -> None:
    client, _ = played
    answer = ask(client, n=2, seed=0, max_tokens=8)
    assert [c.index for c in answer.choices] == [0, 1]
    assert [c.message.content for c in answer.choices] == [ANSWERS[0], ANSWERS[1]]
    assert answer.model == "unipic"
    usage = answer.usage
    assert usage is not None and usage.prompt_tokens > 0 and usage.completion_tokens > 0
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    # the counts are tokens, not bytes or words: "a red square" + "it is red" are 6 Qwen tokens
    assert usage.completion_tokens < len(ANSWERS[0]) + len(ANSWERS[1])


@pytest.mark.parametrize("fmt", ["png", "jpeg", "webp"])
def test_output_format_is_the_format_returned(played: tuple[openai.OpenAI, PlayedWorker], fmt: str) -> None:
    client, worker = played
    made = client.images.generate(prompt="a red fox", size="256x256", response_format="b64_json",
                                  output_format=fmt, extra_body={"steps": 2})  # type: ignore[arg-type]
    assert worker.formats == [fmt]
    with Image.open(io.BytesIO(base64.b64decode(made.data[0].b64_json or ""))) as image:
        assert image.format == fmt.upper()


def test_models_are_listed_and_checked(played: tuple[openai.OpenAI, PlayedWorker]) -> None:
    client, worker = played
    assert [m.id for m in client.models.list()][:2] == ["unipic-tiny", "unipic"]  # the default, by name and alias
    assert client.models.retrieve("unipic").id == "unipic"
    for call in (lambda: client.models.retrieve("dall-e-3"),
                 lambda: client.images.generate(prompt="x", model="dall-e-3"),
                 lambda: ask(client, model="nonsense-model")):
        with pytest.raises(openai.NotFoundError) as caught:
            call()
        assert caught.value.code == "model_not_found" and caught.value.param == "model"  # type: ignore[attr-defined]
    assert worker.formats == []


def test_the_openai_package_reads_every_error(client: TestClient, played: tuple[openai.OpenAI, PlayedWorker]) -> None:
    good, _ = played
    anonymous = openai.OpenAI(base_url="http://testserver/v1", api_key="upk_nope", http_client=client, max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        anonymous.models.list()
    with pytest.raises(openai.BadRequestError) as bad:
        good.images.edit(image=("in.png", png_bytes(16, 16), "image/png"), prompt="x", n=9)
    assert bad.value.param == "n"  # type: ignore[attr-defined]
    with pytest.raises(openai.BadRequestError) as bad:
        ask(good, n=9)
    assert bad.value.param == "n"  # type: ignore[attr-defined]
    with pytest.raises(openai.NotFoundError) as missing:
        good.embeddings.create(model="unipic", input="x")
    assert missing.value.code == "unknown_url"  # type: ignore[attr-defined]
    with pytest.raises(openai.APIStatusError) as too_big:
        good.chat.completions.create(model="unipic", messages=[{"role": "user", "content": "x" * (2 << 20)}])
    assert too_big.value.status_code == 413 and too_big.value.code == "payload_too_large"  # type: ignore[attr-defined]
