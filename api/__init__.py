"""The HTTP API: FastAPI app, routes, request validation and admission; never imports torch or workers."""
