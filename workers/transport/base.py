"""The transport a model worker runs batches over: the two small protocols `workers.runner.batching` depends on.

`JobPort` is every job-state call the batch runner, its lease keeper, progress reporter and cancel watcher make;
`ObjectPort` is how it reads a job's input and writes its results. Beside them, what only one transport has:
`QueueClaims` (the direct store claims a named queue) and `HearsCancels` (the gateway client brings its own
`CancelHintSource`, its cancel long-polls; a direct worker hears Redis). Two transports implement them:

- **direct** (LAN, one VPC): `storage.jobs.store.JobStore` and `storage.objects.base.ObjectStore` themselves, with the
  database, broker and bucket credentials in the worker's environment (`workers.runtime`);
- **remote** (the internet): `workers.transport.gateway_client.GatewayJobs` and `GatewayObjects`, which reach the API's
  worker gateway (`/v1/worker/...`) over HTTPS with a worker token and move bytes through presigned URLs
  (`workers.transport.gateway_runtime`).

The batching, out-of-memory splitting, per-item seeds, cancellation between steps and graceful shutdown are the
same code for both; the transport is the only difference. A transport raises `Unreachable` when a call could
not be made after its own retries (the network or the service is down), so the runner can tell "try again while
the lease holds" from a refusal. This module holds no behaviour.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from typing import BinaryIO, Protocol, runtime_checkable

from storage.records import Claim, JobRecord
from storage.states import JobErrorCode


class Unreachable(RuntimeError):
    """A call that could not reach its service after the transport's own retries. It changed nothing, or it is
    fenced by the lease token so that repeating it changes nothing: the caller may retry it."""


class JobPort(Protocol):
    """Job-state calls of a running batch; every write is fenced by the claim's lease token."""

    def claim_for_message(self, job_id: str, worker_id: str, lease_seconds: float, max_items: int,
                          max_pixels: int, kinds: Sequence[str] | None = None,
                          wait_seconds: float = 0.0) -> list[Claim]: ...
    def claim_newcomer(self, queue: str | None, worker_id: str, lease_seconds: float, max_pixels: int,
                       held: Collection[str], wait_seconds: float = 0.0) -> list[Claim]: ...  # None: the gateway's
    def get_many(self, job_ids: Iterable[str]) -> list[JobRecord]: ...
    def renew(self, claims: Iterable[Claim], lease_seconds: float) -> list[Claim]: ...
    def set_progress(self, claim: Claim, step: int, total: int) -> bool: ...
    def set_progress_many(self, reports: Sequence[tuple[Claim, int, int]]) -> set[str]: ...
    def cancel_requested_ids(self, job_ids: Iterable[str]) -> set[str]: ...
    def complete(self, claim: Claim, result_keys: Sequence[str], result_text: str | None = None,
                 timings: dict[str, float] | None = None, model_id: str | None = None,
                 model_revision: str | None = None) -> bool: ...
    def fail(self, claim: Claim, code: JobErrorCode, message: str) -> bool: ...
    def cancel_running(self, claim: Claim) -> bool: ...
    def release(self, claims: Iterable[Claim]) -> int: ...


@runtime_checkable
class QueueClaims(Protocol):
    """The direct transport's claim of one named queue (`storage.jobs.store.JobStore.claim_next`); the gateway
    has none (the API picks among the token's queues)."""

    def claim_next(self, queue: str, worker_id: str, lease_seconds: float, max_items: int, max_pixels: int,
                   claim_id: str | None = None, above: Mapping[str, int] | None = None) -> list[Claim]: ...
    def queues_worth_claiming(self, queues: Sequence[str]) -> set[str]: ...  # one read for several queues


class CancelHintSource(Protocol):
    """Where a running batch hears its jobs' cancel requests as they are made, instead of reading them every
    step (`workers.runner.progress.BackgroundCancelWatcher`): the direct worker's Redis subscription
    (`workers.runner.wakeups.CancelHints`) or a gateway worker's cancel long-polls
    (`workers.transport.gateway_cancels`)."""

    @property
    def trusted_since(self) -> float | None: ...  # from when (monotonic) every cancel is heard; None: not now
    def listen(self, listener: Callable[[list[str] | None], None]) -> None: ...  # ids of a hint; None: resync
    def unlisten(self, listener: Callable[[list[str] | None], None]) -> None: ...
    def heard(self, job_ids: Iterable[str]) -> set[str]: ...  # those a recent hint named
    @property
    def rereads(self) -> bool: ...  # the hints are answers of reads of the truth, made now and then anyway (a
    # gateway poll reads when it starts): a watcher takes them as read, and needs no read in case one was lost;
    # Redis pub/sub hints are only news (read when heard, and once a second in case)


@runtime_checkable
class HearsCancels(Protocol):
    """A transport that brings its own cancel hints (the gateway's long-poll); a direct worker's come from Redis."""

    def cancel_hints(self) -> CancelHintSource | None: ...
    def stop_cancel_hints(self) -> None: ...


class ObjectPort(Protocol):
    """Reading a job's input and writing its results (keys from `storage.objects.base`)."""

    def get(self, key: str, verify: bool = False) -> bytes: ...
    def put(self, key: str, data: bytes | BinaryIO, content_type: str = "application/octet-stream",
            max_bytes: int | None = None) -> object: ...  # a receipt no caller reads
