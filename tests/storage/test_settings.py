"""Settings: embedded defaults with no configuration; invalid environment fails naming the variable."""

from __future__ import annotations

from pathlib import Path

import pytest

from storage.settings import SettingsError, load_settings


def test_embedded_defaults(tmp_path: Path) -> None:
    s = load_settings(data_dir=tmp_path)
    assert s.embedded
    assert s.database_url == f"sqlite:///{tmp_path.resolve() / 'unipic.sqlite'}"
    assert s.storage_url.startswith("file://") and s.broker_url.startswith("sqla+sqlite:///")


@pytest.mark.parametrize(("name", "value"), [
    ("UNIPIC_WORKER_MAX_BATCH", "0"),
    ("UNIPIC_WORKER_KINDS", "generate,paint"),
    ("UNIPIC_STORAGE_URL", "ftp://x"),
    ("UNIPIC_MODEL_DTYPE", "int8"),
    ("UNIPIC_LEASE_SECONDS", "soon"),
    ("UNIPIC_ALLOWED_SIZES", "256,500"),
    ("UNIPIC_WEBHOOK_ALLOWLIST", "10.0.0.0/99"),
])
def test_invalid_env_names_the_variable(monkeypatch: pytest.MonkeyPatch, name: str, value: str) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(SettingsError) as info:
        load_settings()
    assert name in str(info.value)


def test_env_is_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("UNIPIC_WORKER_KINDS", "understand")
    monkeypatch.setenv("UNIPIC_BROKER_URL", "redis://127.0.0.1:6379/3")
    s = load_settings()
    assert s.worker_kinds == ["understand"] and s.redis_url == "redis://127.0.0.1:6379/3" and not s.embedded
