"""Database engines and sessions, built from settings (never at import).

SQLite (the embedded default) gets WAL, a busy timeout and enforced foreign keys on every connection, and
transactions that start with `BEGIN IMMEDIATE` when asked for a write lock (see `write_session`). Postgres gets
`pool_pre_ping` and, when `settings.db_schema` is set, a `search_path` pinned to that schema so tests and
tenants can share one database. Code outside storage names the engine and session-factory types, the outage
exceptions and `ping` through this module and never imports sqlalchemy itself.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.engine import URL, Connection, make_url
from sqlalchemy.exc import DataError, DBAPIError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.orm import Session, sessionmaker

from storage.settings import Settings

log = logging.getLogger(__name__)

SQLITE_BUSY_TIMEOUT_MS = 30_000

# The types and exceptions code outside storage names, so it never imports sqlalchemy itself.
DatabaseEngine = Engine
SessionFactory = sessionmaker[Session]
DatabaseError = DBAPIError
"""Any error the database driver raised (`connection_lost` tells an outage from a bad statement)."""
DatabaseValueError = DataError
"""The database refused a value (out of range, invalid text): a `DatabaseError`."""
DATABASE_UNAVAILABLE: tuple[type[Exception], ...] = (OperationalError, PoolTimeout)
"""The database cannot be reached: connection refused or dropped, or no pooled connection came in time."""


def normalize_url(url: str) -> str:
    """Use psycopg 3 for plain `postgresql://` URLs (the driver we ship)."""
    if url.startswith(("postgresql://", "postgres://")):
        return "postgresql+psycopg://" + url.split("://", 1)[1]
    return url


def make_engine(settings: Settings, **kwargs: Any) -> Engine:
    """An engine for `settings.database_url`, configured per backend."""
    url = make_url(normalize_url(settings.database_url))
    if url.get_backend_name() == "sqlite":
        return _sqlite_engine(url, **kwargs)
    return _postgres_engine(url, settings.db_schema, **kwargs)


def _sqlite_engine(url: URL, **kwargs: Any) -> Engine:
    if url.database and url.database != ":memory:":
        Path(url.database).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000}, **kwargs)

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # let SQLAlchemy emit BEGIN itself so BEGIN IMMEDIATE can be chosen per transaction
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        conn.exec_driver_sql(conn.get_execution_options().get("sqlite_begin", "BEGIN"))

    return engine


def _postgres_engine(url: URL, schema: str, **kwargs: Any) -> Engine:
    kwargs.setdefault("pool_pre_ping", True)
    if "poolclass" not in kwargs:
        kwargs.setdefault("pool_size", 5)
        kwargs.setdefault("max_overflow", 20)
    engine = create_engine(url, **kwargs)
    if schema:
        if not schema.replace("_", "").isalnum():
            raise ValueError(f"UNIPIC_DB_SCHEMA: not a plain identifier: {schema!r}")

        @event.listens_for(engine, "connect")
        def _on_connect(dbapi_conn: Any, _record: Any) -> None:
            cur = dbapi_conn.cursor()
            cur.execute(f'SET search_path TO "{schema}"')
            cur.close()
            dbapi_conn.commit()

    return engine


def is_sqlite(engine: Engine) -> bool:
    """True for the embedded SQLite backend."""
    return engine.dialect.name == "sqlite"


def ping(engine: Engine) -> None:
    """Run `SELECT 1`; raises (one of `DATABASE_UNAVAILABLE`, typically) when the database does not answer."""
    with engine.connect() as conn:
        conn.execute(text("SELECT 1"))


def connection_lost(exc: DatabaseError) -> bool:
    """True when the driver error means the connection is gone (the database went away mid-statement)."""
    return bool(exc.connection_invalidated)


def make_session_factory(engine: Engine) -> sessionmaker[Session]:
    """Sessions that keep loaded attributes after commit (records are returned to callers)."""
    return sessionmaker(bind=engine, expire_on_commit=False)


DEADLOCK_SQLSTATE = "40P01"
DEADLOCK_ATTEMPTS = 3
P = ParamSpec("P")
R = TypeVar("R")


def retry_deadlocks(write: Callable[P, R]) -> Callable[P, R]:
    """Run `write` (one transaction of its own) again when Postgres aborted it as a deadlock victim: nothing of
    it was committed, and a fresh transaction holds none of the locks the cycle was made of. Up to
    DEADLOCK_ATTEMPTS runs; any other error, or the last deadlock, is raised."""

    @functools.wraps(write)
    def run(*args: P.args, **kwargs: P.kwargs) -> R:
        for attempt in range(1, DEADLOCK_ATTEMPTS):
            try:
                return write(*args, **kwargs)
            except OperationalError as exc:
                if getattr(exc.orig, "sqlstate", None) != DEADLOCK_SQLSTATE:
                    raise
                log.info("%s was a deadlock victim (attempt %d); running it again", write.__qualname__, attempt)
        return write(*args, **kwargs)

    return run


@contextmanager
def write_session(factory: sessionmaker[Session]) -> Iterator[Session]:
    """A session whose transaction takes SQLite's write lock at BEGIN (no-op on Postgres); commits on success."""
    with factory() as session, session.begin():
        if is_sqlite(session.get_bind()):  # type: ignore[arg-type]
            session.connection(execution_options={"sqlite_begin": "BEGIN IMMEDIATE"})
        yield session


def create_schema_if_needed(engine: Engine, schema: str = "") -> None:
    """Create the schema (Postgres) and all tables directly. For tests and throwaway setups; prod uses Alembic."""
    from storage.tables import metadata

    if schema and not is_sqlite(engine):
        with engine.begin() as conn:
            conn.execute(text(f'CREATE SCHEMA IF NOT EXISTS "{schema}"'))
    metadata.create_all(engine)


create_all_for_tests = create_schema_if_needed
