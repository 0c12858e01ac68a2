"""`unipic up` tells the truth: a model worker that cannot start stops `up` with its reason, and no banner."""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests.support import REPO
from tests.support.stack import clean_env, free_port, unipic_argv
from workers.startup import ExitCode

EXIT_TIMEOUT = 120.0  # a liveness bound: `up` migrates, starts three children and waits for the worker's exit


def test_up_with_a_device_torch_cannot_use_exits_with_the_workers_reason(tmp_path: Path) -> None:
    # Given a machine whose torch has no CUDA (this one)
    argv = unipic_argv("up", "--model", "tiny", "--device", "cuda", "--port", str(free_port()),
                       "--data-dir", str(tmp_path / "data"), "--grace", "10")

    # When `unipic up --device cuda` starts
    result = subprocess.run(argv, env=clean_env(UNIPIC_MODEL_DTYPE="float32"), cwd=REPO, capture_output=True,
                            text=True, check=False, timeout=EXIT_TIMEOUT)

    # Then it exits with the worker's code and says why, without ever claiming to be up
    output = result.stdout + result.stderr
    assert result.returncode == int(ExitCode.NO_DEVICE), output[-4000:]
    assert "the model worker could not start: error: device cuda is not available" in result.stderr, output[-4000:]
    assert "unipic is up" not in output
    assert "Traceback" not in output
