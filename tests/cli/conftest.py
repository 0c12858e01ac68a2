"""Fixtures of the CLI tests: the shared `unipic up --model tiny` stack (see tests/support/stack.py)."""

from __future__ import annotations

from typing import Any

import pytest

from tests.support.jobs import cancel_leftover_jobs
from tests.support.stack import SharedStack, Stack

STOPS_STACK = "test_sigterm_stops_every_child_cleanly"


@pytest.fixture
def stack(request: pytest.FixtureRequest) -> Stack:
    """The running embedded stack (started once per session, restarted if a test stopped it)."""
    return SharedStack.get(request.config)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Run the test that stops the shared stack after every other user of it (tests/ui included)."""
    items.sort(key=lambda item: item.name == STOPS_STACK)  # stable: the rest keep their order


@pytest.fixture(scope="package", autouse=True)
def _no_leftover_jobs(session_factory: Any) -> None:
    """Given a shared schema with no queued work left by other packages' tests."""
    cancel_leftover_jobs(session_factory)
