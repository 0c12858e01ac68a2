"""Fixtures of the status-page tests: the same shared embedded stack as the CLI tests."""

from __future__ import annotations

import pytest

from tests.support.stack import SharedStack, Stack


@pytest.fixture
def stack(request: pytest.FixtureRequest) -> Stack:
    """The running embedded stack (started once per session, restarted if a test stopped it)."""
    return SharedStack.get(request.config)
