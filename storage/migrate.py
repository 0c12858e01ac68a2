"""Schema migrations run from code: `upgrade`, `downgrade`, `check`, `current`.

The Alembic configuration is built here from the packaged `migrations/` directory, so `unipic migrate` works
from any working directory; the repository's `alembic.ini` drives the same `migrations/env.py` for
`alembic upgrade head`. The settings object is handed to env.py, which never reads another database.
"""

from __future__ import annotations

import logging
from pathlib import Path

from alembic import command
from alembic.config import Config

from storage.settings import Settings

log = logging.getLogger(__name__)


def migrations_dir() -> Path:
    import migrations

    return Path(migrations.__file__).resolve().parent


def alembic_config(settings: Settings) -> Config:
    """An Alembic config pointing at the packaged migrations and carrying `settings` to env.py."""
    config = Config()
    config.set_main_option("script_location", str(migrations_dir()))
    config.set_main_option("path_separator", "os")
    config.attributes["settings"] = settings
    config.attributes["configure_logger"] = False
    return config


def upgrade(settings: Settings, revision: str = "head") -> None:
    """Bring the database named by `settings` up to `revision`."""
    if settings.database_url.startswith("sqlite"):
        settings.ensure_data_dir()
    log.info("migrating %s (schema %r) up to %s", _safe_url(settings), settings.db_schema, revision)
    command.upgrade(alembic_config(settings), revision)


def downgrade(settings: Settings, revision: str = "base") -> None:
    """Take the database down to `revision` (`base` drops every table)."""
    log.info("migrating %s (schema %r) down to %s", _safe_url(settings), settings.db_schema, revision)
    command.downgrade(alembic_config(settings), revision)


def check(settings: Settings) -> None:
    """Raise `alembic.util.CommandError` if the tables differ from what the migrations produce."""
    command.check(alembic_config(settings))


def _safe_url(settings: Settings) -> str:
    from sqlalchemy.engine import make_url

    return make_url(settings.database_url).render_as_string(hide_password=True)
