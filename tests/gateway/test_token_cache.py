"""WorkerTokenCache: a remembered worker token costs the database nothing per request, every remembered token is
re-checked by one query per half bound, and a revoked token is refused once the revocation bound has passed.
Real Postgres; an injected clock stands in for the passing of time."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy import event

from storage.fleet.token_cache import WorkerTokenCache
from storage.fleet.tokens import WorkerTokenStore

BOUND = 2.0


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def store(session_factory: Any) -> WorkerTokenStore:
    return WorkerTokenStore(session_factory)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def cache(store: WorkerTokenStore, clock: Clock) -> WorkerTokenCache:
    return WorkerTokenCache(store, BOUND, clock)


def _transactions(session_factory: Any) -> Callable[[], int]:
    """Counts the transactions begun on the session's engine from now on."""
    seen = [0]

    def begin(_conn: Any) -> None:
        seen[0] += 1

    engine = session_factory.kw["bind"]
    event.listen(engine, "begin", begin)
    return lambda: seen[0]


def test_a_remembered_token_costs_no_transaction_per_request(
    cache: WorkerTokenCache, store: WorkerTokenStore, clock: Clock, session_factory: Any,
) -> None:
    # Given 50 tokens, each seen once by this process
    plaintexts = [store.create(f"gpu-{i}")[1] for i in range(50)]
    for plaintext in plaintexts:
        assert cache.authenticate(plaintext) is not None
    count, sweeps = _transactions(session_factory), cache.sweeps
    # When each is presented 20 times over three revocation bounds (a request every 0.3 s of the clock)
    for _ in range(20):
        clock.now += 0.3
        for plaintext in plaintexts:
            assert cache.authenticate(plaintext) is not None
    # Then the database saw at most one sweep per half bound for all of them together, and nothing per request
    swept = cache.sweeps - sweeps
    assert 3 <= swept <= 20 * 0.3 / (BOUND / 2)
    assert count() == swept, f"{count()} transactions for 1,000 requests and {swept} sweeps"


def test_a_revoked_token_is_refused_once_the_bound_has_passed(
    cache: WorkerTokenCache, store: WorkerTokenStore, clock: Clock,
) -> None:
    # Given two remembered tokens, presented just now
    revoked, plaintext = store.create("revoked")
    _, other = store.create("other")
    assert cache.authenticate(plaintext) is not None and cache.authenticate(other) is not None
    # When one is revoked, and the bound passes
    store.revoke(revoked.id)
    clock.now += BOUND
    # Then the next request presenting it is refused, and it stays refused; the other is still good
    assert cache.authenticate(plaintext) is None
    assert cache.authenticate(plaintext) is None
    assert cache.authenticate(other) is not None


def test_an_entry_no_sweep_covered_in_time_is_looked_up_again(
    cache: WorkerTokenCache, store: WorkerTokenStore, clock: Clock, monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given a remembered token, and sweeps that fail (the database is away for them)
    revoked, plaintext = store.create("stale")
    assert cache.authenticate(plaintext) is not None

    def away(_ids: Any) -> set[str]:
        raise ConnectionError("database away (fault injected)")

    monkeypatch.setattr(store, "live_ids", away)
    # When it is revoked and the bound passes without a sweep
    store.revoke(revoked.id)
    clock.now += BOUND
    # Then its own lookup refuses it
    lookups = cache.lookups
    assert cache.authenticate(plaintext) is None
    assert cache.lookups == lookups + 1 and cache.sweeps == 0


def test_unknown_and_malformed_tokens_are_never_remembered(
    cache: WorkerTokenCache, session_factory: Any,
) -> None:
    count = _transactions(session_factory)
    assert cache.authenticate("wk_" + "x" * 43) is None
    assert cache.authenticate("wk_" + "x" * 43) is None
    assert cache.authenticate("sk_not-a-worker-token") is None
    assert cache.authenticate("wk_" + "y" * 300) is None
    assert count() == 2 and cache.lookups == 2  # the unknown token, each time; the malformed ones not at all
