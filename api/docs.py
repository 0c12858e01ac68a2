"""`/docs` (Swagger UI) and `/redoc` (ReDoc) served with no CDN: their assets come from the installed package.

The scripts and styles ship in the `fastapi-offline` wheel (`fastapi_offline/static`); this module mounts that
directory at `/docs-static` and renders FastAPI's own HTML pages pointing at it, so the docs work on a machine
with no internet access. It knows nothing of the OpenAPI document itself (`api.openapi` owns it).
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

from fastapi import FastAPI
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

STATIC_PATH = "/docs-static"


def assets_dir() -> Path:
    """The packaged Swagger UI / ReDoc assets."""
    return Path(str(files("fastapi_offline") / "static"))


def install_docs(app: FastAPI, openapi_url: str = "/openapi.json") -> None:
    """Add `/docs`, `/docs/oauth2-redirect` and `/redoc` (create the app with `docs_url=None, redoc_url=None`)."""
    app.mount(STATIC_PATH, StaticFiles(directory=assets_dir()), name="docs-static")

    @app.get("/docs", include_in_schema=False)
    def swagger_ui() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=openapi_url, title=f"{app.title} - docs",
            swagger_js_url=f"{STATIC_PATH}/swagger-ui-bundle.js", swagger_css_url=f"{STATIC_PATH}/swagger-ui.css",
            swagger_favicon_url=f"{STATIC_PATH}/favicon.png", oauth2_redirect_url="/docs/oauth2-redirect",
        )

    @app.get("/docs/oauth2-redirect", include_in_schema=False)
    def swagger_redirect() -> HTMLResponse:
        return get_swagger_ui_oauth2_redirect_html()

    @app.get("/redoc", include_in_schema=False)
    def redoc() -> HTMLResponse:
        return get_redoc_html(openapi_url=openapi_url, title=f"{app.title} - reference",
                              redoc_js_url=f"{STATIC_PATH}/redoc.standalone.js",
                              redoc_favicon_url=f"{STATIC_PATH}/favicon.png", with_google_fonts=False)
