"""Session fixtures shared by every test package: real Postgres, Redis and an S3 HTTP server.

Each session gets its own Postgres schema (`t_<random>` in database `test`), its own Redis db number and a
moto S3 server on a free port, all torn down at the end. A missing service is a failure, never a skip. The
schema is built by Alembic (`upgrade head`), so every run exercises the migrations. Tests sharing the session
schema isolate themselves by owner (`owner_id`) or by unique compat keys, never by wiping tables.

Also the stage guard: a test that uses a process-starting fixture must be marked `system` (the fast CI stage,
`-m "not system"`, starts no long-lived process). Helpers are in tests/support/, never here.
"""

from __future__ import annotations

import os
import secrets
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

# set before anything imports huggingface_hub or boto3; inherited by subprocesses the tests start
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["AWS_ACCESS_KEY_ID"] = "testing"
os.environ["AWS_SECRET_ACCESS_KEY"] = "testing"
os.environ["AWS_DEFAULT_REGION"] = "us-east-1"
for _name in [n for n in os.environ if n.startswith("UNIPIC_")]:
    del os.environ[_name]  # tests build their settings explicitly


def _pg_base_url() -> str:
    """TEST_PG_URL, else database `test` on 127.0.0.1 as `postgres`, else as the current user (trust auth)."""
    if os.environ.get("TEST_PG_URL"):
        return os.environ["TEST_PG_URL"]
    import getpass

    import psycopg

    for user in ("postgres", getpass.getuser()):
        try:
            psycopg.connect(f"postgresql://{user}@127.0.0.1:5432/test", connect_timeout=5).close()
        except psycopg.OperationalError:
            continue
        return f"postgresql+psycopg://{user}@127.0.0.1:5432/test"
    return "postgresql+psycopg://postgres@127.0.0.1:5432/test"  # pg_schema fails loudly with the reason


PG_BASE_URL = _pg_base_url()
# fixtures that start long-lived processes (model workers, the `unipic up` stack): their users are `system` tests
PROCESS_FIXTURES = frozenset({"start_worker", "module_worker", "stack", "prod_stack"})
STOPS_PRODUCTION_STACK = "test_up_with_postgres_redis_and_s3_urls"  # tests/cli/test_up_production.py
REDIS_BASE_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379")
TEST_BUCKET = "unipic-test"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Refuse to run a test that starts processes through a fixture but is not marked `system`; run the users of
    the production-path stack one after another."""
    unmarked = [item.nodeid for item in items if PROCESS_FIXTURES & set(getattr(item, "fixturenames", ()))
                and item.get_closest_marker("system") is None]
    if unmarked:
        raise pytest.UsageError("tests that start processes must be marked `system`:\n  " + "\n  ".join(unmarked))
    _group_production_stack_users(items)


def _group_production_stack_users(items: list[pytest.Item]) -> None:
    """The tests that use `prod_stack` (OpenAI routes, SDK, `unipic up` on the production path) run together where
    the first of them stands, so the stack starts once (it stops before any other test: production_stack.py); the
    one that stops it runs last of them. Every other test keeps its place and order."""
    users = [item for item in items if "prod_stack" in getattr(item, "fixturenames", ())]
    if not users:
        return
    first = items.index(users[0])
    chosen = {id(item) for item in users}
    rest = [item for item in items if id(item) not in chosen]
    users.sort(key=lambda item: item.name == STOPS_PRODUCTION_STACK)  # stable: the rest keep their order
    items[:] = rest[:first] + users + rest[first:]


def pytest_runtest_setup(item: pytest.Item) -> None:
    """The production-path stack lives across consecutive tests that use it, never under one that does not."""
    from tests.support.production_stack import stop_unless_used

    stop_unless_used(item)


@pytest.fixture(scope="session")
def pg_schema() -> Iterator[str]:
    """A fresh schema in database `test`, dropped at the end of the session."""
    import psycopg

    schema = f"t_{secrets.token_hex(6)}"
    dsn = PG_BASE_URL.replace("postgresql+psycopg://", "postgresql://")
    try:
        conn = psycopg.connect(dsn, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as exc:
        pytest.fail(f"Postgres is required at {dsn}: {exc}", pytrace=False)
    with conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
        yield schema
        conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


@pytest.fixture(scope="session")
def pg_url(pg_schema: str) -> str:
    """The Postgres URL of the test database (use together with `pg_schema`)."""
    return PG_BASE_URL


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """A Redis db held exclusively by this session (a lock key in db 0), flushed at start and end.

    The broker's queues live in this db: a db shared with another concurrent test session (whose workers would
    take our messages, or whose teardown would flush them) makes tests fail for reasons that are not ours.
    """
    import redis

    try:
        admin = redis.Redis.from_url(f"{REDIS_BASE_URL}/0", socket_connect_timeout=5)
        start = int(admin.incr("unipic:test:db-counter"))
    except redis.RedisError as exc:
        pytest.fail(f"Redis is required at {REDIS_BASE_URL}: {exc}", pytrace=False)
    token = f"{os.getpid()}-{time.time()}"
    for offset in range(15):
        db = 1 + (start + offset) % 15
        if admin.set(f"unipic:test:db-lock:{db}", token, nx=True, ex=3600):
            break
    else:
        pytest.fail("no free Redis db for this test session (all 15 locked)", pytrace=False)
    url = f"{REDIS_BASE_URL}/{db}"
    client = redis.Redis.from_url(url)
    client.flushdb()
    yield url
    client.flushdb()
    if admin.get(f"unipic:test:db-lock:{db}") == token.encode():
        admin.delete(f"unipic:test:db-lock:{db}")
    client.close()
    admin.close()


@pytest.fixture(scope="session")
def s3_server() -> Iterator[str]:
    """A moto S3 server over HTTP on a free port, with the test bucket; yields its endpoint URL."""
    import boto3
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(Bucket=TEST_BUCKET)
    yield endpoint
    server.stop()


@pytest.fixture(scope="session")
def settings(pg_url: str, pg_schema: str, redis_url: str, s3_server: str,
             tmp_path_factory: pytest.TempPathFactory) -> Any:
    """Settings pointing at this session's Postgres schema, Redis db and S3 server."""
    from storage.settings import load_settings

    return load_settings(
        data_dir=tmp_path_factory.mktemp("unipic-data"), database_url=pg_url, db_schema=pg_schema,
        redis_url=redis_url, broker_url=redis_url, storage_url=f"s3://{TEST_BUCKET}/objects",
        s3_endpoint_url=s3_server, model="tiny", model_dtype="float32",
        webhook_allowlist=["127.0.0.0/8"], webhook_allow_http=True, api_url="http://127.0.0.1:8000",
    )


@pytest.fixture(scope="session")
def settings_env(settings: Any) -> dict[str, str]:
    """`settings` as UNIPIC_* environment variables, for subprocesses (workers, API servers)."""
    env = dict(os.environ)
    for name, value in settings.model_dump().items():
        if isinstance(value, list):
            value = ",".join(str(v) for v in value)
        elif isinstance(value, bool):
            value = "true" if value else "false"
        env[f"UNIPIC_{name.upper()}"] = str(value)
    return env


@pytest.fixture(scope="session")
def migrated(settings: Any) -> Any:
    """The session schema brought to Alembic head (migrations are exercised, not `create_all`)."""
    from storage.migrate import upgrade

    upgrade(settings)
    return settings


@pytest.fixture(scope="session")
def engine(migrated: Any) -> Iterator[Any]:
    from storage.db import make_engine

    eng = make_engine(migrated)
    yield eng
    eng.dispose()


@pytest.fixture(scope="session")
def session_factory(engine: Any) -> Any:
    from storage.db import make_session_factory

    return make_session_factory(engine)


@pytest.fixture(scope="session")
def job_store(session_factory: Any) -> Any:
    from storage.jobs.store import JobStore

    return JobStore(session_factory)


@pytest.fixture(scope="session")
def publishing_store(engine: Any, settings: Any) -> Iterator[Any]:
    """A store whose commits publish job events, queue wake-ups and cancel hints on Redis, as the API's does
    (`job_store` publishes nothing): a running loop hears a job queued, or a cancel asked, through it."""
    from storage.db import make_session_factory
    from storage.jobs.events import RedisPublisher, attach
    from storage.jobs.store import JobStore

    sessions = make_session_factory(engine)
    publisher = RedisPublisher(settings.redis_url)
    attach(sessions, publisher)
    yield JobStore(sessions)
    publisher.close()


@pytest.fixture(scope="session")
def object_store(settings: Any) -> Any:
    """The S3 object store on the moto server."""
    from storage.objects.s3 import S3ObjectStore

    return S3ObjectStore.from_settings(settings, create_bucket=True)


@pytest.fixture
def owner_id(session_factory: Any) -> str:
    """A fresh API key row: its id owns the jobs a test creates, isolating tests that share the schema."""
    from storage.jobs.ids import new_id
    from storage.tables import ApiKey

    key_id = new_id()
    with session_factory.begin() as s:
        s.add(ApiKey(id=key_id, name="test", key_prefix="upk_test", key_hash=secrets.token_hex(32),
                     webhook_secret="whsec_" + secrets.token_hex(24)))
    return key_id


@pytest.fixture
def embedded_settings(tmp_path: Path) -> Any:
    """Embedded-mode settings (SQLite file, local objects, SQLite broker) in a fresh directory, migrated."""
    from storage.migrate import upgrade
    from storage.settings import load_settings

    s = load_settings(data_dir=tmp_path / "data", model="tiny", model_dtype="float32")
    upgrade(s)
    return s


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny UniPic checkpoint in the official layout, written once per session.

    Written by `model.testing.write_tiny_checkpoint` in a child process, so the test process never computes
    with torch before it forks workers."""
    import subprocess
    import sys

    directory = tmp_path_factory.mktemp("ckpt")
    code = "import sys; from model.testing import write_tiny_checkpoint; print(write_tiny_checkpoint(sys.argv[1]))"
    repo = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(repo), os.environ.get("PYTHONPATH")]))}
    result = subprocess.run([sys.executable, "-c", code, str(directory)], check=False, capture_output=True,
                            text=True, env=env, timeout=600)
    if result.returncode != 0:
        pytest.fail(f"writing the tiny checkpoint failed:\n{result.stderr[-4000:]}", pytrace=False)
    return Path(result.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="session")
def tiny_engine(tiny_checkpoint: Path) -> Any:
    """The tiny checkpoint loaded once per session, for in-process runs (worker and gateway tests)."""
    from model.inference import load_engine

    return load_engine(str(tiny_checkpoint), device="cpu", dtype="float32")
