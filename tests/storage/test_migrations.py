"""Migrations: upgrade head on an empty database, no drift against storage.tables, downgrade base, again."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from pathlib import Path
from typing import Any

import psycopg
import pytest
from sqlalchemy import inspect

from storage import migrate
from storage.db import make_engine
from storage.settings import load_settings
from storage.tables import metadata

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def empty_pg_schema(pg_url: str) -> Any:
    schema = f"t_mig_{secrets.token_hex(4)}"
    yield schema
    with psycopg.connect(pg_url.replace("+psycopg", ""), autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def _tables(settings: Any) -> set[str]:
    engine = make_engine(settings)
    try:
        return set(inspect(engine).get_table_names())
    finally:
        engine.dispose()


def test_postgres_round_trip(pg_url: str, empty_pg_schema: str, tmp_path: Path) -> None:
    settings = load_settings(data_dir=tmp_path, database_url=pg_url, db_schema=empty_pg_schema)
    migrate.upgrade(settings)
    assert _tables(settings) == set(metadata.tables) | {"alembic_version"}
    migrate.check(settings)  # raises on drift between the migrations and storage.tables
    migrate.downgrade(settings, "base")
    assert _tables(settings) == {"alembic_version"}
    migrate.upgrade(settings)
    migrate.check(settings)


def test_sqlite_round_trip(tmp_path: Path) -> None:
    settings = load_settings(data_dir=tmp_path)
    migrate.upgrade(settings)
    migrate.check(settings)
    migrate.downgrade(settings, "base")
    assert _tables(settings) == {"alembic_version"}


def test_alembic_cli_from_repo_root(pg_url: str, empty_pg_schema: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # `alembic upgrade head|check|downgrade base` with the repository's alembic.ini and the UNIPIC_* variables
    from alembic.config import main as alembic_main

    monkeypatch.setenv("UNIPIC_DATABASE_URL", pg_url)
    monkeypatch.setenv("UNIPIC_DB_SCHEMA", empty_pg_schema)
    monkeypatch.chdir(REPO)
    settings = load_settings()
    alembic_main(["upgrade", "head"])
    assert "jobs" in _tables(settings)
    alembic_main(["check"])  # exits non-zero (SystemExit) on drift
    alembic_main(["downgrade", "base"])
    assert _tables(settings) == {"alembic_version"}


def test_migrate_works_from_any_directory(tmp_path: Path) -> None:
    code = "from storage.settings import load_settings; from storage.migrate import upgrade; " \
           f"upgrade(load_settings(data_dir={str(tmp_path)!r}))"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run([sys.executable, "-c", code], check=False, cwd=tmp_path, env=env, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    assert "jobs" in _tables(load_settings(data_dir=tmp_path))
