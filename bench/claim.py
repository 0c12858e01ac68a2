"""Claim benchmark: the fair-share claim workers run (`JobStore.claim_next`), one run.

On the local Postgres (a private schema in database `test`, dropped afterwards) it loads `--jobs` queued jobs
(default 100,000) across `--keys` API keys (default 1,000; sizes skewed: a few bulk keys hold most jobs, as in
production) in one queue with a few compatibility keys, then claims `--claims` times, every claim taking a batch
of up to `--batch` jobs in its own transaction, as a worker does, under the policy of storage.scheduling.policy (fair
share, then priority and age).

It also times submission with the fair-share activation the create path now does: single `create` calls and one
`create_many` of 1,000. Target: new claim p99 < 20 ms.

    python -m bench.claim [--jobs 100000] [--keys 1000] [--claims 500] [--batch 8]

Prints a table and one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import secrets
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy import insert

PG = os.environ.get("BENCH_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
QUEUE = "unipic.generate.s"
COMPATS = [f"generate:{size}:{steps}:3.0:constant" for size in (256, 512) for steps in (8, 16)]


def _ms(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {"p50": round(statistics.median(ordered) * 1000, 2),
            "p99": round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000, 2),
            "max": round(ordered[-1] * 1000, 2)}


def _timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def _owners(sessions: Any, n: int) -> list[str]:
    from storage.jobs.ids import new_id
    from storage.tables import ApiKey

    ids = [new_id() for _ in range(n)]
    with sessions.begin() as s:
        s.execute(insert(ApiKey), [{"id": i, "name": "bench", "key_prefix": "upk_bench", "webhook_secret": "whsec_x",
                                    "key_hash": secrets.token_hex(32), "weight": 1.0} for i in ids])
    return ids


def _new_job(owner: str, rng: random.Random, priority: int) -> Any:
    from storage.records import NewJob

    compat = rng.choice(COMPATS)
    size, steps = int(compat.split(":")[1]), int(compat.split(":")[2])
    params = {"prompt": "bench", "width": size, "height": size, "num_images": 1, "steps": steps}
    return NewJob(owner_id=owner, kind="generate", params=params, compat_key=compat, queue=QUEUE,
                  priority=priority, seed=1)


def load(store: Any, owners: list[str], jobs: int, rng: random.Random) -> list[str]:
    """Queue `jobs` jobs: half among the 1% biggest keys (bulk), the rest spread over every key."""
    bulk = owners[: max(1, len(owners) // 100)]
    ids: list[str] = []
    chunk = 5000
    for start in range(0, jobs, chunk):
        n = min(chunk, jobs - start)
        news = [_new_job(rng.choice(bulk) if rng.random() < 0.5 else rng.choice(owners), rng,
                         rng.choice((-10, 0, 0, 5))) for _ in range(n)]
        _, records = store.create_many(news)
        ids.extend(r.id for r in records)
    return ids


def run(jobs: int, keys: int, claims: int, batch: int) -> dict[str, Any]:
    from storage.db import make_engine, make_session_factory
    from storage.jobs.store import JobStore
    from storage.migrate import upgrade
    from storage.settings import load_settings

    schema = f"bench_claim_{secrets.token_hex(4)}"
    import psycopg

    dsn = PG.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    try:
        settings = load_settings(data_dir=Path(tempfile.mkdtemp()), database_url=PG, db_schema=schema)
        upgrade(settings)
        engine = make_engine(settings)
        sessions = make_session_factory(engine)
        store = JobStore(sessions)
        rng = random.Random(13)
        owners = _owners(sessions, keys)
        load_s, _ = _timed(lambda: load(store, owners, jobs, rng))
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(f'ANALYZE "{schema}".jobs')
            conn.execute(f'ANALYZE "{schema}".fair_share')
        claim_t: list[float] = []
        for _ in range(claims):
            seconds, got = _timed(lambda: store.claim_next(QUEUE, "bench", 60, batch, 1 << 40))
            assert got, "the queue ran dry: use fewer --claims or more --jobs"
            claim_t.append(seconds)
        single = [_timed(lambda: store.create(_new_job(rng.choice(owners), rng, 0)))[0] for _ in range(200)]
        many_s, _ = _timed(lambda: store.create_many([_new_job(rng.choice(owners), rng, -10) for _ in range(1000)]))
        engine.dispose()
        return {"jobs": jobs, "keys": keys, "claims": claims, "batch": batch, "load_seconds": round(load_s, 1),
                "claim_ms": _ms(claim_t), "create_one_ms": _ms(single),
                "create_many_1000_ms": round(many_s * 1000, 1)}
    finally:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--jobs", type=int, default=100_000)
    ap.add_argument("--keys", type=int, default=1000)
    ap.add_argument("--claims", type=int, default=500)
    ap.add_argument("--batch", type=int, default=8)
    args = ap.parse_args()
    out = run(args.jobs, args.keys, args.claims, args.batch)
    print(f"{args.jobs} queued jobs, {args.keys} keys, batches of {args.batch}, {args.claims} claims")
    print(f"{'':24}{'p50 ms':>10}{'p99 ms':>10}{'max ms':>10}")
    for label, key in (("claim (fair share)", "claim_ms"), ("create one job", "create_one_ms")):
        row = out[key]
        print(f"{label:24}{row['p50']:>10}{row['p99']:>10}{row['max']:>10}")
    print(f"create_many(1000): {out['create_many_1000_ms']} ms; load of {args.jobs}: {out['load_seconds']} s")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
