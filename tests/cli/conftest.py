"""Fixtures of the CLI tests: the shared `unipic up --model tiny` stack (see tests/cli/stack.py)."""

from __future__ import annotations

import pytest

from tests.cli.stack import SharedStack, Stack


@pytest.fixture
def stack(request: pytest.FixtureRequest) -> Stack:
    """The running embedded stack (started once per session, restarted if a test stopped it)."""
    return SharedStack.get(request.config)
