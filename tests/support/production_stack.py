"""One `unipic up --model tiny` on this session's Postgres schema, Redis db and moto S3 (the production path),
shared by the SDK, OpenAI-route and `unipic up` production-path tests: started on first use and kept across
consecutive tests that use it (tests/conftest.py runs them one after another, so it starts once), stopped before
the first test that does not (its worker serves every queue of
the shared schema and broker db, so it would run other tests' jobs): tests/conftest.py's `pytest_runtest_setup`
calls `stop_unless_used`.

Knows the session fixtures' settings (`settings_env`) and tests.support.stack; the key it makes is a fresh one
in the session schema, so tests isolate themselves by that key (or by keys they make).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import tempfile
from pathlib import Path
from typing import Any

import pytest

from tests.support.jobs import cancel_leftover_jobs
from tests.support.stack import Stack, start_stack

SKIPPED_VARS = ("UNIPIC_ALLOWED_SIZES", "UNIPIC_API_URL", "UNIPIC_API_KEY", "UNIPIC_DATA_DIR")


class ProductionStack:
    _stack: Stack | None = None
    _tmp: Path | None = None
    _failure: str | None = None

    @classmethod
    def get(cls, config: pytest.Config, settings_env: dict[str, str], session_factory: Any) -> Stack:
        if cls._stack is not None and cls._stack.proc.poll() is None:
            return cls._stack
        if cls._failure is not None:
            pytest.fail(f"the production stack did not start (see the first failure): {cls._failure}",
                        pytrace=False)
        from storage.keys import KeyStore

        cancel_leftover_jobs(session_factory)  # other packages' queued jobs are not ours to run
        _record, key = KeyStore(session_factory).create("sdk tests")
        urls = {k: v for k, v in settings_env.items() if k.startswith("UNIPIC_") and v and k not in SKIPPED_VARS}
        if cls._tmp is None:
            cls._tmp = Path(tempfile.mkdtemp(prefix="unipic-prod-"))
            config.add_cleanup(cls._cleanup)
        try:
            cls._stack = start_stack(Path(tempfile.mkdtemp(dir=cls._tmp)), extra_env=urls, key=key)
        except pytest.fail.Exception as exc:
            cls._failure = str(exc).splitlines()[0]
            raise
        return cls._stack

    @classmethod
    def stop(cls) -> None:
        """Stop the stack: its worker serves every queue of the shared schema and broker db, so it must not
        outlive the module that uses it (it would run other tests' jobs)."""
        if cls._stack is not None:
            cls._stack.stop()
            for pid in cls._stack.child_pids().values():
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(pid, signal.SIGKILL)
        cls._stack = None

    @classmethod
    def _cleanup(cls) -> None:
        cls.stop()
        if cls._tmp is not None:
            shutil.rmtree(cls._tmp, ignore_errors=True)
        cls._stack, cls._tmp = None, None


def stop_unless_used(item: pytest.Item) -> None:
    """Before each test: stop the stack unless this test uses it (see the module docstring)."""
    if "prod_stack" not in getattr(item, "fixturenames", ()):
        ProductionStack.stop()


@pytest.fixture
def prod_stack(request: pytest.FixtureRequest, settings_env: dict[str, str], session_factory: Any) -> Stack:
    """The running production-path stack (Postgres, Redis, S3, a real tiny-model worker, webhook worker),
    shared by consecutive tests that use it and stopped before the first test that does not."""
    return ProductionStack.get(request.config, settings_env, session_factory)


@pytest.fixture
def new_key(session_factory: Any) -> str:
    """A fresh API key (plaintext) in the session schema: a test's own jobs and batches."""
    from storage.keys import KeyStore

    return KeyStore(session_factory).create("sdk test key")[1]
