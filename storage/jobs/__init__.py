"""Jobs: the job state machine and everything that reads or announces a job.

Owns `JobStore` (`store`: THE state machine, the only code that changes a job's `status`, every transition a
fenced compare-and-set with its webhook outbox rows in the same transaction), the read-only `queries` it
inherits, job `events` published on Redis after commit, `job.progress` webhook events (`progress`), the
per-kind job `params` and their defaults, and job `ids` (UUIDv7). It asks `storage.scheduling` which jobs a
claim takes and `storage.batches` to finish a batch; it knows nothing of HTTP, Celery or the model.
"""
