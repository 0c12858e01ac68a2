"""The guarantees of design.md checked over the database, the object store and a webhook receiver.

After a scenario, every accepted job must be terminal, each succeeded job must have exactly its result objects,
no result object may exist without its job, and every subscribed event must have reached the receiver at least
once under one stable `webhook-id`. The report counts what was accepted, succeeded, failed (by code), lost and
duplicated, with latency and throughput, so a run can be judged at a glance.

On a bucket with versioning on, every write leaves a version, so the check also counts the writes to each served
result key: a served key lives under the completing lease's own prefix (`results/{job}/{lease}/...`), so any
version of it written after the job succeeded, or holding other bytes than the served one (the holder retrying an
upload writes the same bytes again), is a write by a worker that did not hold the job's lease. That count must
be 0; the holder's identical retries are reported beside it.
"""

from __future__ import annotations

import statistics
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

import boto3
import sqlalchemy as sa

from bench.receiver import Delivery
from storage.states import TERMINAL_STATUSES, EventType, JobStatus

TERMINAL = TERMINAL_STATUSES
JOB_EVENT_FOR_STATUS = {JobStatus.SUCCEEDED: EventType.JOB_SUCCEEDED, JobStatus.FAILED: EventType.JOB_FAILED,
                        JobStatus.CANCELED: EventType.JOB_CANCELED}


@dataclass
class Report:
    accepted: int = 0
    succeeded: int = 0
    failed_by_code: Counter = field(default_factory=Counter)
    canceled: int = 0
    expired: int = 0
    lost: int = 0
    duplicated: int = 0
    orphans: int = 0
    stale_attempt_objects: int = 0  # written under an earlier lease of the job: never served, swept later
    missing_objects: int = 0
    latencies: list[float] = field(default_factory=list)
    wall_seconds: float = 0.0
    worker_restarts: int = 0
    webhook_attempts: int = 0
    webhook_events_expected: int = 0
    webhook_events_missing: int = 0
    webhook_ids_unstable: int = 0
    bad_signatures: int = 0
    attempts_over_one: int = 0
    versions_counted: bool = False  # the bucket keeps versions: the three counts below were measured
    served_key_retries: int = 0  # versions of a served key beyond the first, same bytes, before success
    served_key_foreign_writes: int = 0  # versions written after success or with other bytes: must be 0
    stale_attempt_versions: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def _version_rows(self) -> list[tuple[str, object]]:
        if not self.versions_counted:
            return []
        return [("writes to a served key by a non-holder (must be 0)", self.served_key_foreign_writes),
                ("served-key rewrites by the holder (same bytes)", self.served_key_retries),
                ("stale attempts' object versions (never served)", self.stale_attempt_versions)]

    def percentile(self, p: float) -> float:
        if not self.latencies:
            return float("nan")
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]

    def table(self, title: str = "reliability run") -> str:
        thr = self.succeeded / self.wall_seconds if self.wall_seconds else float("nan")
        rows = [
            ("jobs accepted", self.accepted), ("succeeded", self.succeeded),
            ("failed (by code)", dict(self.failed_by_code) or 0), ("canceled", self.canceled),
            ("expired", self.expired), ("lost (must be 0)", self.lost),
            ("duplicated (must be 0)", self.duplicated), ("orphan objects (must be 0)", self.orphans),
            ("missing result objects (must be 0)", self.missing_objects),
            ("stale attempts' objects (never served; swept)", self.stale_attempt_objects),
            ("jobs retried after a lost worker", self.attempts_over_one),
            *self._version_rows(),
            ("latency p50 / p99 (s)", f"{self.percentile(50):.2f} / {self.percentile(99):.2f}"),
            ("throughput (succeeded jobs/s)", f"{thr:.2f}"), ("wall time (s)", f"{self.wall_seconds:.1f}"),
            ("worker restarts", self.worker_restarts), ("webhook attempts", self.webhook_attempts),
            ("webhook events expected / missing", f"{self.webhook_events_expected} / {self.webhook_events_missing}"),
            ("webhook ids unstable / bad signatures", f"{self.webhook_ids_unstable} / {self.bad_signatures}"),
        ]
        width = max(len(k) for k, _ in rows)
        lines = [f"| {title} |", "|" + "-" * (width + 2) + "|" + "-" * 30 + "|"]
        lines += [f"| {k.ljust(width)} | {v!s:<28} |" for k, v in rows]
        if self.problems:
            lines.append("problems:")
            lines += [f"  - {p}" for p in self.problems[:30]]
        return "\n".join(lines)


def wait_all_terminal(engine: sa.Engine, job_ids: list[str], timeout: float) -> None:
    """Block until every job is terminal (or the timeout passes; the check then reports what is not)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with engine.connect() as conn:
                open_count = conn.execute(
                    sa.text("select count(*) from jobs where status not in "
                            "('succeeded','failed','canceled','expired') and id = any(:ids)"),
                    {"ids": job_ids}).scalar_one()
            if open_count == 0:
                return
        except sa.exc.OperationalError:
            pass  # the database may be restarting in a scenario
        time.sleep(0.5)


def check(engine: sa.Engine, s3: Any, bucket: str, accepted: list[str], deliveries: list[Delivery],
          subscribed: dict[str, list[str]], secret_by_owner: dict[str, str] | None = None,
          wall_seconds: float = 0.0) -> Report:
    """Check every invariant; `subscribed` maps job id -> the webhook events that job asked for."""
    report = Report(accepted=len(accepted), wall_seconds=wall_seconds)
    with engine.connect() as conn:
        rows = conn.execute(sa.text(
            "select id, owner_id, status, error_code, result_keys, attempts, created_at, finished_at "
            "from jobs where id = any(:ids)"), {"ids": accepted}).mappings().all()
        report.webhook_attempts = conn.execute(sa.text("select count(*) from webhook_attempts")).scalar_one()
        known_ids = {r[0] for r in conn.execute(sa.text("select id from jobs"))}
    by_id = {r["id"]: r for r in rows}
    report.lost = len(set(accepted) - set(by_id))
    if report.lost:
        report.problems.append(f"{report.lost} accepted jobs have no row")
    for job in rows:
        status = job["status"]
        if status not in TERMINAL:
            report.lost += 1
            report.problems.append(f"job {job['id']} not terminal: {status}")
            continue
        if job["attempts"]:  # counts lost leases: 0 on a first run
            report.attempts_over_one += 1
        if status == JobStatus.SUCCEEDED:
            report.succeeded += 1
            report.latencies.append((job["finished_at"] - job["created_at"]).total_seconds())
        elif status == JobStatus.FAILED:
            report.failed_by_code[job["error_code"]] += 1
        elif status == JobStatus.CANCELED:
            report.canceled += 1
        else:
            report.expired += 1
    _check_objects(s3, bucket, by_id, known_ids, report)
    if s3.get_bucket_versioning(Bucket=bucket).get("Status") == "Enabled":
        _check_versions(s3, bucket, by_id, report)
    _check_webhooks(by_id, deliveries, subscribed, secret_by_owner or {}, report)
    return report


def _check_objects(s3: Any, bucket: str, by_id: dict, known_ids: set[str], report: Report) -> None:
    objects_by_job: dict[str, set[str]] = defaultdict(set)
    paginator = s3.get_paginator("list_objects_v2")
    for page in paginator.paginate(Bucket=bucket):
        for obj in page.get("Contents", []):
            parts = obj["Key"].split("/")
            if "results" in parts:
                job_id = parts[parts.index("results") + 1]
                objects_by_job[job_id].add(obj["Key"])
                if job_id not in known_ids:
                    report.orphans += 1
                    report.problems.append(f"orphan object {obj['Key']}")
    for job_id, job in by_id.items():
        if job["status"] != JobStatus.SUCCEEDED:
            continue
        keys = list(job["result_keys"] or [])
        if not keys:
            report.missing_objects += 1
            report.problems.append(f"succeeded job {job_id} has no result keys")
        if len(keys) != len(set(keys)):
            report.duplicated += 1
            report.problems.append(f"job {job_id} lists a result key twice")
        stored = objects_by_job.get(job_id, set())
        missing = [k for k in keys if not any(s.endswith(k) for s in stored)]
        if missing:
            report.missing_objects += len(missing)
            report.problems.append(f"job {job_id} result objects missing: {missing}")
        served_prefixes = {k.rsplit("/", 1)[0] + "/" for k in keys}  # results/{job}/{lease}/
        extra = [s for s in stored if not any(s.endswith(k) for k in keys)]
        stale = [s for s in extra if not any(p in s for p in served_prefixes)]
        report.stale_attempt_objects += len(stale)
        extra = [s for s in extra if s not in stale]  # beside the served result, under the same lease: a duplicate
        if extra:
            report.duplicated += 1
            report.problems.append(f"job {job_id} has objects beyond its result keys: {extra}")


def _check_versions(s3: Any, bucket: str, by_id: dict, report: Report) -> None:
    """Count every write to each served result key (each is a version); see the module docstring."""
    report.versions_counted = True
    versions: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for page in s3.get_paginator("list_object_versions").paginate(Bucket=bucket, Prefix="results/"):
        for version in page.get("Versions", []):
            versions[version["Key"]].append(version)
    served: set[str] = set()
    for job_id, job in by_id.items():
        if job["status"] != JobStatus.SUCCEEDED:
            continue
        keys = list(job["result_keys"] or [])
        served.update(keys)
        if len({k.rsplit("/", 1)[0] for k in keys}) > 1:
            report.problems.append(f"job {job_id} serves keys of more than one lease: {keys}")
        for key in keys:
            written = sorted(versions.get(key, []), key=lambda v: v["LastModified"])
            current = next((v for v in written if v["IsLatest"]), None)
            if current is None:
                continue  # reported as a missing object
            foreign = [v for v in written if v["ETag"] != current["ETag"] or v["LastModified"] > job["finished_at"]]
            report.served_key_foreign_writes += len(foreign)
            report.served_key_retries += len(written) - 1 - len(foreign)
            if foreign:
                report.problems.append(f"job {job_id}: {len(foreign)} writes to served key {key} by a non-holder")
    report.stale_attempt_versions = sum(len(v) for k, v in versions.items()
                                        if k not in served and k.split("/")[1] in by_id)


def _check_webhooks(by_id: dict, deliveries: list[Delivery], subscribed: dict[str, list[str]],
                    secret_by_owner: dict[str, str], report: Report) -> None:
    from bench.receiver import verify_standard_webhook

    seen: dict[tuple[str, str | None], set[str]] = defaultdict(set)  # (job id, event type) -> webhook ids
    for d in deliveries:
        event = d.event
        data = event.get("data", {})
        job_id = data.get("id")
        seen[(job_id, event.get("type"))].add(d.webhook_id)
        secret = secret_by_owner.get(data.get("owner_id", "")) or next(iter(secret_by_owner.values()), None)
        if secret and not verify_standard_webhook(secret, d, tolerance_s=24 * 3600):
            report.bad_signatures += 1
    for job_id, events in subscribed.items():
        job = by_id.get(job_id)
        if job is None:
            continue
        wanted = [e for e in events if e == JOB_EVENT_FOR_STATUS.get(job["status"])]
        for etype in wanted:
            report.webhook_events_expected += 1
            ids = seen.get((job_id, etype), set())
            if not ids:
                report.webhook_events_missing += 1
                report.problems.append(f"job {job_id}: {etype} never delivered")
            elif len(ids) > 1:
                report.webhook_ids_unstable += 1
                report.problems.append(f"job {job_id}: {etype} delivered under {len(ids)} different webhook ids")
    if report.bad_signatures:
        report.problems.append(f"{report.bad_signatures} deliveries failed signature verification")


def s3_client(endpoint: str) -> Any:
    return boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="testing",
                        aws_secret_access_key="testing")


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")
