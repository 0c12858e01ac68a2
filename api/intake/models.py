"""Which model a job names, and the models this deployment serves (`GET /v1/models`).

A job may name a `model`. No name, `unipic` or the default's own name (`UNIPIC_DEFAULT_MODEL`) mean the
deployment's default model: always accepted, with or without a live worker, so jobs queue during a deploy as
they always did. Any other name is accepted while some live worker holds it (`UNIPIC_MODEL_NAME`, advertised in
the `workers` table, read through `api.worker_coverage.QueueCoverage`, cached a few seconds); anything else is
404 `model_not_found`, at validation, before anything is stored. A job accepted for a named model whose workers
then go away waits in that model's queues until one comes back, or expires at its deadline like any job.
A name resolves to a routing key (`storage.routing.served_model`: None for the default) that the job stores and
its queue carries. Knows nothing of HTTP beyond the `ApiError` it raises.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from api.errors import ApiError
from api.worker_coverage import QueueCoverage
from storage.fleet.registry import WorkerRecord
from storage.routing import DEFAULT_MODEL_ALIAS, served_model
from storage.settings import Settings


@dataclass(frozen=True)
class ServedModel:
    """One model as `GET /v1/models` lists it."""

    name: str
    default: bool
    created: int = 0  # unix seconds: when its longest-running live worker started (0: no live worker)
    workers: int = 0  # live workers holding it
    checkpoint_hashes: list[str] = field(default_factory=list)  # what they advertise (more than one: mixed fleet)


class ModelCatalog:
    """Resolves the model a request names and lists the served ones, for one deployment."""

    def __init__(self, settings: Settings, coverage: QueueCoverage) -> None:
        self.default = settings.default_model
        self.coverage = coverage

    def resolve(self, name: str | None) -> str | None:
        """The routing key of the model `name` names (None: the default); 404 `model_not_found` otherwise."""
        key = served_model(name or "", self.default)
        if key is not None and key not in self._held():
            raise self.not_found(key)
        return key

    def name_of(self, key: str | None) -> str:
        """The name a job's model goes by (its routing key, or the default's name)."""
        return self.default if key is None else key

    def listing(self) -> list[ServedModel]:
        """The default (first, and again as `unipic`), then every model some live worker holds, by name."""
        held = self._held()
        default = _served(self.default, True, held.pop(None, []))
        alias = [] if self.default == DEFAULT_MODEL_ALIAS else [_served(DEFAULT_MODEL_ALIAS, True, default)]
        named = [_served(name, False, held[name]) for name in sorted(k for k in held if k is not None)]
        return [default, *alias, *named]

    def get(self, name: str) -> ServedModel:
        """One served model by the name a client gives (404 `model_not_found` otherwise)."""
        key = self.resolve(name)
        found = next(m for m in self.listing() if m.name == self.name_of(key))
        return found if name == found.name else _served(name, found.default, found)

    def not_found(self, name: str) -> ApiError:
        served = ", ".join(m.name for m in self.listing())
        return ApiError(404, "model_not_found", f"The model `{name[:100]}` does not exist or no live worker serves "
                                                f"it; this server serves: {served}", "model")

    def _held(self) -> dict[str | None, list[WorkerRecord]]:
        """Live workers by the model they hold (None: the default)."""
        held: dict[str | None, list[WorkerRecord]] = {}
        for worker in self.coverage.live():
            held.setdefault(served_model(worker.model_name or "", self.default), []).append(worker)
        return held


def _served(name: str, default: bool, workers: list[WorkerRecord] | ServedModel) -> ServedModel:
    if isinstance(workers, ServedModel):  # another name for the same model
        return ServedModel(name, default, workers.created, workers.workers, workers.checkpoint_hashes)
    created = min((int(w.started_at.timestamp()) for w in workers), default=0)
    hashes = sorted({w.checkpoint_hash for w in workers if w.checkpoint_hash})
    return ServedModel(name, default, created, len(workers), hashes)
