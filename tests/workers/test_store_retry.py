"""The direct transport's settling calls ride out transient database errors (a restart, a dropped connection)."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy.exc import OperationalError, ProgrammingError

from storage.jobs.store import JobStore
from tests.support.claims import claim_job, lease_keys
from tests.support.jobs import make_job
from workers.transport.store_retry import RetryingJobStore


def _flaky(monkeypatch: pytest.MonkeyPatch, name: str, failures: int, error: Exception) -> list[int]:
    """Make `JobStore.<name>` raise `error` `failures` times before it works (the injected fault)."""
    calls = [0]
    real = getattr(JobStore, name)

    def flaky(self: JobStore, *args: Any, **kwargs: Any) -> Any:
        calls[0] += 1
        if calls[0] <= failures:
            raise error
        return real(self, *args, **kwargs)

    monkeypatch.setattr(JobStore, name, flaky)
    return calls


def _store(session_factory: Any) -> RetryingJobStore:
    store = RetryingJobStore(session_factory)
    store.sleep = lambda _: None  # type: ignore[method-assign] # the pauses are not what is tested
    return store


def test_complete_fail_and_release_are_retried_through_a_database_restart(
    session_factory: Any, object_store: Any, owner_id: str, monkeypatch: pytest.MonkeyPatch,
) -> None:
    store = _store(session_factory)
    restart = OperationalError("UPDATE jobs", {}, Exception("server closed the connection unexpectedly"))
    done, failed, released = (make_job(store, object_store, owner_id, "generate", 64, seed=i, tag=f"retry{i}")
                              for i in range(3))
    # Given a finished job whose complete meets two lost connections
    [claim] = claim_job(store, done.id, "w")
    calls = _flaky(monkeypatch, "complete", 2, restart)
    # Then it is completed on the third try, not lost
    assert store.complete(claim, lease_keys(claim)) and calls[0] == 3
    assert store.get(done.id).status == "succeeded"
    # and so are fail and release
    [claim] = claim_job(store, failed.id, "w")
    _flaky(monkeypatch, "fail", 1, restart)
    assert store.fail(claim, "model_error", "boom") and store.get(failed.id).status == "failed"
    [claim] = claim_job(store, released.id, "w")
    _flaky(monkeypatch, "release", 1, restart)
    assert store.release([claim]) == 1 and store.get(released.id).status == "queued"


def test_a_database_that_stays_down_or_a_bad_statement_is_not_retried_forever(
    session_factory: Any, object_store: Any, owner_id: str, monkeypatch: pytest.MonkeyPatch,
) -> None:
    store = _store(session_factory)
    job = make_job(store, object_store, owner_id, "generate", 64, seed=9, tag="retry-down")
    [claim] = claim_job(store, job.id, "w")
    calls = _flaky(monkeypatch, "complete", 100, OperationalError("UPDATE", {}, Exception("down")))
    with pytest.raises(OperationalError):
        store.complete(claim, lease_keys(claim))
    assert calls[0] == len(store.pauses) + 1
    calls = _flaky(monkeypatch, "fail", 100, ProgrammingError("UPDATE", {}, Exception("syntax")))
    with pytest.raises(ProgrammingError):
        store.fail(claim, "model_error", "x")
    assert calls[0] == 1
    monkeypatch.undo()
    store.release([claim])
