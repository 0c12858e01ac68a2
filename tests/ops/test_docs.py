"""Offline docs: `/docs` and `/redoc` load their scripts and styles from the API itself, never from a CDN."""

from __future__ import annotations

import re
from typing import Any


def test_swagger_ui_and_redoc_pages_reference_only_local_assets(ops_client: Any) -> None:
    for page in ("/docs", "/redoc"):
        html = ops_client.get(page).text
        urls = re.findall(r"""(?:src|href)=["']([^"']+)["']""", html)
        assert urls, page
        assert all(u.startswith("/") for u in urls), (page, urls)
        assert "cdn" not in html.lower(), page
        for url in urls:
            if url.startswith("/docs-static/"):
                answer = ops_client.get(url)
                assert answer.status_code == 200 and len(answer.content) > 1000, url


def test_the_docs_assets_are_not_in_the_api_schema(ops_client: Any) -> None:
    paths = ops_client.get("/openapi.json").json()["paths"]
    assert not any(p.startswith(("/docs", "/redoc")) for p in paths)
