"""Console logging of every `unipic` process: one handler, a level, text or JSON lines, and quiet chatter.

Owns the root logger's setup for the API, the model worker and the CPU worker (`unipic up` passes its
`--log-level` to its children as `UNIPIC_LOG_LEVEL`). At INFO the console carries warnings, errors, start-up
lines and one line per finished batch (the model worker's, and a submitted batch's completion): per-job,
per-task and per-request chatter (jobs created, accepted, claimed and finished, Celery's `Task ... succeeded`,
`Received task`, beat's `Sending due task`, uvicorn's access log, webhook attempts, httpx requests) logs at
WARNING and up only, unless the level is DEBUG. `UNIPIC_LOG_FORMAT=json` writes one JSON object per line. It
takes over Celery's logging setup (the `setup_logging` signal), so Celery adds no handler of its own, and
`celery_argv` starts Celery workers without their ASCII banner (`--quiet`) above DEBUG; Celery's "superuser
privileges" SecurityWarning (a container's root) is not repeated on the console. It knows nothing of what the
processes do.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from storage.settings import Settings

CHATTY = ("celery.app.trace", "celery.worker.strategy", "celery.beat", "celery.worker.consumer.mingle",
          "celery.worker.consumer.connection", "uvicorn.access", "httpx", "workers.webhooks.dispatcher",
          "workers.webhooks.delivery",
          "storage.jobs.store", "api.intake.submission")  # one line per job created, accepted, claimed, finished
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time, level, logger, message (and the traceback, when there is one)."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname, "logger": record.name, "message": record.getMessage(),
            "process": record.process,
        }
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False)


def level_name(level: str | None = None, settings: Settings | None = None) -> str:
    """`UNIPIC_LOG_LEVEL` when set (what `unipic up --log-level` passes down), else `level`, else INFO. Read
    through `settings` (the environment's when None), like every `UNIPIC_*` variable."""
    configured = settings if settings is not None else _environment()
    if "log_level" in configured.model_fields_set:
        return configured.log_level.upper()
    return (level or "INFO").upper()


def json_lines(settings: Settings | None = None) -> bool:
    return (settings if settings is not None else _environment()).log_format == "json"


def make_formatter(settings: Settings | None = None) -> logging.Formatter:
    return JsonFormatter() if json_lines(settings) else logging.Formatter(TEXT_FORMAT)


def _environment() -> Settings:
    from storage.settings import load_settings

    return load_settings()


def configure(level: str | None = None, settings: Settings | None = None) -> None:
    """Root logger to stderr at the level, in the format; chatty loggers held at WARNING above DEBUG; tracing on
    when the settings (the process's; the environment's when None) name an endpoint."""
    settings = settings if settings is not None else _environment()
    name = level_name(level, settings)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(make_formatter(settings))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(name)
    for chatty in CHATTY:
        logging.getLogger(chatty).setLevel(name if name == "DEBUG" else logging.WARNING)
    _start_tracing(settings)


_tracing_started = False


def _start_tracing(settings: Settings) -> None:
    """Every process configures its console here at start: also the place to turn tracing on, once, when
    `settings.otel_endpoint` is set (storage.tracing; off and free otherwise)."""
    global _tracing_started
    if not _tracing_started:
        _tracing_started = True
        from storage.tracing import setup_from_settings

        command = sys.argv[1] if len(sys.argv) > 1 and not sys.argv[1].startswith("-") else "cli"
        setup_from_settings(settings, "unipic-" + command)


def celery_argv(argv: list[str], level: str | None = None, settings: Settings | None = None) -> list[str]:
    """A Celery command line (`["worker", ...]`) that prints no banner unless the level is DEBUG."""
    return argv if level_name(level, settings) == "DEBUG" else ["--quiet", *argv]


def take_over_celery(level: str | None = None, settings: Settings | None = None) -> None:
    """Configure now, and make Celery use `configure` instead of its own logging setup (call before
    `worker_main`)."""
    import warnings

    from celery.exceptions import SecurityWarning
    from celery.signals import setup_logging

    configure(level, settings)
    if level_name(level, settings) != "DEBUG":
        warnings.filterwarnings("ignore", message="You're running the worker with superuser privileges",
                                category=SecurityWarning)

    def setup(**_: Any) -> None:
        configure(level, settings)

    setup_logging.connect(setup, weak=False)


def adapt_uvicorn(config: dict[str, Any], level: str | None = None,
                  settings: Settings | None = None) -> dict[str, Any]:
    """uvicorn's `log_config` with the same level, format and quiet access log."""
    settings = settings if settings is not None else _environment()
    name = level_name(level, settings)
    for logger in ("uvicorn", "uvicorn.error"):
        config["loggers"].setdefault(logger, {})["level"] = name
    config["loggers"].setdefault("uvicorn.access", {})["level"] = name if name == "DEBUG" else "WARNING"
    if json_lines(settings):
        for formatter in config.get("formatters", {}).values():
            formatter.clear()
            formatter["()"] = "cli.logs.JsonFormatter"
    return config
