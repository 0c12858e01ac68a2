"""unipic_client: the Python SDK of unipic-queue.

    from unipic_client import Client
    client = Client("http://127.0.0.1:8000", "upk_...")
    job = client.wait(client.generate("a red fox", size=256))
    client.save(job, "fox.png")

It depends on httpx, pydantic, standardwebhooks and httpx-sse only, and needs nothing of the server.
"""

from unipic_client.aio import AsyncClient
from unipic_client.client import Client
from unipic_client.errors import ApiError, UnipicError, WaitTimeout, WebhookVerificationError
from unipic_client.models import Batch, BatchCounts, Job, JobsPage, Progress, WebhookEvent
from unipic_client.retrying import RetryPolicy

__version__ = "0.1.0"
__all__ = [
    "ApiError", "AsyncClient", "Batch", "BatchCounts", "Client", "Job", "JobsPage", "Progress", "RetryPolicy",
    "UnipicError", "WaitTimeout", "WebhookEvent", "WebhookVerificationError", "__version__",
]
