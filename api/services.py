"""The long-lived objects one API process uses, built from settings when the app starts.

`Services.build(settings)` makes the database engine, the stores, the object store, the ephemeral store, the
Celery sender, the prompt counter and the admission checks once; routes reach them through `api.deps`.
Every store and query object the API uses is a field here, built once per process: no route or helper builds
one from a session factory on the spot (the factory itself is not exposed).
Nothing is built at import time, so a test can point a fresh app at its own schema, Redis db and bucket.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime

from api.auth import KeyCache
from api.enqueue import Enqueuer
from api.events.queue_positions import QueuePositions
from api.intake.admission import Admission
from api.intake.images import configure_pil
from api.intake.models import ModelCatalog
from api.intake.params import JobPreparer
from api.intake.tokens import PromptCounter
from api.intake.writer import JobIntake
from api.worker_coverage import QueueCoverage
from storage.batches.manifests import Manifests
from storage.batches.store import BatchStore
from storage.db import DatabaseEngine, make_engine, make_session_factory
from storage.ephemeral import Ephemeral, make_ephemeral
from storage.fleet.queries import FleetQueries
from storage.fleet.registry import WorkerRegistry
from storage.fleet.token_cache import WorkerTokenCache
from storage.fleet.tokens import WorkerTokenStore
from storage.jobs.events import attach_from_settings
from storage.jobs.publishing import BackgroundPublisher
from storage.jobs.store import JobStore
from storage.keys import KeyStore
from storage.lifecycle.store import Lifecycle
from storage.objects.base import ObjectStore, make_object_store
from storage.settings import Settings
from storage.status.activity import ActivityQueries
from storage.status.queries import StatusQueries
from storage.webhooks.store import WebhookStore

log = logging.getLogger(__name__)


@dataclass
class Services:
    settings: Settings
    engine: DatabaseEngine
    jobs: JobStore
    batches: BatchStore
    keys: KeyStore
    objects: ObjectStore
    ephemeral: Ephemeral
    enqueuer: Enqueuer
    preparer: JobPreparer
    admission: Admission
    key_cache: KeyCache
    intake: JobIntake
    lifecycle: Lifecycle
    webhooks: WebhookStore
    registry: WorkerRegistry
    worker_tokens: WorkerTokenStore
    worker_token_cache: WorkerTokenCache
    status: StatusQueries
    activity: ActivityQueries
    fleet: FleetQueries
    coverage: QueueCoverage
    models: ModelCatalog
    positions: QueuePositions
    manifests: Manifests
    publisher: BackgroundPublisher | None  # job events, on their own thread (None: no Redis)

    @classmethod
    def build(cls, settings: Settings) -> Services:
        if settings.embedded:
            settings.ensure_data_dir()
        engine = make_engine(settings)
        sessions = make_session_factory(engine)
        publisher = attach_from_settings(sessions, settings)  # job events go out after commit (storage.jobs.events)
        jobs = JobStore(sessions)
        ephemeral = make_ephemeral(settings, sessions)
        configure_pil(settings.max_upload_pixels)
        counter = PromptCounter(settings.max_prompt_tokens)
        keys = KeyStore(sessions)
        enqueuer = Enqueuer(settings, jobs)
        objects = make_object_store(settings)
        stale_after = 3 * settings.heartbeat_seconds  # a worker silent for three heartbeats is gone
        registry = WorkerRegistry(sessions)
        batches = BatchStore(sessions)
        coverage = QueueCoverage(registry, stale_after)
        models = ModelCatalog(settings, coverage)
        worker_tokens = WorkerTokenStore(sessions)
        return cls(
            settings=settings, engine=engine, jobs=jobs, batches=batches, keys=keys,
            objects=objects, ephemeral=ephemeral, enqueuer=enqueuer,
            preparer=JobPreparer(settings, counter, models), admission=Admission(settings, jobs, ephemeral),
            key_cache=KeyCache(keys), intake=JobIntake(jobs, enqueuer),
            lifecycle=Lifecycle(sessions, objects), webhooks=WebhookStore(sessions),
            registry=registry, worker_tokens=worker_tokens, worker_token_cache=WorkerTokenCache(worker_tokens),
            status=StatusQueries(sessions), activity=ActivityQueries(sessions),
            fleet=FleetQueries(sessions, stale_after), coverage=coverage, models=models,
            positions=QueuePositions(sessions), manifests=Manifests(sessions, batches, objects, settings),
            publisher=publisher,
        )

    def presign(self, key: str) -> tuple[str, datetime]:
        """A time-limited GET link for an object."""
        return self.objects.presign_get(key, self.settings.presign_expiry_seconds)

    def open(self) -> None:
        """(Re)start background writers: at app startup, which may follow a shutdown (tests, reloads)."""
        self.intake.open()

    def close(self) -> None:
        self.intake.close()
        self.enqueuer.close()
        close = getattr(self.ephemeral, "close", None)
        if close is not None:
            close()
        if self.publisher is not None:
            self.publisher.close()  # what the last requests committed goes out before the process ends
        self.engine.dispose()
