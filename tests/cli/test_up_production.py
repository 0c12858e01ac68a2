"""The same `unipic up` with Postgres, Redis and S3 URLs in the environment runs the production path.

The stack gets this session's Postgres schema, Redis db and moto S3 server (tests/conftest.py), so results are
presigned S3 URLs of another origin that the client downloads without the API key.
"""

from __future__ import annotations

import json
import signal
import tempfile
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from tests.support.stack import start_stack

pytestmark = pytest.mark.system


def test_up_with_postgres_redis_and_s3_urls(settings_env: dict[str, str], session_factory: Any,
                                           s3_server: str, tmp_path: Path) -> None:
    # Given: a key in the session's Postgres schema, and the production URLs in the environment
    from storage.keys import KeyStore

    _record, key = KeyStore(session_factory).create("up production test")
    urls = {k: v for k, v in settings_env.items() if k.startswith("UNIPIC_") and v
            and k not in ("UNIPIC_ALLOWED_SIZES", "UNIPIC_API_URL", "UNIPIC_API_KEY", "UNIPIC_DATA_DIR")}
    stack = start_stack(Path(tempfile.mkdtemp(dir=tmp_path)), extra_env=urls, key=key)
    try:
        # When: a user generates an image through it
        out = tmp_path / "prod.png"
        result = stack.cli("generate", "a blue circle", "-o", str(out), "--size", "64", "--steps", "2", "--json")

        # Then: the stack says it runs on external services, the result came from S3, and the file is right
        assert result.returncode == 0, result.stderr + stack.log()[-3000:]
        assert "external services" in stack.log()
        ping = stack.cli("healthcheck", "celery", "--node", "cpu@%h")  # remote control works over Redis
        assert ping.returncode == 0, ping.stderr
        (image,) = json.loads(result.stdout)["result"]["images"]
        assert image["url"].startswith(s3_server)
        with Image.open(out) as decoded:
            assert decoded.format == "PNG" and decoded.size == (64, 64)
    finally:
        code = stack.stop(signal.SIGINT)  # what Ctrl-C in a terminal sends
    assert code == 0, stack.log()[-3000:]
    assert stack.log().splitlines()[-1].endswith("stopped")
