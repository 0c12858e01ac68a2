"""Webhooks offline (issue 27): `unipic webhooks listen` verifies each delivery and prints it, and the embedded
stack `unipic up` starts admits its loopback URL, while production settings still refuse it."""

from __future__ import annotations

import json
import socket
import subprocess
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
from standardwebhooks.webhooks import Webhook

from egress.url_guard import UnsafeWebhookUrl, check_webhook_url
from tests.support.stack import REPO, clean_env, unipic_argv

SECRET = "whsec_" + "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_listen_verifies_each_delivery_and_prints_it() -> None:
    port = _free_port()
    proc = subprocess.Popen(unipic_argv("webhooks", "listen", "--port", str(port), "--secret", SECRET,
                                        "--max-events", "1", "--json"),
                            env=clean_env(), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stderr is not None
        ready = proc.stderr.readline()
        assert f"listening on http://127.0.0.1:{port}/" in ready, ready
        payload = json.dumps({"type": "job.succeeded", "timestamp": datetime.now(UTC).isoformat(),
                              "data": {"id": "job-1", "status": "succeeded"}})
        url = f"http://127.0.0.1:{port}/"
        # an unsigned (or wrongly signed) delivery is refused and not printed
        forged = httpx.post(url, content=payload, headers={"webhook-id": "msg_1", "webhook-timestamp": "1",
                                                            "webhook-signature": "v1,AAAA"}, timeout=10)
        assert forged.status_code == 400
        now = datetime.now(UTC)
        signature = Webhook(SECRET).sign("msg_2", now, payload)
        signed = httpx.post(url, content=payload, headers={
            "webhook-id": "msg_2", "webhook-timestamp": str(int(now.timestamp())), "webhook-signature": signature,
            "content-type": "application/json"}, timeout=10)
        assert signed.status_code == 200
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    (line,) = out.splitlines()
    assert json.loads(line) == {"id": "msg_2", "type": "job.succeeded",
                                "data": {"id": "job-1", "status": "succeeded"}}
    assert "refused a delivery" in err


def test_the_embedded_stack_admits_loopback_webhooks_and_production_does_not(tmp_path: Path) -> None:
    from cli.commands.up import _children
    from storage.settings import load_settings

    receiver = "http://127.0.0.1:8787/"
    embedded = load_settings(data_dir=tmp_path / "data", model="tiny")
    (api, *_) = _children(embedded, "127.0.0.1", 8000, "cpu", "http://127.0.0.1:8000", "info")
    child = load_settings(data_dir=tmp_path / "data", model="tiny",
                          webhook_allow_http=api.env["UNIPIC_WEBHOOK_ALLOW_HTTP"] == "true",
                          webhook_allowlist=api.env["UNIPIC_WEBHOOK_ALLOWLIST"])
    check_webhook_url(receiver, child)  # admitted
    with pytest.raises(UnsafeWebhookUrl):
        check_webhook_url("http://10.0.0.1/", child)  # loopback only
    production = embedded.model_copy(update={"database_url": "postgresql://u@db/unipic"})
    assert not production.embedded
    (prod_api, *_) = _children(production, "0.0.0.0", 8000, "cpu", "http://127.0.0.1:8000", "info")
    assert "UNIPIC_WEBHOOK_ALLOWLIST" not in prod_api.env or prod_api.env["UNIPIC_WEBHOOK_ALLOWLIST"] != \
        api.env["UNIPIC_WEBHOOK_ALLOWLIST"]
    with pytest.raises(UnsafeWebhookUrl):
        check_webhook_url(receiver, load_settings(data_dir=tmp_path / "data", model="tiny"))
