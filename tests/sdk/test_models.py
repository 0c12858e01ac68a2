"""The SDK's models have the fields of the API's response schemas in its OpenAPI document, so neither side can
rename or add a field without the other noticing."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import BaseModel

from unipic_client import models

PAIRS = [
    (models.Job, "JobOut"), (models.JobsPage, "JobsPage"), (models.Batch, "BatchOut"),
    (models.BatchesPage, "BatchesPage"), (models.BatchCounts, "BatchCounts"), (models.Progress, "Progress"),
    (models.Image, "ImageOut"), (models.Result, "ResultOut"), (models.JobError, "JobErrorOut"),
    (models.Execution, "ExecutionOut"), (models.Upload, "UploadOut"), (models.UploadDone, "UploadDone"),
]


@pytest.fixture(scope="module")
def schemas(migrated: Any) -> dict[str, Any]:
    from fastapi.testclient import TestClient

    from api.app import create_app

    with TestClient(create_app(migrated)) as client:
        return dict(client.get("/openapi.json").json()["components"]["schemas"])


@pytest.mark.parametrize(("model", "name"), PAIRS, ids=[name for _m, name in PAIRS])
def test_model_fields_match_the_openapi_schema(schemas: dict[str, Any], model: type[BaseModel], name: str) -> None:
    schema = schemas[name]
    assert set(model.model_fields) == set(schema["properties"]), name
    required = set(schema.get("required", []))
    sdk_required = {n for n, f in model.model_fields.items() if f.is_required()}
    assert sdk_required <= required, f"{name}: the SDK requires fields the API may leave out"
