"""The whole stack as separate processes, for the reliability suite (`tests/system`) and `bench/soak.py`.

It owns private Postgres and Redis servers (so a scenario may restart them without touching the machine's
shared ones), the S3-compatible HTTP server, and the service processes started exactly as the CLI starts them
in production: the API under uvicorn, model workers, the webhook worker and the sweeper. With `gateway`, remote
workers (`unipic worker --gateway URL --token wk_...`, with no database, broker or storage settings) reach the
API through a cutting proxy (`bench.proxy`) and the bucket through another (the presigned URLs name it), so
chaos can cut their internet path while every service keeps running. With `s3_versioning`, the bucket keeps
every version of every object, so a run can count each write. It knows nothing of how those services work
inside; it only starts, stops, kills and restarts them.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from bench.proxy import CuttingProxy

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(predicate, timeout: float, what: str, interval: float = 0.2):
    """Poll `predicate` until it returns a truthy value; raise TimeoutError naming `what`."""
    deadline = time.monotonic() + timeout
    last_exc: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = predicate()
            if value:
                return value
        except Exception as exc:  # noqa: BLE001 - readiness probes fail in many ways until ready
            last_exc = exc
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}" + (f" ({last_exc})" if last_exc else ""))


class PrivatePostgres:
    """A throwaway Postgres cluster on a free port, restartable by scenarios."""

    def __init__(self) -> None:
        self.bindir = Path(max(Path("/usr/lib/postgresql").glob("*/bin")))
        # its own directory, not one under pytest's basetemp: pytest resets that to mode 0700 at every session
        # start, which would lock the postgres user out of its data directory mid-run
        self.root = Path(tempfile.mkdtemp(prefix="unipic-pg-"))
        self.root.chmod(0o755)
        self.datadir = self.root / "pgdata"
        self.port = free_port()
        self._as_user: list[str] = []

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/unipic"

    def _run(self, *args: str) -> None:
        done = subprocess.run([*self._as_user, *args], check=False, capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(args[:2])} failed: {done.stderr or done.stdout}")

    def start(self) -> None:
        if os.geteuid() == 0:  # initdb refuses root: run the cluster as the postgres user
            shutil.chown(self.root, "postgres")
            self._as_user = ["runuser", "-u", "postgres", "--"]
        if not self.datadir.exists():
            self._run(str(self.bindir / "initdb"), "-D", str(self.datadir), "-U", "postgres", "-A", "trust",
                      "--no-sync")
        self._pg_ctl("start")
        wait_until(self._ready, 30, "private postgres")
        subprocess.run([str(self.bindir / "createdb"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres",
                        "unipic"], check=False, capture_output=True)

    def _pg_ctl(self, action: str) -> None:
        opts = f"-p {self.port} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200 -k {self.root}"
        args = [str(self.bindir / "pg_ctl"), "-D", str(self.datadir), "-w", "-l", str(self.root / "pg.log")]
        if action in ("start", "restart"):
            args += ["-o", opts]
        if action in ("stop", "restart"):
            args += ["-m", "fast"]
        self._run(*args, action)

    def _ready(self) -> bool:
        return subprocess.run([str(self.bindir / "pg_isready"), "-q", "-h", "127.0.0.1", "-p", str(self.port)],
                              check=False).returncode == 0

    def stop(self) -> None:
        self._pg_ctl("stop")

    def restart(self, down_seconds: float = 0.0) -> None:
        self.stop()
        time.sleep(down_seconds)
        self._pg_ctl("start")
        wait_until(self._ready, 30, "private postgres after restart")

    def close(self) -> None:
        with contextlib.suppress(RuntimeError):
            self.stop()
        shutil.rmtree(self.root, ignore_errors=True)


class PrivateRedis:
    """A Redis server on a free port that keeps nothing on disk: a restart loses every message."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.port = free_port()
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / "redis.log", "ab") as log:  # the child keeps its own copy of the descriptor
            self.proc = subprocess.Popen(
                ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly",
                 "no", "--dir", str(self.root)], stdout=log, stderr=subprocess.STDOUT)
        import redis

        wait_until(lambda: redis.Redis(port=self.port).ping(), 15, "private redis")

    def restart(self, down_seconds: float = 0.0) -> None:
        """Stop (losing all data, as a crashed Redis without persistence does) and start again."""
        self.stop()
        time.sleep(down_seconds)
        self.start()

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    close = stop


@dataclass
class Service:
    """One service process of the stack, started by its CLI command line (as compose.yaml starts it)."""

    name: str
    argv: list[str]
    env: dict[str, str]
    logdir: Path
    proc: subprocess.Popen | None = None
    starts: int = 0
    stops: list[int | None] = field(default_factory=list)  # per stop, its exit code; None: it had to be killed

    def start(self) -> None:
        with open(self.logdir / f"{self.name}.log", "ab") as log:
            self.proc = subprocess.Popen(self.argv, env=self.env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                                         start_new_session=True)
        self.starts += 1

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def signal(self, sig: int) -> None:
        if self.alive:
            assert self.proc is not None
            os.killpg(self.proc.pid, sig) if sig == signal.SIGKILL else self.proc.send_signal(sig)

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM, wait for a graceful exit, then SIGKILL the whole process group."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout)
        self.stops.append(self.proc.poll())
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def log_tail(self, n: int = 40) -> str:
        path = self.logdir / f"{self.name}.log"
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:]) if path.exists() else ""


@dataclass
class StackConfig:
    checkpoint: Path
    workers: int = 2
    lease_seconds: float = 8.0
    extra_env: dict[str, str] = field(default_factory=dict)
    gateway: bool = False  # the API and the bucket also behind cutting proxies, for remote workers
    gateway_workers: int = 0  # remote workers started with the stack (implies `gateway`)
    s3_versioning: bool = False


class Stack:
    """Postgres + Redis + S3 server + API + N model workers + webhook worker + sweeper, all separate processes."""

    BUCKET = "unipic-system"

    def __init__(self, config: StackConfig, root: Path | None = None) -> None:
        self.config = config
        self.root = root or Path(tempfile.mkdtemp(prefix="unipic-stack-"))
        self.logdir = self.root / "logs"
        self.logdir.mkdir(parents=True, exist_ok=True)
        self.pg = PrivatePostgres()
        self.redis = PrivateRedis(self.root / "redis")
        self.s3_port = free_port()
        self.s3: Service | None = None
        self.api_port = free_port()
        self.services: dict[str, Service] = {}
        self.restarts: dict[str, int] = {}
        self.api_proxy: CuttingProxy | None = None
        self.s3_proxy: CuttingProxy | None = None
        self._worker_token: str | None = None

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    def env(self) -> dict[str, str]:
        port = self.s3_port
        env = dict(os.environ)
        env.update({
            "UNIPIC_DATA_DIR": str(self.root / "data"),
            "UNIPIC_DATABASE_URL": self.pg.url,
            "UNIPIC_BROKER_URL": self.redis.url,
            "UNIPIC_REDIS_URL": self.redis.url,
            "UNIPIC_STORAGE_URL": f"s3://{self.BUCKET}",
            "UNIPIC_PUBLIC_URL": self.api_url,  # base of the manifest links the API hands out
            "UNIPIC_S3_ENDPOINT_URL": f"http://127.0.0.1:{port}",
            "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
            "UNIPIC_MODEL": str(self.config.checkpoint),
            "UNIPIC_MODEL_DTYPE": "float32",
            "UNIPIC_ALLOWED_SIZES": "64,128,256,512,1024",
            "UNIPIC_LEASE_SECONDS": str(self.config.lease_seconds),
            "UNIPIC_SWEEP_INTERVAL_SECONDS": "1",
            "UNIPIC_REQUEUE_AFTER_SECONDS": "6",
            "UNIPIC_HEARTBEAT_SECONDS": "2",
            "UNIPIC_WEBHOOK_ALLOWLIST": "127.0.0.0/8",
            "UNIPIC_WEBHOOK_ALLOW_HTTP": "true",
            "UNIPIC_RATE_LIMIT_PER_MINUTE": "100000",
            "HF_HUB_OFFLINE": "1",
            "PYTHONUNBUFFERED": "1",
            # several CPU model workers share the machine: one thread each avoids oversubscription
            "OMP_NUM_THREADS": "1",
        })
        if self.s3_proxy is not None:  # presigned URLs go through the proxy chaos cuts (direct workers do not)
            env["UNIPIC_S3_PUBLIC_ENDPOINT_URL"] = self.s3_proxy.url
        env.update(self.config.extra_env)
        return env

    def gateway_env(self) -> dict[str, str]:
        """A remote worker's environment: the model settings only, never database, broker or storage ones."""
        env = {k: v for k, v in self.env().items() if not k.startswith(("UNIPIC_", "AWS_"))}
        env.update({k: v for k, v in self.env().items()
                    if k.startswith(("UNIPIC_MODEL", "UNIPIC_WORKER_", "UNIPIC_FAULT_", "UNIPIC_PROGRESS_"))})
        return env

    def start(self) -> None:
        self.pg.start()
        self.redis.start()
        # the S3 server in its own process, so its work does not share a GIL with the load generator
        self.s3 = Service("s3", [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.s3_port)],
                          dict(os.environ), self.logdir)
        self.s3.start()
        wait_until(lambda: httpx.get(f"http://127.0.0.1:{self.s3_port}/moto-api/", timeout=2).status_code < 500, 30,
                   "S3 server")
        if self.config.gateway or self.config.gateway_workers:
            self.api_proxy, self.s3_proxy = CuttingProxy(self.api_port), CuttingProxy(self.s3_port)
        env = self.env()
        import boto3

        s3 = boto3.client("s3", endpoint_url=env["UNIPIC_S3_ENDPOINT_URL"], region_name="us-east-1",
                          aws_access_key_id="testing", aws_secret_access_key="testing")
        s3.create_bucket(Bucket=self.BUCKET)
        if self.config.s3_versioning:
            s3.put_bucket_versioning(Bucket=self.BUCKET, VersioningConfiguration={"Status": "Enabled"})
        subprocess.run([sys.executable, "-m", "cli.main", "migrate"], env=env, cwd=ROOT, check=True,
                       capture_output=True)
        unipic = [sys.executable, "-m", "cli.main"]
        self.services["api"] = Service("api", [*unipic, "api", "--host", "127.0.0.1", "--port", str(self.api_port)],
                                       env, self.logdir)
        for i in range(self.config.workers):
            self.services[f"worker-{i}"] = Service(
                f"worker-{i}", [*unipic, "worker", "--device", "cpu", "--name", f"w{i}-{self.api_port}"], env,
                self.logdir)
        self.services["webhooks"] = Service("webhooks", [*unipic, "cpu-worker", "--name", f"cpu-{self.api_port}@%h"],
                                            env, self.logdir)
        # beat schedules the sweeper, exactly one per deployment (the webhook worker drains the outbox itself)
        self.services["beat"] = Service("beat", [*unipic, "beat"], env, self.logdir)
        for svc in self.services.values():
            svc.start()
        wait_until(lambda: httpx.get(f"{self.api_url}/readyz", timeout=2).status_code == 200, 60, "API /readyz")
        for i in range(self.config.gateway_workers):
            self.add_gateway_worker(f"gw-{i}")

    def add_gateway_worker(self, name: str, **env: str) -> Service:
        """Start a remote worker service `name` (its model loads in the background): `unipic worker --gateway`
        with the API proxy's URL and a worker token of this stack, and nothing else but the model settings."""
        if self.api_proxy is None:
            raise RuntimeError("the stack was started without gateway=True: no proxy for remote workers")
        if self._worker_token is None:
            out = subprocess.run([sys.executable, "-m", "cli.main", "worker-tokens", "create", "--name", "stack",
                                  "--json"], env=self.env(), cwd=ROOT, check=True, capture_output=True, text=True)
            self._worker_token = str(json.loads(out.stdout.strip().splitlines()[-1])["token"])
        argv = [sys.executable, "-m", "cli.main", "worker", "--gateway", self.api_proxy.url, "--token",
                self._worker_token, "--device", "cpu", "--name", f"{name}-{self.api_port}"]
        svc = self.services[name] = Service(name, argv, {**self.gateway_env(), **env}, self.logdir)
        svc.start()
        return svc

    def restart_service(self, name: str, sig: int = signal.SIGTERM) -> float:
        """Stop a service (gracefully with SIGTERM, or by SIGKILL) and start it again, as a supervisor would;
        the seconds it took to stop."""
        svc = self.services[name]
        started = time.monotonic()
        if sig == signal.SIGKILL:
            svc.signal(signal.SIGKILL)
            svc.proc.wait(10) if svc.proc else None
        else:
            svc.stop()
        stopped = time.monotonic() - started
        svc.start()
        self.restarts[name] = self.restarts.get(name, 0) + 1
        return stopped

    def close(self) -> None:
        for svc in self.services.values():
            svc.stop(timeout=10)
        for proxy in (self.api_proxy, self.s3_proxy):
            if proxy is not None:
                proxy.close()
        if self.s3 is not None:
            self.s3.stop(timeout=5)
        self.redis.close()
        self.pg.close()
