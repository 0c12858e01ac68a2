"""The worker gateway: `/v1/worker/...`, how a remote worker with an HTTPS URL and a token runs jobs.

Owns worker-token authentication (`auth`), what a remote worker may write and whether it is a valid result
(`result_checks`), heartbeats batched into one write per interval (`heartbeats`) and the routes (`routes`), every call through `JobStore` with the lease token as the
fence. It knows nothing of the client-facing surfaces (intake, the OpenAI routes, the status page).
"""
