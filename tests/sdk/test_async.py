"""The asyncio SDK against the real stack: submit, wait over SSE, stream a batch's results, save."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from tests.support.stack import Stack
from unipic_client import AsyncClient

pytestmark = pytest.mark.system


def test_async_generate_wait_and_batch(prod_stack: Stack, new_key: str, tmp_path: Path) -> None:
    async def scenario() -> None:
        async with AsyncClient(prod_stack.url, new_key) as client:
            job = await client.generate("an async owl", size=64, steps=2)
            done = await client.wait(job, timeout=120)
            assert done.status == "succeeded", done.error
            (path,) = await client.save(done, tmp_path)
            assert path.name == f"{job.id}.png" and path.stat().st_size > 0
            polled = await client.wait(await client.generate("polled", size=64, steps=2), timeout=120, sse=False)
            assert polled.status == "succeeded"
            batch = await client.submit_batch([{"kind": "generate", "prompt": f"a{i}", "size": 64, "steps": 2}
                                               for i in range(2)])
            results = [j async for j in client.iter_results(batch, timeout=180)]
            assert len(results) == 2 and {j.status for j in results} == {"succeeded"}
            assert (await client.get_batch(batch.id)).counts.succeeded == 2

    asyncio.run(scenario())
