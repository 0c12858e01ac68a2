"""The same `unipic up` with Postgres, Redis and S3 URLs in the environment runs the production path.

The stack (the shared production-path stack of tests/support/production_stack.py, which this test stops last of
its users) gets this session's Postgres schema, Redis db and moto S3 server (tests/conftest.py), so results are
presigned S3 URLs of another origin that the client downloads without the API key.
"""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest
from PIL import Image

from tests.support.production_stack import prod_stack
from tests.support.stack import Stack

pytestmark = pytest.mark.system
__all__ = ["prod_stack"]  # the fixture


def test_up_with_postgres_redis_and_s3_urls(prod_stack: Stack, s3_server: str, tmp_path: Path) -> None:
    # Given: the production-path stack (tests/support/production_stack.py): `unipic up` with this session's
    # Postgres schema, Redis db and S3 URLs in its environment, and a key in that schema
    stack = prod_stack
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
