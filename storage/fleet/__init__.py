"""The fleet: worker processes, the tokens remote workers use, and what the operator's gauges read.

Owns `WorkerRegistry` (`registry`: register, heartbeat, stop, live workers), `WorkerTokenStore` (`tokens`:
`wk_...` gateway tokens, sha256 at rest, revocable), `WorkerTokenCache` (`token_cache`: an API process's cache of
them, refusing a revoked one within 2 s) and `FleetQueries` (`queries`: queue depth, running jobs, live workers,
webhook backlog in three grouped reads). A worker's jobs come back through lease expiry in `storage.jobs`, never
through this package.
"""
