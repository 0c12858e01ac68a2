"""Scheduling: the one policy that decides which queued jobs of a queue the next claim takes.

Owns the policy itself (`policy`: fair share across API keys per queue, then priority and age), the
`fair_share` rows it reads (virtual times: activated, charged, forgotten), and what is derived from the same
policy: queue positions and start estimates (`estimates`) and the whole-queue `snapshot` the API's event streams
share. It never changes a job's state (that is `storage.jobs`, which calls in here inside its transactions).
"""
