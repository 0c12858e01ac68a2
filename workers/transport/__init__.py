"""How a model worker reaches jobs and objects: direct stores or the HTTPS gateway, behind one port.

Owns the `JobPort` / `ObjectPort` protocols the runner depends on (`base`; `JobStore` and `ObjectStore` satisfy
them directly; `store_retry` wraps the direct `JobStore` so settling a job rides out a database restart), the
remote implementation over `/v1/worker/...` (`gateway_client`) and the worker process that runs on it
(`gateway_runtime`). It knows nothing of how batches are formed.
"""
