"""Celery workers: the model worker (`workers.gpu`: batching, leases, progress, OOM splitting, shutdown) and the
torch-free CPU worker (`workers.cpu`: the sweeper and webhook delivery). Postgres is the truth; they only move
jobs through `storage.jobs.store.JobStore`."""
