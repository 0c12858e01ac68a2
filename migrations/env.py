"""Alembic environment: the same settings (`UNIPIC_DATABASE_URL`, `UNIPIC_DB_SCHEMA`) and the same
`storage.tables` metadata as the service, so `alembic upgrade head` and `unipic migrate` agree.

`storage.migrate` passes a `Settings` object in `config.attributes["settings"]`; run from the command line the
settings come from the environment. On Postgres with a schema, the schema is created if missing and the search
path pinned to it, so the tables and the version table live there. SQLite uses batch mode for ALTERs.
"""

from __future__ import annotations

from logging.config import fileConfig

from alembic import context
from sqlalchemy import pool, text

from storage.db import make_engine
from storage.settings import load_settings
from storage.tables import metadata

config = context.config
if config.config_file_name is not None and config.attributes.get("configure_logger", True):
    fileConfig(config.config_file_name, disable_existing_loggers=False)

settings = config.attributes.get("settings") or load_settings()
target_metadata = metadata


def run_migrations_offline() -> None:
    context.configure(
        url=settings.database_url, target_metadata=target_metadata, literal_binds=True,
        dialect_opts={"paramstyle": "named"}, render_as_batch=settings.database_url.startswith("sqlite"),
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    engine = make_engine(settings, poolclass=pool.NullPool)
    schema = settings.db_schema if engine.dialect.name == "postgresql" else ""
    if schema:
        with engine.begin() as conn:
            conn.execute(text(f'CREATE SCHEMA IF NOT EXISTS "{schema}"'))
    with engine.connect() as connection:
        context.configure(
            connection=connection, target_metadata=target_metadata,
            render_as_batch=engine.dialect.name == "sqlite", compare_type=True,
        )
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
