"""Fixtures for the operations tests: an API app on the session's Postgres schema (driven in process).

The real-Prometheus test starts its own `unipic up` stack (tests/support/stack.py) and Prometheus process.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient


@pytest.fixture(scope="module")
def ops_client(migrated: Any) -> Iterator[TestClient]:
    from api.app import create_app

    with TestClient(create_app(migrated), raise_server_exceptions=False) as client:
        yield client
