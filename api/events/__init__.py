"""Events: watching jobs and batches change, as server-sent events and bounded waits.

Owns the per-process event `hub` (one Redis subscription, fanned out in memory), the job and batch streams
(`job_stream`, `batch_stream`), the slow safety net for lost messages (`reconciler`), `?wait=N` (`waits`) and
queue positions shared by every stream (`queue_positions`). It never writes a job; reads go through the stores.
"""
