"""The read-only status page `GET /ui`: aggregates for anyone, the caller's own work with a key.

Owns the page's routes (`routes`, with `GET /v1/workers`), its Jinja2 `templates`, the operations panels
(`panels`) and the inline SVG charts (`charts`). The read models every surface shares (`JobOut`, `BatchOut`)
are `api.views`, not this package's. It writes nothing.
"""
