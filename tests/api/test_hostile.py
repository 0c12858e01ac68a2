"""Hostile input never becomes a 500 or hurts another tenant, and Postgres and SQLite answer it alike (issue 14).

Every test runs on both backends: the session's Postgres app (`client`) and an embedded app (SQLite file, local
objects, SQLite broker). A refused request leaves nothing behind: the key still has no job.
"""

from __future__ import annotations

import json
import threading
from concurrent.futures import Future
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import update

from api.intake.json_limits import MAX_DEPTH
from api.intake.writer import JobIntake
from storage.tables import Job
from tests.api.backends import Backend, backend_fixture, embedded_client_fixture  # noqa: F401 - fixtures
from tests.support.api import generate_body


def nested(depth: int) -> Any:
    value: Any = "leaf"
    for _ in range(depth):
        value = {"a": value}
    return value


def raw(body: str) -> bytes:
    return body.encode()


BASE = '{"kind":"generate","prompt":"a fox","width":256,"steps":4'
BAD_LITERALS = {
    "nan": BASE + ',"metadata":{"a":NaN}}',
    "infinity": BASE + ',"metadata":{"a":Infinity}}',
    "minus_infinity": BASE + ',"metadata":{"a":-Infinity}}',
    "overflow_float": BASE + ',"metadata":{"a":1e400}}',
    "huge_int": BASE + ',"metadata":{"a":' + "9" * 5000 + "}}",
}
BAD_VALUES = {
    "nul_prompt": '{"kind":"generate","prompt":"poison\\u0000","width":256}',
    "nul_negative": BASE + ',"negative_prompt":"x\\u0000"}',
    "nul_instruction": '{"kind":"edit","instruction":"x\\u0000"}',
    "nul_question": '{"kind":"understand","question":"x\\u0000"}',
    "nul_custom_id": BASE + ',"custom_id":"c\\u0000"}',
    "nul_metadata_value": BASE + ',"metadata":{"a":"\\u0000"}}',
    "nul_metadata_key": BASE + ',"metadata":{"\\u0000":1}}',
    "lone_surrogate": BASE + ',"metadata":{"a":"\\ud800"}}',
    "surrogate_prompt": '{"kind":"generate","prompt":"\\udfff","width":256}',
    "int_past_64_bits": BASE + ',"metadata":{"a":' + str(2**64) + "}}",
    "deep_nesting": BASE + ',"metadata":' + json.dumps(nested(300)) + "}",
}


def assert_error(r: Any, status: int, code: str) -> None:
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error"} and body["error"]["code"] == code, body
    assert isinstance(body["error"]["message"], str)


def no_jobs(client: TestClient, headers: dict[str, str]) -> bool:
    r = client.get("/v1/jobs", headers=headers)
    assert r.status_code == 200, r.text
    return r.json()["data"] == []


@pytest.mark.parametrize("name", sorted(BAD_LITERALS))
def test_non_json_numbers_are_400_invalid_json(backend: Backend, name: str) -> None:
    client, new_key = backend
    headers = {**new_key(), "Content-Type": "application/json"}
    assert_error(client.post("/v1/jobs", content=raw(BAD_LITERALS[name]), headers=headers), 400, "invalid_json")
    assert no_jobs(client, headers)


@pytest.mark.parametrize("name", sorted(BAD_VALUES))
def test_values_a_database_would_refuse_are_422_invalid_value(backend: Backend, name: str) -> None:
    client, new_key = backend
    headers = {**new_key(), "Content-Type": "application/json"}
    assert_error(client.post("/v1/jobs", content=raw(BAD_VALUES[name]), headers=headers), 422, "invalid_value")
    assert no_jobs(client, headers)


def test_nesting_up_to_the_limit_is_accepted(backend: Backend) -> None:
    client, new_key = backend
    headers = new_key()
    ok = client.post("/v1/jobs", json=generate_body(metadata=nested(MAX_DEPTH - 2)), headers=headers)
    assert ok.status_code == 202, ok.text
    too_deep = client.post("/v1/jobs", json=generate_body(metadata=nested(MAX_DEPTH)), headers=headers)
    assert_error(too_deep, 422, "invalid_value")
    assert too_deep.json()["error"]["field"].startswith("metadata.a")


@pytest.mark.parametrize("field,value", [("steps", True), ("width", "256"), ("num_images", 1.0),
                                         ("seed", "7"), ("guidance_scale", "3"), ("priority", False)])
def test_types_are_strict(backend: Backend, field: str, value: Any) -> None:
    client, new_key = backend
    headers = new_key()
    r = client.post("/v1/jobs", json=generate_body(**{field: value}), headers=headers)
    assert_error(r, 422, "validation_error")
    assert r.json()["error"]["field"] == field
    assert no_jobs(client, headers)


def test_multipart_numbers_are_read_as_numbers_and_bad_metadata_is_refused(backend: Backend) -> None:
    client, new_key = backend
    headers = new_key()
    fields = {"kind": "generate", "prompt": "a fox", "width": "256", "steps": "4", "guidance_scale": "2.5"}
    r = client.post("/v1/jobs", data=fields, files=[("request", (None, "{}"))], headers=headers)
    assert r.status_code == 202, r.text
    assert r.json()["params"]["steps"] == 4 and r.json()["params"]["guidance_scale"] == 2.5
    bad = client.post("/v1/jobs", data={**fields, "metadata": '{"a":NaN}'},
                      files=[("request", (None, "{}"))], headers=headers)
    assert_error(bad, 400, "invalid_json")
    nul = client.post("/v1/jobs", data={**fields, "prompt": "x\x00"}, files=[("request", (None, "{}"))],
                      headers=headers)
    assert_error(nul, 422, "invalid_value")


def test_batch_lines_are_checked_and_name_their_line(backend: Backend) -> None:
    client, new_key = backend
    headers = {**new_key(), "Content-Type": "application/x-ndjson"}
    good = json.dumps(generate_body())
    for bad in ('{"kind":"generate","prompt":"x\\u0000","width":256}',
                json.dumps(generate_body(metadata=nested(300)))):
        r = client.post("/v1/batches", content=f"{good}\n{bad}\n".encode(), headers=headers)
        assert_error(r, 422, "invalid_value")
        assert r.json()["error"]["line"] == 2
    nan_line = client.post("/v1/batches", content=f"{good}\n{BAD_LITERALS['nan']}\n".encode(), headers=headers)
    assert_error(nan_line, 400, "invalid_json")
    options = client.post("/v1/batches", json={"requests": [generate_body()], "metadata": nested(300)},
                          headers=new_key())
    assert_error(options, 422, "invalid_value")
    assert client.get("/v1/batches", headers=headers).json()["data"] == []
    assert no_jobs(client, headers)


def test_stored_values_that_cannot_be_shown_never_fail_a_page(backend: Backend) -> None:
    client, new_key = backend
    headers = new_key()
    # Given a job whose stored metadata is deeper than anything can render (written before the checks existed)
    job = client.post("/v1/jobs", json=generate_body(metadata={"ok": 1}), headers=headers).json()
    services = client.app.state.services  # type: ignore[attr-defined]
    with services.jobs.sessions.begin() as s:
        s.execute(update(Job).where(Job.id == job["id"]).values(metadata_=nested(300)))
    # Then its key's list, the job itself and the status page still answer, showing no metadata
    listed = client.get("/v1/jobs", headers=headers)
    assert listed.status_code == 200, listed.text
    assert listed.json()["data"][0]["metadata"] is None
    assert client.get(f"/v1/jobs/{job['id']}", headers=headers).json()["metadata"] is None
    token = headers["Authorization"].removeprefix("Bearer ")
    client.get(f"/ui?key={token}")
    page = client.get("/ui")
    assert page.status_code == 200 and job["id"] in page.text
    client.get("/ui/logout")


def test_one_tenants_bad_value_never_fails_another_tenants_jobs(backend: Backend) -> None:
    client, new_key = backend
    good_key, bad_key = new_key(), new_key()
    answers: dict[str, list[int]] = {"good": [], "bad": []}
    lock = threading.Lock()
    start = threading.Barrier(8)

    def submit(who: str, headers: dict[str, str], body: str, n: int) -> None:
        start.wait()
        for _ in range(n):
            r = client.post("/v1/jobs", content=body.encode(), headers={**headers, "Content-Type": "application/json"})
            with lock:
                answers[who].append(r.status_code)

    good = json.dumps(generate_body())
    threads = [threading.Thread(target=submit, args=("good", good_key, good, 8)) for _ in range(4)]
    threads += [threading.Thread(target=submit, args=("bad", bad_key, BAD_VALUES["nul_prompt"], 8))
                for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert answers["good"] == [202] * 32
    assert answers["bad"] == [422] * 32


def test_a_group_insert_the_database_refuses_is_retried_row_by_row(backend: Backend) -> None:
    """The intake's fallback on its own: a row no validation caught fails alone, its group-mates are stored."""
    client, _ = backend
    services = client.app.state.services  # type: ignore[attr-defined]
    from tests.support.storage import add_owner, job

    owner = add_owner(services.jobs.sessions)
    intake = JobIntake(services.jobs, services.enqueuer)
    # the poisoned row reuses a stored job's id: both databases refuse the whole group insert
    first = job(owner, custom_id="first")
    stored = services.jobs.create_many([first])[1][0]
    poisoned = job(owner, id=stored.id)
    group = [(job(owner), Future()), (poisoned, Future()), (job(owner), Future())]
    intake._write_group(group)  # the fallback path, driven directly
    assert group[0][1].result().status == "queued"
    assert group[2][1].result().status == "queued"
    assert group[1][1].exception() is not None


def test_the_active_job_quota_is_reserved_atomically(backend: Backend) -> None:
    client, new_key = backend
    headers = {**new_key(max_active_jobs=5), "Content-Type": "application/json"}
    body = json.dumps(generate_body()).encode()
    statuses: list[int] = []
    codes: list[str] = []
    lock = threading.Lock()
    start = threading.Barrier(20)

    def submit() -> None:
        start.wait()
        r = client.post("/v1/jobs", content=body, headers=headers)
        with lock:
            statuses.append(r.status_code)
            if r.status_code != 202:
                codes.append(r.json()["error"]["code"])

    threads = [threading.Thread(target=submit) for _ in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert statuses.count(202) == 5, statuses
    assert statuses.count(429) == 15 and set(codes) == {"quota_exceeded"}
    listed = client.get("/v1/jobs", headers=headers).json()["data"]
    assert len(listed) == 5


def test_a_batch_over_the_quota_is_refused_whole(backend: Backend) -> None:
    client, new_key = backend
    headers = new_key(max_active_jobs=5)
    r = client.post("/v1/batches", json=[generate_body() for _ in range(6)], headers=headers)
    assert_error(r, 429, "quota_exceeded")
    assert "Retry-After" in r.headers
    assert no_jobs(client, headers)


def test_16_bit_grey_images_are_scaled_not_clipped(backend: Backend) -> None:
    import base64
    import io

    import numpy as np
    from PIL import Image

    client, new_key = backend
    gradient = (np.arange(256, dtype=np.uint16)[None, :].repeat(4, axis=0) * 257).astype(np.uint16)
    out = io.BytesIO()
    Image.fromarray(gradient).save(out, format="PNG")
    assert Image.open(io.BytesIO(out.getvalue())).mode.startswith("I")
    image = "data:image/png;base64," + base64.b64encode(out.getvalue()).decode()
    r = client.post("/v1/jobs", json={"kind": "edit", "instruction": "x", "width": 256, "image": image},
                    headers=new_key())
    assert r.status_code == 202, r.text
    services = client.app.state.services  # type: ignore[attr-defined]
    stored = services.jobs.get(r.json()["id"]).input_key
    rgb = Image.open(io.BytesIO(services.objects.get(stored)))
    assert [rgb.getpixel((x, 0))[0] for x in (0, 1, 128, 254, 255)] == [0, 1, 128, 254, 255]


def test_long_prompts_are_refused_by_length_before_tokenizing(backend: Backend) -> None:
    client, new_key = backend
    services = client.app.state.services  # type: ignore[attr-defined]
    counter = services.preparer.counter
    tokenized: list[int] = []
    original = counter.too_long

    def observed(texts: list[str]) -> list[bool]:  # observe, not replace: what reaches the tokenizer
        tokenized.append(len(texts))
        return original(texts)

    counter.too_long = observed
    try:
        long_prompt = "word " * 4000  # 20,000 characters: over 8 characters per allowed token
        items = [generate_body(prompt=long_prompt) for _ in range(200)]
        r = client.post("/v1/batches", json=items, headers=new_key())
    finally:
        del counter.too_long
    assert_error(r, 422, "prompt_too_long")
    assert r.json()["error"]["line"] == 1
    assert sum(tokenized) == 0


def test_first_too_long_stops_at_the_first_bad_text() -> None:
    from api.intake.tokens import CHARS_PER_TOKEN_CAP, PromptCounter

    counter = PromptCounter(max_tokens=10)
    cap = CHARS_PER_TOKEN_CAP * 10
    assert counter.first_too_long(["short", "also short"]) is None
    many_tokens = " ".join("abcdefghijklmnop")  # 16 words: over 10 tokens, well under the character cap
    assert counter.first_too_long(["short", many_tokens, "y" * (cap + 1)]) == 1  # over in tokens
    assert counter.first_too_long(["short", "y" * (cap + 1), many_tokens]) == 1  # over the character cap
    assert counter.first_too_long(["a"] * 100 + ["y" * (cap + 1)]) == 100


def test_unknown_query_parameters_and_bad_bodies_answer_401_to_anonymous_callers(backend: Backend) -> None:
    client, new_key = backend
    assert_error(client.get("/v1/jobs?stauts=queued"), 401, "unauthorized")
    assert_error(client.get("/v1/jobs?stauts=queued", headers={"Authorization": "Bearer upk_nope"}),
                 401, "unauthorized")
    assert_error(client.get("/v1/jobs?stauts=queued", headers=new_key()), 422, "validation_error")
    assert_error(client.post("/v1/jobs", content=b"{nope", headers={"Content-Type": "application/json"}),
                 401, "unauthorized")
    assert_error(client.post("/v1/batches", content=b"[nope", headers={"Content-Type": "application/json"}),
                 401, "unauthorized")
    assert client.get("/healthz?x=1").status_code == 422  # public routes still refuse unknown parameters


def test_metrics_token_and_private_status_page(tmp_path_factory: pytest.TempPathFactory) -> None:
    from api.app import create_app
    from storage.fleet.registry import WorkerRegistry
    from storage.migrate import upgrade
    from storage.settings import load_settings

    settings = load_settings(data_dir=tmp_path_factory.mktemp("private") / "data", model="tiny",
                             metrics_token="m-secret", ui_public=False)
    upgrade(settings)
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        services = client.app.state.services  # type: ignore[attr-defined]
        WorkerRegistry(services.jobs.sessions).register("secret-worker-7", "host-7", 4242)
        _, owner = services.keys.create("queued")
        r = client.post("/v1/jobs", json=generate_body(), headers={"Authorization": f"Bearer {owner}"})
        assert r.status_code == 202, r.text
        queue = services.jobs.get(r.json()["id"]).queue  # queued, and no worker serves its queue
        assert_error(client.get("/metrics"), 401, "unauthorized")
        assert_error(client.get("/metrics", headers={"Authorization": "Bearer wrong"}), 401, "unauthorized")
        assert client.get("/metrics", headers={"Authorization": "Bearer m-secret"}).status_code == 200
        page = client.get("/ui")
        assert page.status_code == 200 and "secret-worker-7" not in page.text
        assert queue not in page.text and "unserved" not in page.text
        _, plaintext = services.keys.create("ui")
        client.get(f"/ui?key={plaintext}")
        assert "secret-worker-7" in client.get("/ui").text


def test_the_safe_webhook_host_memory_expires_and_is_per_key() -> None:
    from egress.verdicts import VerdictCache

    now = [0.0]
    cache = VerdictCache(ttl_seconds=60, max_entries=2, clock=lambda: now[0])
    cache.remember("key-a", "https://hooks.example/x")
    assert cache.admitted("key-a", "https://hooks.example/x")
    assert not cache.admitted("key-b", "https://hooks.example/x")  # one key's check never vouches for another
    now[0] = 61.0
    assert not cache.admitted("key-a", "https://hooks.example/x")  # expired: the guard runs again
    for i in range(3):
        cache.remember("key-a", f"https://h{i}.example/")
    assert not cache.admitted("key-a", "https://h0.example/") and cache.admitted("key-a", "https://h2.example/")


OPENAI_FORM_ERRORS = {"n_abc": ({"n": "abc"}, "n"), "n_9": ({"n": "9"}, "n"), "no_prompt": ({"prompt": None}, "prompt"),
                      "response_format_xml": ({"response_format": "xml"}, "response_format"),
                      "seed_abc": ({"seed": "abc"}, "seed"), "model": ({"model": "dall-e-3"}, "model")}


@pytest.mark.parametrize("name", sorted(OPENAI_FORM_ERRORS))
def test_openai_edit_form_fields_are_checked_in_openais_shape(backend: Backend, name: str) -> None:
    from tests.support.api import png_bytes

    client, new_key = backend
    headers = new_key()
    change, param = OPENAI_FORM_ERRORS[name]
    fields = {k: v for k, v in {"prompt": "make it blue", "n": "1", **change}.items() if v is not None}
    r = client.post("/v1/images/edits", data=fields, files={"image": ("in.png", png_bytes(16, 16), "image/png")},
                    headers=headers)
    error = r.json()["error"]
    assert r.status_code == (404 if name == "model" else 400), r.text
    assert error["type"] == "invalid_request_error" and error["param"] == param and error["message"], error
    assert no_jobs(client, headers)


def test_openai_and_gateway_routes_answer_401_before_reading_the_body(backend: Backend) -> None:
    client, _ = backend
    json_type = {"Content-Type": "application/json"}
    for path in ("/v1/chat/completions", "/v1/images/generations"):
        for headers in (json_type, {**json_type, "Authorization": "Bearer upk_nope"}):
            r = client.post(path, content=b"{nope", headers=headers)
            assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error", r.text
    # multipart with bad fields, anonymous: 401 too
    r = client.post("/v1/images/edits", data={"n": "abc"}, files={"image": ("x.png", b"x", "image/png")})
    assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error", r.text
    # the worker gateway: malformed JSON and a body of the wrong shape, no worker token
    for body in (b"{nope", b"[1, 2]"):
        for headers in (json_type, {**json_type, "Authorization": "Bearer wk_nope"}):
            assert_error(client.post("/v1/worker/claim", content=body, headers=headers), 401, "unauthorized")
    # webhooks (a declared body on a native route)
    assert_error(client.put("/v1/webhook-endpoints/default", content=b"{nope", headers=json_type), 401,
                 "unauthorized")


def test_openai_paths_answer_every_error_in_openais_shape(backend: Backend) -> None:
    client, new_key = backend
    headers = new_key()
    # a declared oversize body: 413 in OpenAI's shape (our own routes keep ours)
    big = {**headers, "Content-Type": "application/json", "Content-Length": str(10**12)}
    r = client.post("/v1/chat/completions", content=b"{}", headers=big)
    assert r.status_code == 413 and r.json()["error"]["type"] == "invalid_request_error", r.text
    assert r.json()["error"]["code"] == "payload_too_large"
    assert_error(client.post("/v1/jobs", content=b"{}", headers=big), 413, "payload_too_large")
    # routes of OpenAI's namespace we do not serve, and wrong methods: OpenAI's shape
    for method, path in (("POST", "/v1/embeddings"), ("POST", "/v1/images/variations"), ("GET", "/v1/files"),
                         ("POST", "/v1/completions"), ("GET", "/v1/chat/completions")):
        r = client.request(method, path, headers=headers)
        assert r.status_code in (404, 405) and set(r.json()["error"]) == {"message", "type", "param", "code"}, r.text
    # malformed JSON with a key: 400 invalid_json in OpenAI's shape; a body of the wrong shape: 400 naming it
    r = client.post("/v1/chat/completions", content=b"{nope", headers={**headers, "Content-Type": "application/json"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_json", r.text
    r = client.post("/v1/chat/completions", json={"messages": []}, headers=headers)
    assert r.status_code == 400 and r.json()["error"]["param"] == "messages", r.text
    # unknown native routes keep our shape
    assert_error(client.get("/v1/nothing-here", headers=headers), 404, "not_found")
