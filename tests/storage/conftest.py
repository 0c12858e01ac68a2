"""Fixtures for storage tests: the same stores on Postgres and on embedded SQLite (`backend` param).

Storage tests sweep, expire and requeue jobs table-wide, so on Postgres they use a schema of their own
(`<session schema>_st`), never the session schema other packages' tests (and their workers) share."""

from __future__ import annotations

import secrets
from typing import Any

import pytest

from storage.batches.store import BatchStore
from storage.db import make_engine, make_session_factory
from storage.jobs.store import JobStore
from tests.support.storage import Stores, add_owner


@pytest.fixture(scope="session")
def storage_settings(settings: Any, pg_url: str) -> Any:
    import psycopg

    from storage.migrate import upgrade

    private = settings.model_copy(update={"db_schema": settings.db_schema + "_st"})
    upgrade(private)
    yield private
    with psycopg.connect(pg_url.replace("+psycopg", ""), autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{private.db_schema}" CASCADE')


@pytest.fixture(scope="session")
def storage_sessions(storage_settings: Any) -> Any:
    engine = make_engine(storage_settings)
    yield make_session_factory(engine)
    engine.dispose()


@pytest.fixture(scope="session")
def storage_jobs(storage_sessions: Any) -> JobStore:
    return JobStore(storage_sessions)


@pytest.fixture(scope="session")
def sqlite_sessions(tmp_path_factory: pytest.TempPathFactory) -> Any:
    from storage.migrate import upgrade
    from storage.settings import load_settings

    settings = load_settings(data_dir=tmp_path_factory.mktemp("sqlite-data"))
    upgrade(settings)
    engine = make_engine(settings)
    yield make_session_factory(engine)
    engine.dispose()


@pytest.fixture(params=["postgres", "sqlite"])
def stores(request: pytest.FixtureRequest) -> Stores:
    if request.param == "postgres":
        sessions = request.getfixturevalue("storage_sessions")
    else:
        sessions = request.getfixturevalue("sqlite_sessions")
    return Stores(request.param, sessions, JobStore(sessions), BatchStore(sessions), add_owner(sessions))


@pytest.fixture
def compat() -> str:
    """A compat key unique to the test, so claims never see other tests' jobs."""
    return f"generate:256:8:3.0:{secrets.token_hex(4)}"
