"""Intake: from an HTTP request to job rows and broker messages.

Owns reading bodies the routes accept by hand (`bodies`: JSON, multipart, arrays, JSONL), refusing JSON a
database could not store (`json_limits`), settings-dependent params checks and routing (`params`), input images
(`images`), prompt tokens (`tokens`), admission control (`admission`: rate, quota), the group-commit writer
(`writer`), submission of one job or a batch (`submission`) and batch Idempotency-Key replay (`batch_replay`).
It knows nothing of how jobs are later watched, run or shown.
"""
