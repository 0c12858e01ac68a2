"""`unipic up` (the whole stack on one machine) and `unipic api` (the API server alone).

`up` applies migrations, makes a first API key when there is none, checks that the model's weights are
reachable, then runs the API, one model worker and the webhook worker + sweeper as supervised children
(`cli.supervisor`). With no configuration that is the embedded stack (SQLite, local objects, SQLite broker under
`--data-dir`); with Postgres/Redis/S3 URLs in the environment the very same command runs the production path.
Every child is a `unipic` subcommand, so what `up` runs is exactly what compose.yaml runs.
"""

from __future__ import annotations

import copy
import logging
import os
import re
import signal
import socket
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from cli.runtime import DataDir, settings_for
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
) -> None:
    """Run the whole stack (API, model worker, webhook worker + sweeper) until Ctrl-C."""
    settings = settings_for(data_dir, **({"model": model} if model else {}))
    _check_port(host, port)
    _check_model(settings.model)
    _migrate(settings)
    key = _first_key(settings)
    base = f"http://{_display_host(host)}:{port}"
    supervisor = Supervisor(_children(settings, host, port, _resolve_device(device), base), grace_s=grace,
                            chore=lambda: _purge_broker(settings.broker_url))
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: supervisor.request_stop())
    supervisor.start()
    if _wait_ready(base, supervisor):
        _banner(supervisor, settings, base, key)
    supervisor.run_until_stopped()
    supervisor.say("up", "stopped")


def api(
    host: str = typer.Option("127.0.0.1", "--host"),
    port: int = typer.Option(8000, "--port"),
    workers: int = typer.Option(1, "--workers", min=1, help="uvicorn worker processes"),
    data_dir: Path | None = DataDir,
    log_level: str = typer.Option("info", "--log-level"),
) -> None:
    """Run the HTTP API (uvicorn on `api.app:create_app`)."""
    import uvicorn

    settings = settings_for(data_dir)
    _configure_logging(log_level)
    options: dict[str, Any] = {"host": host, "port": port, "log_level": log_level, "proxy_headers": True,
                               "log_config": _uvicorn_log_config()}
    if workers == 1:
        from api.app import create_app

        uvicorn.run(create_app(settings), **options)
    else:  # each process builds its own app from the environment
        os.environ["UNIPIC_DATA_DIR"] = str(settings.data_dir.expanduser().resolve())
        uvicorn.run("api.app:create_app_from_env", factory=True, workers=workers, **options)


# ---- steps of `up` ----------------------------------------------------------------------------------------------
def _check_model(source: str) -> None:
    """Exit with a clear message (no traceback) when the weights cannot be had."""
    from cli.weights import WeightsUnavailable, ensure_weights

    try:
        ensure_weights(source, echo=lambda msg: typer.echo(msg, err=True))
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
        if store.list():
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


def _children(settings: Settings, host: str, port: int, device: str, base: str) -> list[ChildSpec]:
    env = dict(os.environ)
    env["UNIPIC_DATA_DIR"] = str(settings.data_dir.expanduser().resolve())
    env["UNIPIC_MODEL"] = settings.model
    env.setdefault("UNIPIC_PUBLIC_URL", base)
    env.setdefault("PYTHONUNBUFFERED", "1")
    unipic = [sys.executable, "-m", "cli.main"]
    return [
        ChildSpec("api", [*unipic, "api", "--host", host, "--port", str(port)], env),
        ChildSpec("worker", [*unipic, "worker", "--device", device], env),
        ChildSpec("webhooks", [*unipic, "cpu-worker", "--beat"], env),
    ]


def _wait_ready(base: str, supervisor: Supervisor) -> bool:
    """Poll /readyz while supervising; False if we were asked to stop first."""
    import httpx

    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline and not supervisor.stopping:
        supervisor.poll()
        try:
            if httpx.get(f"{base}/readyz", timeout=2.0).status_code == 200:
                return True
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    if not supervisor.stopping:
        supervisor.say("up", f"API not ready at {base}/readyz after {READY_TIMEOUT_S:.0f} s; still supervising")
    return False


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
        lines += ["  first API key (shown once; keep it):", f"    export UNIPIC_API_URL={base}",
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


def _uvicorn_log_config() -> dict[str, Any]:
    from uvicorn.config import LOGGING_CONFIG

    config = copy.deepcopy(LOGGING_CONFIG)
    config.setdefault("filters", {})["redact_keys"] = {"()": "cli.up.RedactKeys"}
    config["handlers"]["access"]["filters"] = ["redact_keys"]
    return config


def _configure_logging(level: str) -> None:
    logging.basicConfig(level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
