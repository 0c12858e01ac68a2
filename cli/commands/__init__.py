"""The `unipic` subcommands, one module each, mounted by `cli.main`.

Each module registers its commands (`register(app)` or a typer `app`) and imports the heavy packages (torch, the
model, FastAPI, Celery workers) inside the command function, so `unipic --help` and the client commands start
fast. Shared helpers (the SDK client, output mode, `.env`, process supervision) stay in `cli/`.
"""
