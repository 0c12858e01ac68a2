"""`unipic up` (the whole stack on one machine) and `unipic api` (the API server alone).

`up` applies migrations, makes a first API key when there is none, checks that the model's weights are
reachable, then runs the API, one model worker and the webhook worker + sweeper as supervised children
(`cli.supervisor`). It prints the "up" banner only once the API is ready and the model worker has registered
(`cli.serving`); a model worker that cannot start makes `up` print its reason and exit with the worker's code,
unless `--keep-going`. With no configuration that is the embedded stack (SQLite, local objects, SQLite broker under
`--data-dir`); with Postgres/Redis/S3 URLs in the environment the very same command runs the production path.
Every child is a `unipic` subcommand, so what `up` runs is exactly what compose.yaml runs. The embedded stack
admits http and loopback webhook URLs (a local receiver: `unipic webhooks listen`) unless `UNIPIC_WEBHOOK_*`
say otherwise; the production path keeps refusing them.
"""

from __future__ import annotations

import copy
import logging
import os
import re
import signal
import socket
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from cli.runtime import DataDir, settings_for
from cli.serving import WORKER, WorkerDown, wait_serving
from cli.supervisor import ChildSpec, Supervisor

if TYPE_CHECKING:
    from storage.settings import Settings

READY_TIMEOUT_S = 300.0
_KEY_IN_QUERY = re.compile(r"([?&]key=)[^&\s]+")


def register(app: typer.Typer) -> None:
    app.command("up")(up)
    app.command("api")(api)


def up(
    model: str | None = typer.Option(None, "--model", envvar="UNIPIC_MODEL",
                                        help="'tiny', a Hugging Face repo id or a local directory"),
    host: str = typer.Option("127.0.0.1", "--host", help="Address the API listens on"),
    port: int = typer.Option(8000, "--port", help="Port the API listens on"),
    data_dir: Path | None = DataDir,
    device: str = typer.Option("auto", "--device", help="Model worker device: auto, cpu, cuda:N"),
    grace: float = typer.Option(30.0, "--grace", help="Seconds children get to stop before SIGKILL"),
    keep_going: bool = typer.Option(False, "--keep-going",
                                    help="Keep running (restarting it) when the model worker cannot start"),
    log_level: str = typer.Option("info", "--log-level", envvar="UNIPIC_LOG_LEVEL",
                                  help="Console level of every child: debug shows per-task chatter"),
) -> None:
    """Run the whole stack (API, model worker, webhook worker + sweeper) until Ctrl-C."""
    overrides: dict[str, Any] = {"model": model} if model else {}
    settings = settings_for(data_dir, **overrides)
    _check_port(host, port)
    _check_model(settings.model, settings.model_cache_dir)
    _migrate(settings)
    key = _first_key(settings)
    if key:
        _save_key(settings, key)
    base = f"http://{_display_host(host)}:{port}"
    children = _children(settings, host, port, _resolve_device(device), base, log_level)
    supervisor = Supervisor(children, grace_s=grace,
                            chore=lambda: _purge_broker(settings.broker_url))
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: supervisor.request_stop())
    if not keep_going:
        supervisor.no_restart.add(WORKER)  # until it first serves: a worker that cannot start stops `up`
    supervisor.start()
    try:
        serving = wait_serving(base, supervisor, settings, READY_TIMEOUT_S, keep_going)
    except WorkerDown as down:
        supervisor.stop_all()
        typer.secho(f"unipic is not up: the model worker could not start: {down.reason}", err=True, fg="red")
        raise typer.Exit(down.code) from None
    supervisor.no_restart.discard(WORKER)
    if serving:
        _banner(supervisor, settings, base, key)
    supervisor.run_until_stopped()
    supervisor.say("up", "stopped")

# idle keep-alive connections close after 5 s; uvicorn has no timeout for reading a slow request head or body and
# (with httptools) no cap on a head's size, so production runs behind deploy/nginx.conf (README "Security")
SERVER_LIMITS: dict[str, Any] = {"timeout_keep_alive": 5, "limit_concurrency": 2048, "backlog": 2048}


def api(
    host: str = typer.Option("127.0.0.1", "--host"),
    port: int = typer.Option(8000, "--port"),
    workers: int = typer.Option(1, "--workers", min=1, help="uvicorn worker processes"),
    data_dir: Path | None = DataDir,
    log_level: str = typer.Option("info", "--log-level"),
) -> None:
    """Run the HTTP API (uvicorn on `api.app:create_app`)."""
    import uvicorn

    from cli.logs import level_name

    settings = settings_for(data_dir)
    _configure_logging(log_level, settings)
    level = level_name(log_level, settings)
    options: dict[str, Any] = {"host": host, "port": port, "log_level": level.lower(), "proxy_headers": True,
                               "log_config": _uvicorn_log_config(log_level, settings),
                               "access_log": level == "DEBUG", **SERVER_LIMITS}
    # every open event stream holds a connection: leave room for them plus ordinary requests (api.events.hub)
    options["limit_concurrency"] = max(options["limit_concurrency"], settings.events_max_streams + 1024)
    # on SIGTERM the held streams and long-polls end at once (api.draining); a request still in flight after this
    # (a stuck handler, a client that stopped sending its body) is ended, so the process stops by itself: else
    # uvicorn waits without bound and Kubernetes (or `unipic up`) kills it at the end of its grace period
    options["timeout_graceful_shutdown"] = settings.api_shutdown_grace_seconds
    if workers == 1:
        from api.app import create_app

        uvicorn.run(create_app(settings), **options)
    else:  # each process builds its own app from the environment
        os.environ["UNIPIC_DATA_DIR"] = str(settings.data_dir.expanduser().resolve())
        _multiprocess_metrics()
        uvicorn.run("api.app:create_app_from_env", factory=True, workers=workers, **options)


# ---- steps of `up` ----------------------------------------------------------------------------------------------
def _check_model(source: str, cache_dir: str) -> None:
    """Exit with a clear message (no traceback) when the weights cannot be had."""
    from cli.weights import WeightsUnavailable, ensure_weights

    try:
        ensure_weights(source, echo=lambda msg: typer.echo(msg, err=True), cache_dir=cache_dir)
    except WeightsUnavailable as exc:
        typer.secho(f"error: {exc}", err=True, fg="red")
        raise typer.Exit(1) from None


def _check_port(host: str, port: int) -> None:
    """Exit with a clear message when the API's address is taken (another stack would answer our probes)."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does: TIME_WAIT is fine
        try:
            probe.bind((host, port))
        except OSError as exc:
            typer.secho(f"error: cannot listen on {host}:{port}: {exc.strerror}; pick another --port",
                        err=True, fg="red")
            raise typer.Exit(1) from None


def _migrate(settings: Settings) -> None:
    from storage.migrate import upgrade

    upgrade(settings)


def _first_key(settings: Settings) -> str | None:
    """Create and return a first API key when the database has none (shown once); else None."""
    from storage.db import make_engine, make_session_factory
    from storage.keys import KeyStore

    engine = make_engine(settings)
    try:
        store = KeyStore(make_session_factory(engine))
        if store.page():
            return None
        _record, plaintext = store.create(name="first key (unipic up)")
        return plaintext
    finally:
        engine.dispose()


def _purge_broker(broker_url: str) -> None:
    """Keep the embedded broker file small (see cli.embedded_broker); nothing to do for Redis."""
    from cli.embedded_broker import purge_consumed

    purge_consumed(broker_url)


def _resolve_device(device: str) -> str:
    """`auto` means the first GPU when the machine has an NVIDIA driver, else the CPU (no torch import here)."""
    if device != "auto":
        return device
    return "cuda:0" if Path("/proc/driver/nvidia/version").exists() else "cpu"


def _display_host(host: str) -> str:
    return "127.0.0.1" if host in ("0.0.0.0", "::", "") else host


EMBEDDED_WEBHOOK_ALLOWLIST = "127.0.0.0/8,::1/128"  # loopback only; production settings keep refusing it


def _children(settings: Settings, host: str, port: int, device: str, base: str, log_level: str) -> list[ChildSpec]:
    env = dict(os.environ)
    env["UNIPIC_LOG_LEVEL"] = log_level.upper()  # every child reads it (cli.logs)
    env["UNIPIC_DATA_DIR"] = str(settings.data_dir.expanduser().resolve())
    env["UNIPIC_MODEL"] = settings.model
    env.setdefault("UNIPIC_PUBLIC_URL", base)
    if settings.embedded:  # a laptop: webhooks to a local receiver (`unipic webhooks listen`) work out of the box
        env.setdefault("UNIPIC_WEBHOOK_ALLOW_HTTP", "true")
        env.setdefault("UNIPIC_WEBHOOK_ALLOWLIST", EMBEDDED_WEBHOOK_ALLOWLIST)
    env.setdefault("PYTHONUNBUFFERED", "1")
    unipic = [sys.executable, "-m", "cli.main"]
    return [
        ChildSpec("api", [*unipic, "api", "--host", host, "--port", str(port)], env),
        ChildSpec(WORKER, [*unipic, "worker", "--device", device], env),
        ChildSpec("webhooks", [*unipic, "cpu-worker", "--beat"], env),
    ]


def _banner(supervisor: Supervisor, settings: Settings, base: str, key: str | None) -> None:
    mode = "embedded (SQLite, local objects, SQLite broker)" if settings.embedded else "external services"
    lines = [
        f"unipic is up ({mode}); data dir {settings.data_dir.expanduser().resolve()}",
        f"  API     {base}",
        f"  docs    {base}/docs",
        f"  status  {base}/ui" + (f"?key={key}" if key else ""),
        f"  model   {settings.model}",
    ]
    if key:
        lines += [f"  first API key (also saved, mode 0600, in {_key_path(settings)}):",
                  f"    export UNIPIC_API_URL={base}",
                  f"    export UNIPIC_API_KEY={key}"]
    else:
        data = settings.data_dir.expanduser().resolve()
        lines.append(f"  API keys exist already; make another with `unipic keys create --name me --data-dir {data}`")
    lines.append("  Ctrl-C stops everything")
    for line in lines:
        supervisor.say("up", line)


class RedactKeys(logging.Filter):
    """Hide `key=` query values (the status page's one-time sign-in link) in uvicorn's access log."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(_KEY_IN_QUERY.sub(r"\1***", a) if isinstance(a, str) else a for a in record.args)
        return True


def _uvicorn_log_config(level: str | None = None, settings: Settings | None = None) -> dict[str, Any]:
    from uvicorn.config import LOGGING_CONFIG

    from cli.logs import adapt_uvicorn

    config = copy.deepcopy(LOGGING_CONFIG)
    config.setdefault("filters", {})["redact_keys"] = {"()": "cli.commands.up.RedactKeys"}
    config["handlers"]["access"]["filters"] = ["redact_keys"]
    return adapt_uvicorn(config, level, settings)


def _configure_logging(level: str, settings: Settings) -> None:
    from cli.logs import configure

    configure(level, settings)


def _key_path(settings: Settings) -> Path:
    return settings.data_dir.expanduser().resolve() / "first-api-key"


def _save_key(settings: Settings, key: str) -> None:
    """Keep the one-time key in a file only its owner can read (the banner scrolls away)."""
    path = _key_path(settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(key + "\n")
    os.chmod(path, 0o600)


def _multiprocess_metrics() -> None:
    """Several uvicorn processes: request counters go to a shared directory that every scrape sums
    (prometheus-client multiprocess mode; a fresh directory per start, unless the operator set one)."""
    import tempfile

    if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="unipic-metrics-")
