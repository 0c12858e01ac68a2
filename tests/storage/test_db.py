"""storage.db.retry_deadlocks: a transaction Postgres aborted as a deadlock victim runs again; nothing else does.

The faults are the driver's own exceptions (psycopg's DeadlockDetected, wrapped as SQLAlchemy wraps it); the
claims that meet real deadlocks are raced in test_claim_concurrency.py."""

from __future__ import annotations

from collections.abc import Callable

import psycopg
import pytest
from sqlalchemy.exc import OperationalError

from storage.db import DEADLOCK_ATTEMPTS, retry_deadlocks


def failing(faults: list[Exception]) -> tuple[list[int], Callable[[int], int]]:
    calls: list[int] = []

    @retry_deadlocks
    def write(n: int) -> int:
        calls.append(n)
        if faults:
            raise faults.pop(0)
        return n * 2

    return calls, write


def deadlock() -> OperationalError:
    return OperationalError("UPDATE jobs ...", {}, psycopg.errors.DeadlockDetected("deadlock detected"))


def test_a_deadlock_victim_runs_again() -> None:
    calls, write = failing([deadlock()] * (DEADLOCK_ATTEMPTS - 1))
    assert write(21) == 42 and len(calls) == DEADLOCK_ATTEMPTS


def test_the_last_deadlock_and_other_errors_are_raised() -> None:
    calls, write = failing([deadlock()] * DEADLOCK_ATTEMPTS)
    with pytest.raises(OperationalError):
        write(1)
    assert len(calls) == DEADLOCK_ATTEMPTS
    refused = OperationalError("SELECT 1", {}, psycopg.errors.ConnectionTimeout("connection refused"))
    calls, write = failing([refused])
    with pytest.raises(OperationalError):
        write(1)
    assert len(calls) == 1
