"""Batches: batch rows, their completion, listings, idempotency keys and results manifests.

Owns `BatchStore` (`store`), finishing a batch inside the transaction that made its last job terminal
(`completion`), the Idempotency-Key lookup (`keys`), per-status counts for a page of batches (`listing`), and
the JSONL results manifest (`manifests`). A batch's jobs change state only through
`JobStore` (`storage.jobs.store`): nothing here writes a job row. It knows nothing of HTTP.
"""
