"""Stopping the API process's background asyncio tasks (the event hub's subscription, the stream reconciler).

Shutdown must never hang on one of them: a task may have been started on another event loop (a test client's),
or be stuck closing a dead Redis connection. It knows nothing of what the tasks do.
"""

from __future__ import annotations

import asyncio

STOP_TIMEOUT_S = 3.0  # the most an app shutdown waits for one background task


async def stop_task(task: asyncio.Task[None] | None) -> None:
    """Cancel `task` and wait for it, bounded; a task of another loop is left to that loop to finish."""
    if task is None or task.done():
        return
    task.cancel()
    if task.get_loop() is asyncio.get_running_loop():
        await asyncio.wait({task}, timeout=STOP_TIMEOUT_S)
