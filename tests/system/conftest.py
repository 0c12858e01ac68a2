"""One bench stack for the whole tests/system package (bench.stack: private Postgres and Redis, S3 server with
versioning, the API, two tiny-model workers, the webhook worker, the sweeper, and cutting proxies in front of the
API and the bucket for the gateway worker a scenario starts), started once and closed after the package's last
test: the pushed-events tests and the reliability scenarios run on the same processes instead of starting and
loading the model twice. Each module makes its own keys, and the reliability invariants judge only the jobs of
their own scenario (every job in the private database is known, so another module's results are no orphans).
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest


def create_key(stack: Any, name: str, *options: str) -> dict[str, Any]:
    """A new API key on the stack (`unipic keys create --json`)."""
    from bench.stack import ROOT

    out = subprocess.run([sys.executable, "-m", "cli.main", "keys", "create", "--name", name, "--json", *options],
                         env=stack.env(), cwd=ROOT, check=True, capture_output=True, text=True).stdout
    return dict(json.loads(out.strip().splitlines()[-1]))


@pytest.fixture(scope="package")
def bench_stack(tiny_checkpoint: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """The package's running stack; its service logs are printed when starting it fails."""
    from bench.stack import Stack, StackConfig

    config = StackConfig(checkpoint=tiny_checkpoint, workers=2, lease_seconds=6.0, gateway=True, s3_versioning=True,
                         extra_env={"UNIPIC_RATE_LIMIT_PER_MINUTE": "100000"})
    stack = Stack(config, tmp_path_factory.mktemp("stack"))
    try:
        stack.start()
        yield stack
    except BaseException:
        for svc in stack.services.values():
            print(f"--- {svc.name} log ---\n{svc.log_tail(60)}")
        raise
    finally:
        stack.close()
