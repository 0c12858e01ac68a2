"""The one seam between the two database backends: Postgres (served) and SQLite (embedded mode).

Every place where the SQL differs goes through here, so no other storage module looks at the dialect's name
(`storage.db` still does, for engine setup: SQLite's `BEGIN IMMEDIATE`, Postgres's schema). What is the same on
both needs nothing here: `FOR UPDATE [SKIP LOCKED]` (SQLAlchemy leaves it out on SQLite, where `BEGIN IMMEDIATE`
already serializes writers), `RETURNING`, and JSON subscripts (`Job.params["steps"]`).
- `insert`: an `INSERT` that takes `ON CONFLICT DO NOTHING / DO UPDATE ... WHERE` and `excluded` (upserts);
- `lock` / `try_lock`: a transaction-scoped advisory lock (Postgres); on SQLite the write transaction already
  holds the database's only write lock, so they return at once (and `try_lock` says it has it);
- `rows_per_group`: the first rows of each group in one statement (Postgres `LATERAL`); SQLite has no LATERAL,
  so it reads the groups and then runs one small statement per group;
- `naive_datetimes`: whether the backend stores timestamps without a zone (SQLite), for `tables.UTCDateTime`;
- `refresh_statistics`: what the planner knows of a table, after a bulk insert (Postgres `ANALYZE`);
- `read_in_index_order`: for the rest of the transaction, ordered reads walk an index in that order (Postgres
  `SET LOCAL enable_sort = off`); SQLite's planner already does.
Knows nothing of the schema: callers pass tables and statements.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlalchemy import ColumnElement, Select, literal, select, text, true
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Dialect
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session
from sqlalchemy.sql import Subquery

SQLITE = "sqlite"


def _is_sqlite(s: Session) -> bool:
    return s.get_bind().dialect.name == SQLITE


def naive_datetimes(dialect: Dialect) -> bool:
    """True where timestamps are stored without a time zone (SQLite): bind them as naive UTC."""
    return dialect.name == SQLITE


def insert(s: Session, table: Any) -> postgresql.Insert:
    """`INSERT INTO table` for the session's backend, with `on_conflict_do_nothing/do_update` and `excluded`
    (SQLite's insert has the same methods and arguments; it is typed as Postgres's here)."""
    if _is_sqlite(s):
        return sqlite.insert(table)  # type: ignore[return-value]
    return postgresql.insert(table)


def lock(s: Session, lock_id: int) -> None:
    """Take a transaction-scoped advisory lock, waiting for it (released when the transaction ends)."""
    if not _is_sqlite(s):
        s.execute(text("SELECT pg_advisory_xact_lock(:id)"), {"id": lock_id})


def try_lock(s: Session, lock_id: int) -> bool:
    """Take a transaction-scoped advisory lock if it is free; whether this transaction holds it."""
    if _is_sqlite(s):
        return True
    return bool(s.scalar(text("SELECT pg_try_advisory_xact_lock(:id)"), {"id": lock_id}))


def refresh_statistics(s: Session, table: str, lock_timeout_ms: int = 200, timeout_ms: int = 2000) -> bool:
    """Re-read the planner's statistics of `table` (Postgres `ANALYZE`; SQLite's planner needs none here), as
    Postgres advises after a bulk load: autoanalyze waits for a tenth of the table to change, so a 9,000-job batch
    into a table of finished jobs stayed "one row" to the planner, and claims walked the whole queue (a lookup of
    8 claimed ids by primary key became a scan of every queued row, 3 ms each; prepared statements kept such
    plans). Bounded, as its caller holds a submission's messages until it returns: gives up (False) rather than
    wait past `lock_timeout_ms` behind another ANALYZE of the table (which sees the rows too) or sample for longer
    than `timeout_ms` (a very large table; autoanalyze gets there later). Ends the session's transaction."""
    if _is_sqlite(s):
        return False
    s.execute(text(f"SET LOCAL lock_timeout = '{int(lock_timeout_ms)}ms'"))
    s.execute(text(f"SET LOCAL statement_timeout = '{int(timeout_ms)}ms'"))
    try:
        s.execute(text(f'ANALYZE "{table}"'))
    except OperationalError:  # lock_not_available or query_canceled
        s.rollback()
        return False
    s.commit()
    return True


def read_in_index_order(s: Session) -> None:
    """For the rest of this transaction, make the planner walk an index in the wanted order rather than read a
    key's whole backlog and sort it. A claim's probes (`ORDER BY priority DESC, created_at, id LIMIT 1` over one
    key's queued jobs) have an index in exactly that order, but right after a large batch arrives the statistics
    have not seen its rows (autoanalyze waits for a tenth of the table to change): every plan is estimated at one
    row, and Postgres took the smaller partial index of a key's active jobs, then sorted all of them, 8,000 rows of
    a 9,000-job batch at every claim (7-40 ms each, the batch's width spilled to disk) against 0.2 ms. The claim's
    other reads have no sort an index cannot replace either; where one does, this makes it dearer, not refused."""
    if not _is_sqlite(s):
        s.execute(text("SET LOCAL enable_sort = off"))


def rows_per_group(s: Session, groups: Subquery, key: str,
                   rows: Callable[[ColumnElement[Any]], Select[Any]]) -> list[tuple[Any, ...]]:
    """For each row of `groups`, its columns followed by those of `rows(groups.c[key])` (an ordered, limited
    select of one group's rows), in the order of `groups`; a group with no rows gives none."""
    if not _is_sqlite(s):
        per_group = rows(groups.c[key]).lateral()
        return [tuple(r) for r in s.execute(select(groups, per_group).select_from(groups.join(per_group, true())))]
    found: list[tuple[Any, ...]] = []
    for group in s.execute(select(groups)).all():
        found += [(*group, *row) for row in s.execute(rows(literal(group._mapping[key])))]
    return found
