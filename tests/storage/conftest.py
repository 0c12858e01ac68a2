"""Fixtures for storage tests: the same stores on Postgres and on embedded SQLite (`backend` param).

Storage tests sweep, expire and requeue jobs table-wide, so on Postgres they use a schema of their own
(`<session schema>_st`), never the session schema other packages' tests (and their workers) share."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Any

import pytest

from storage.batches import BatchStore
from storage.db import make_engine, make_session_factory
from storage.ids import new_id
from storage.jobs import JobStore
from storage.records import NewJob
from storage.tables import ApiKey


@dataclass
class Stores:
    backend: str
    sessions: Any
    jobs: JobStore
    batches: BatchStore
    owner_id: str

    def new_owner(self, default_webhook_url: str | None = None) -> str:
        return add_owner(self.sessions, default_webhook_url)


def add_owner(sessions: Any, default_webhook_url: str | None = None) -> str:
    key_id = new_id()
    with sessions.begin() as s:
        s.add(ApiKey(id=key_id, name="t", key_prefix="upk_t", key_hash=secrets.token_hex(32),
                     webhook_secret="whsec_x", default_webhook_url=default_webhook_url))
    return key_id


def job(owner_id: str, compat: str = "generate:256:8:3.0:constant", *, priority: int = 0, size: int = 256,
        num_images: int = 1, queue: str = "unipic.generate.s", **kw: Any) -> NewJob:
    params = {"prompt": "a cat", "width": size, "height": size, "num_images": num_images, "steps": 8}
    return NewJob(owner_id=owner_id, kind="generate", params=params, compat_key=compat,
                  queue=queue, priority=priority, seed=1, **kw)


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
