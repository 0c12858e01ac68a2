"""The shared session fixtures other packages rely on are wired to real services and a migrated schema."""

from __future__ import annotations

from typing import Any

from sqlalchemy import inspect

from storage.records import NewJob


def test_shared_fixtures(job_store: Any, object_store: Any, owner_id: str, engine: Any, settings: Any,
                         settings_env: dict[str, str]) -> None:
    assert "jobs" in inspect(engine).get_table_names() and engine.dialect.name == "postgresql"
    rec = job_store.create(NewJob(owner_id, "understand", {"size": 256}, "understand:256", "q"))
    assert job_store.get(rec.id).status == "queued"
    job_store.request_cancel(rec.id, owner_id)  # leave nothing queued in the shared schema
    object_store.put("inputs/fixture/image.png", b"abc", "image/png")
    assert object_store.get("inputs/fixture/image.png") == b"abc"
    object_store.delete("inputs/fixture/image.png")
    assert settings_env["UNIPIC_DB_SCHEMA"] == settings.db_schema
    assert settings_env["UNIPIC_STORAGE_URL"].startswith("s3://")
