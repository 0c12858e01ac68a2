"""The real nginx (Debian package) with deploy/nginx.conf, the very file compose runs, in front of a running API.

The config is a template (`${UNIPIC_...}` placeholders, filled here as the nginx image fills them in compose):
this test points it at the session's `unipic up` stack on a loopback port, inside a temporary nginx prefix.
A client dribbling its request head is dropped within `client_header_timeout` (uvicorn alone would wait forever),
while submits, uploads, `?wait=` long-polls and server-sent events pass through unchanged; an event stream
delivers its first event while the job is still queued (an nginx that buffered it would hold it back). With the
documented certificate directory (deploy/tls/tls.conf.example, a certificate and its key) it serves HTTPS too.
"""

from __future__ import annotations

import getpass
import json
import os
import re
import select
import shutil
import socket
import struct
import subprocess
import tempfile
import time
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support import REPO
from tests.support.stack import SharedStack, Stack, free_port

pytestmark = pytest.mark.system

CONFIG = REPO / "deploy" / "nginx.conf"
PLACEHOLDER = re.compile(r"\$\{(UNIPIC_[A-Z_]+)\}")
MAIN = """user {user};
worker_processes 1;
pid {root}/nginx.pid;
error_log {root}/error.log info;
daemon off;
events {{ worker_connections 256; }}
http {{
    access_log {root}/access.log;
    client_body_temp_path {root}/client_body;
    proxy_temp_path {root}/proxy;
    fastcgi_temp_path {root}/fastcgi;
    uwsgi_temp_path {root}/uwsgi;
    scgi_temp_path {root}/scgi;
    include {root}/unipic.conf;
}}
"""


def nginx_binary() -> str:
    found = shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx",) if os.access(p, os.X_OK)), None)
    assert found, "nginx is not installed: `apt-get install nginx` (.ci/run installs it)"
    return found


def fill(template: str, values: dict[str, str]) -> str:
    """What the nginx image's envsubst does with NGINX_ENVSUBST_FILTER=^UNIPIC_: our placeholders only."""
    missing = set(PLACEHOLDER.findall(template)) - set(values)
    assert not missing, f"no value for {missing}"
    return PLACEHOLDER.sub(lambda m: values[m.group(1)], template)


class Nginx:
    def __init__(self, upstream: str, root: Path, tls: dict[str, bytes] | None = None) -> None:
        """`tls`: the files of the certificate directory (none: plain HTTP, as compose runs it by default)."""
        self.root = root
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        (root / "tls").mkdir()  # stands for /etc/nginx/tls, where compose mounts UNIPIC_TLS_DIR
        for name, content in (tls or {}).items():
            if name.endswith(".conf"):
                content = content.replace(b"/etc/nginx/tls/", f"{root / 'tls'}/".encode())
            (root / "tls" / name).write_bytes(content)
        (root / "unipic.conf").write_text(fill(CONFIG.read_text(), {
            "UNIPIC_PROXY_PORT": f"127.0.0.1:{self.port}", "UNIPIC_API_UPSTREAM": upstream,
            "UNIPIC_TLS_DIR": str(root / "tls")}))
        (root / "nginx.conf").write_text(MAIN.format(root=root, user=getpass.getuser()))
        binary = nginx_binary()
        argv = [binary, "-p", str(root), "-c", str(root / "nginx.conf"), "-e", str(root / "error.log")]
        checked = subprocess.run([*argv, "-t"], capture_output=True, text=True, check=False, timeout=30)
        assert checked.returncode == 0, checked.stderr
        self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)

    def wait_listening(self) -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"nginx exited:\n{self.log()}"
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.1)
        pytest.fail(f"nginx did not listen:\n{self.log()}", pytrace=False)

    def log(self) -> str:
        path = self.root / "error.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def stack(request: pytest.FixtureRequest) -> Stack:
    return SharedStack.get(request.config)


@contextmanager
def running_nginx(stack: Stack, tls: dict[str, bytes] | None = None) -> Iterator[Nginx]:
    root = Path(tempfile.mkdtemp(prefix="unipic-nginx-"))
    root.chmod(0o755)
    nginx = Nginx(stack.url.removeprefix("http://"), root, tls)
    try:
        nginx.wait_listening()
        yield nginx
    finally:
        nginx.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def proxy(stack: Stack) -> Iterator[Nginx]:
    with running_nginx(stack) as nginx:
        yield nginx


def header_timeout() -> float:
    found = re.search(r"^\s*client_header_timeout\s+(\d+)s;", CONFIG.read_text(), re.MULTILINE)
    assert found
    return float(found.group(1))


def test_a_dribbled_request_head_is_dropped_within_the_header_timeout(proxy: Nginx) -> None:
    timeout = header_timeout()
    planned = timeout * 3  # the client means to keep dribbling for three times as long, one line a second
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as conn:
        started = time.monotonic()
        conn.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        closed_at = None
        sent = 0
        while time.monotonic() - started < planned:
            readable, _, _ = select.select([conn], [], [], 1.0)  # one header line per second of silence
            if readable:
                try:
                    data = conn.recv(4096)
                except ConnectionResetError:
                    data = b""
                assert data == b"", f"nginx answered a head that never ended: {data!r}"
                closed_at = time.monotonic() - started
                break
            try:
                conn.sendall(f"X-Slow-{sent}: 1\r\n".encode())
            except (BrokenPipeError, ConnectionResetError):
                closed_at = time.monotonic() - started
                break
            sent += 1
    assert closed_at is not None, f"the connection was still open after {planned:.0f} s of dribbling"
    assert timeout - 1 <= closed_at <= timeout + 3, closed_at  # the header timeout, not something else
    assert sent >= timeout - 2  # it was dribbling all along


def _unsigned(job: dict[str, Any]) -> dict[str, Any]:
    images = [{k: v for k, v in image.items() if k not in ("url", "expires_at")} for image in job["result"]["images"]]
    return {**job, "result": {**job["result"], "images": images}}


def _png(width: int, height: int) -> bytes:
    """An uncompressible RGB PNG (random pixels), a few megabytes: a real upload body."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    raw = b"".join(b"\x00" + os.urandom(width * 3) for _ in range(height))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw, 1)) + chunk(b"IEND", b"")


def test_submits_uploads_long_polls_and_event_streams_pass_through(proxy: Nginx, stack: Stack) -> None:
    headers = {"Authorization": f"Bearer {stack.key}"}
    with httpx.Client(base_url=proxy.url, headers=headers, timeout=90) as front, \
            httpx.Client(base_url=stack.url, headers=headers, timeout=30) as direct:
        # a submit, then a `?wait=` long-poll until it is done
        submitted = front.post("/v1/jobs", json={"kind": "generate", "prompt": "a red fox", "width": 64,
                                                 "height": 64, "steps": 2})
        assert submitted.status_code == 202, submitted.text
        job_id = submitted.json()["id"]
        waited = front.get(f"/v1/jobs/{job_id}", params={"wait": 60})
        assert waited.status_code == 200 and waited.json()["status"] == "succeeded", waited.text
        # the same body as the API's own (result links are signed afresh on every read: compared without them)
        assert _unsigned(waited.json()) == _unsigned(direct.get(f"/v1/jobs/{job_id}").json())
        # a refusal passes through with its code
        refused = front.post("/v1/jobs", json={"kind": "generate", "prompt": "x", "width": 64, "height": 64,
                                               "steps": 10_000})
        assert refused.status_code == 422 and refused.json()["error"]["code"], refused.text

        # an upload of a few megabytes (buffered by nginx, then handed over whole)
        body = _png(1024, 768)
        upload = front.post("/v1/uploads", json={})
        assert upload.status_code == 201, upload.text
        upload_id = upload.json()["upload_id"]
        put = front.put(f"/v1/uploads/{upload_id}", content=body,
                        headers={"Content-Type": "application/octet-stream"})
        assert put.status_code == 200, put.text
        assert put.json() == {"upload_id": upload_id, "bytes": len(body)}

        # an event stream for a job no worker serves (the `.xl` queue): its first event comes while it waits
        stuck = front.post("/v1/jobs", json={"kind": "generate", "prompt": "big", "width": 2048, "height": 2048,
                                             "steps": 2})
        assert stuck.status_code == 202, stuck.text
        stuck_id = stuck.json()["id"]
        events: list[tuple[str, dict[str, object]]] = []
        with front.stream("GET", f"/v1/jobs/{stuck_id}/events") as stream:
            assert stream.headers["content-type"].startswith("text/event-stream")
            name = ""
            for line in stream.iter_lines():
                if line.startswith("event:"):
                    name = line.split(":", 1)[1].strip()
                elif line.startswith("data:"):
                    events.append((name, json.loads(line.split(":", 1)[1])))
                    if name == "status" and len(events) == 1:
                        assert events[0][1]["status"] == "queued"
                        # the job is still queued: the event was not held back; now end it
                        cancelled = direct.post(f"/v1/jobs/{stuck_id}/cancel")
                        assert cancelled.status_code == 200, cancelled.text
                    if name == "done":
                        break
        assert events[-1][0] == "done" and events[-1][1]["status"] == "canceled", events


def _self_signed() -> tuple[bytes, bytes]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.now(UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - timedelta(minutes=5))
            .not_valid_after(now + timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
            .sign(key, hashes.SHA256()))
    pem_key = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    return cert.public_bytes(serialization.Encoding.PEM), pem_key


def test_tls_from_the_documented_certificate_directory(stack: Stack, tmp_path: Path) -> None:
    """deploy/tls/tls.conf.example, copied as tls.conf next to a certificate and key, serves HTTPS."""
    cert, key = _self_signed()
    port = free_port()
    example = (REPO / "deploy" / "tls" / "tls.conf.example").read_text()
    assert "listen 443 ssl;" in example and "/etc/nginx/tls/" in example
    tls_conf = example.replace("listen 443 ssl;", f"listen 127.0.0.1:{port} ssl;")
    files = {"tls.conf": tls_conf.encode(), "fullchain.pem": cert, "privkey.pem": key}
    with running_nginx(stack, files) as nginx:
        (ca := tmp_path / "ca.pem").write_bytes(cert)
        answer = httpx.get(f"https://localhost:{port}/healthz", verify=str(ca), timeout=30)
        assert answer.status_code == 200, answer.text
        assert answer.headers["strict-transport-security"].startswith("max-age=")
        assert httpx.get(f"{nginx.url}/healthz", timeout=30).status_code == 200  # plain HTTP still answers
