"""One set of limits, reported in the user's own words (issue 27): the deployment's steps and token limits are
the only ones (no second, static bound with its own message), a refused `size` is named `size`, and a body
without a `kind` says which kinds exist."""

from __future__ import annotations

from typing import Any

import pytest

from tests.support.api import generate_body


def refusal(client: Any, auth: dict[str, str], body: dict[str, Any]) -> dict[str, Any]:
    r = client.post("/v1/jobs", json=body, headers=auth)
    assert r.status_code == 422, r.text
    return r.json()["error"]  # type: ignore[no-any-return]


@pytest.mark.parametrize("steps", [200, 2000, 10**9])
def test_every_steps_value_over_the_limit_hears_the_same_limit(client: Any, auth: dict[str, str], steps: int) -> None:
    limit = client.app.state.services.settings.max_steps
    error = refusal(client, auth, {**generate_body(), "steps": steps})
    assert error["field"] == "steps" and error["message"] == f"steps must be at most {limit}"


@pytest.mark.parametrize("tokens", [5000, 100_000])
def test_every_token_count_over_the_limit_hears_the_same_limit(client: Any, auth: dict[str, str],
                                                               tokens: int) -> None:
    limit = client.app.state.services.settings.max_new_tokens_limit
    body = {"kind": "understand", "question": "what?", "image": {"upload_id": "x"}, "max_new_tokens": tokens}
    error = refusal(client, auth, body)
    assert error["field"] == "max_new_tokens" and error["message"] == f"max_new_tokens must be at most {limit}"


def test_a_refused_size_is_named_as_the_user_wrote_it(client: Any, auth: dict[str, str]) -> None:
    body = generate_body()
    body.pop("width", None)
    body.pop("height", None)
    assert refusal(client, auth, {**body, "size": 999})["field"] == "size"
    assert refusal(client, auth, {**body, "width": 999})["field"] == "width"


def test_a_body_without_kind_says_which_kinds_exist(client: Any, auth: dict[str, str]) -> None:
    error = refusal(client, auth, {"prompt": "a fox"})
    assert error["field"] == "kind" and "generate, edit, understand" in error["message"], error
    assert "discriminator" not in error["message"]
    error = refusal(client, auth, {"kind": "paint", "prompt": "a fox"})
    assert error["field"] == "kind" and "'paint'" in error["message"] and "understand" in error["message"], error
