"""The lifecycle of stored data: upload slots, result and input TTLs, erase on request, quotas.

Owns `Lifecycle` (`store`: upload slots and the per-key storage quota, purging expired results, erasing a job or
a batch) and the exact per-key active-job quota enforced inside the insert's transaction (`quota`). Job states
are untouched: purging tombstones the row (`purged_at`), it never changes a status.
"""
