"""Settings only a worker process reads, on top of the shared `Settings`.

`WorkerSettings` extends `storage.settings.Settings` with the knobs the API never needs: which device the
model worker runs on, its metrics port and its shutdown grace period. They are read from the same `UNIPIC_*`
environment (e.g. `UNIPIC_WORKER_DEVICE=cuda:0`), so `unipic worker` and `celery -A workers.gpu worker` agree.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field, ValidationError, field_validator

from storage.settings import Settings, SettingsError


class WorkerSettings(Settings):
    """Shared settings plus the model worker's own."""

    worker_device: str = Field(default="cpu", description="cpu, cuda or cuda:N")
    worker_metrics_port: int = Field(default=0, ge=0, le=65535, description="Prometheus port; 0 = off")
    worker_shutdown_grace_seconds: float = Field(default=30.0, ge=0)
    worker_name: str = Field(default="", description="Worker id prefix; default: the host name")

    @field_validator("worker_device")
    @classmethod
    def _device(cls, v: str) -> str:
        if v not in ("cpu", "cuda", "mps") and not (v.startswith("cuda:") and v[5:].isdigit()):
            raise ValueError("expected cpu, cuda, cuda:N or mps")
        return v


def load_worker_settings(**overrides: Any) -> WorkerSettings:
    """Worker settings from the environment (plus overrides), with the same clear errors as `load_settings`."""
    try:
        return WorkerSettings(**overrides)
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            name = "UNIPIC_" + "_".join(str(p) for p in err["loc"]).upper() if err["loc"] else "UNIPIC_*"
            lines.append(f"{name}: {err['msg']} (got {err.get('input')!r})")
        raise SettingsError("invalid settings:\n  " + "\n  ".join(lines)) from None
