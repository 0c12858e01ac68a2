"""Hostile input against a running API: each request must get its 4xx with the right error code, never a 5xx.

Covers malformed and mistyped bodies, out-of-range parameters, oversized and malformed uploads, decompression
bombs, SSRF webhook URLs, cross-tenant access, missing or bad keys, random junk, and a burst over the rate limit.
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import random
import struct
import zlib
from dataclasses import dataclass, field
from typing import Any

import httpx
from PIL import Image


@dataclass
class HostileOutcome:
    sent: int = 0
    by_status: dict[int, int] = field(default_factory=dict)
    server_errors: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    rate_limited: int = 0

    def record(self, label: str, resp: httpx.Response, expect_status: set[int], expect_code: str | None) -> None:
        self.sent += 1
        self.by_status[resp.status_code] = self.by_status.get(resp.status_code, 0) + 1
        if resp.status_code >= 500:
            self.server_errors.append(f"{label}: {resp.status_code} {resp.text[:200]}")
            return
        code = None
        with contextlib.suppress(ValueError, AttributeError):
            code = resp.json().get("error", {}).get("code")
        if resp.status_code not in expect_status or (expect_code and code != expect_code):
            self.unexpected.append(f"{label}: got {resp.status_code} {code!r}, expected {sorted(expect_status)} "
                                   f"{expect_code!r}: {resp.text[:160]}")

    def table(self) -> str:
        return (f"| hostile requests | {self.sent} |\n| by status | {dict(sorted(self.by_status.items()))} |\n"
                f"| 5xx (must be 0) | {len(self.server_errors)} |\n| wrong answers (must be 0) | "
                f"{len(self.unexpected)} |\n| rate limited (429) | {self.rate_limited} |")


def _encoded(fmt: str) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (16, 16), (9, 9, 9)).save(buf, format=fmt)
    return buf.getvalue()


def png_bomb(side: int = 30_000) -> bytes:
    """A valid PNG header declaring side x side pixels, with a tiny compressed body (a decompression bomb)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    raw = zlib.compress(b"\x00" * (side + 1) * 64, 9)  # a few rows; the header is what matters
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", raw) + chunk(b"IEND", b""))


def data_url(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64," + base64.b64encode(data).decode()


def run_hostile(api_url: str, key: str, other_key: str, seed: int = 0,
                oversized_bytes: int = 21 * 1024 * 1024, burst: int = 0) -> HostileOutcome:
    out = HostileOutcome()
    rng = random.Random(seed)
    auth = {"Authorization": f"Bearer {key}"}
    gen = {"kind": "generate", "prompt": "a cat", "width": 64, "height": 64, "steps": 2}
    with httpx.Client(base_url=api_url, headers=auth, timeout=60) as c:
        def post(label: str, expect: set[int], code: str | None, **kw: Any) -> httpx.Response:
            resp = c.post("/v1/jobs", **kw)
            out.record(label, resp, expect, code)
            return resp

        post("malformed json", {400}, "invalid_json", content=b'{"kind": "generate", "prompt": ',
             headers={"content-type": "application/json"})
        post("wrong types", {422}, "validation_error", json=dict(gen, width="big"))
        post("size out of range", {422}, None, json=dict(gen, width=333, height=333))
        post("steps out of range", {422}, None, json=dict(gen, steps=100_000))
        post("empty prompt", {422}, None, json=dict(gen, prompt=""))
        post("prompt over token limit", {422}, "prompt_too_long", json=dict(gen, prompt="word " * 4000))
        post("unknown kind", {422}, None, json={"kind": "dance"})
        post("bad image bytes", {400, 422}, "invalid_image",
             json={"kind": "understand", "question": "what?", "image": data_url(b"not an image at all")})
        post("decompression bomb", {400, 413, 422}, "image_too_large",
             json={"kind": "understand", "question": "what?", "image": data_url(png_bomb())})
        post("unsupported format (BMP)", {415}, "unsupported_media_type",
             files={"image": ("x.bmp", _encoded("BMP"), "image/bmp")}, data={"kind": "understand", "question": "what?"})
        post("unsupported format (GIF data URL)", {415}, "unsupported_media_type",
             json={"kind": "understand", "question": "what?", "image": data_url(_encoded("GIF"), "image/gif")})
        post("not an image (SVG)", {400, 415}, None,
             files={"image": ("x.svg", b"<svg xmlns='http://www.w3.org/2000/svg'/>", "image/svg+xml")},
             data={"kind": "understand", "question": "what?"})
        post("oversized upload", {413}, "payload_too_large",
             files={"image": ("big.png", b"\x89PNG" + b"\x00" * oversized_bytes, "image/png")},
             data={"kind": "understand", "question": "what?"})
        for url in ("http://10.1.2.3/hook", "http://169.254.169.254/latest/meta-data", "http://[::1]:8080/x",
                    "http://0.0.0.0/x", "http://[fe80::1]/x", "ftp://example.com/x"):
            post(f"ssrf {url}", {422}, "unsafe_webhook_url", json=dict(gen, webhook_url=url))
        # cross-tenant access: another key's job is invisible
        job = c.post("/v1/jobs", json=dict(gen, seed=1)).json()
        with httpx.Client(base_url=api_url, headers={"Authorization": f"Bearer {other_key}"}, timeout=30) as other:
            for label, resp in (("cross-tenant get", other.get(f"/v1/jobs/{job['id']}")),
                                ("cross-tenant cancel", other.post(f"/v1/jobs/{job['id']}/cancel")),
                                ("cross-tenant events", other.get(f"/v1/jobs/{job['id']}/events"))):
                out.record(label, resp, {404}, "not_found")
            listed = other.get("/v1/jobs").json().get("data", [])
            if any(j["id"] == job["id"] for j in listed):
                out.unexpected.append("cross-tenant list shows another key's job")
        out.record("no key", httpx.get(f"{api_url}/v1/jobs", timeout=30), {401}, "unauthorized")
        out.record("bad key", httpx.get(f"{api_url}/v1/jobs", headers={"Authorization": "Bearer upk_nope"},
                                        timeout=30), {401}, "unauthorized")
        out.record("unknown job", c.get("/v1/jobs/00000000-0000-7000-8000-000000000000"), {404}, "not_found")
        # random junk: nested JSON of random shapes never gets a 5xx
        for i in range(40):
            body = _junk(rng, depth=3)
            resp = c.post("/v1/jobs", content=json.dumps(body).encode(), headers={"content-type": "application/json"})
            out.record(f"junk {i}", resp, {400, 401, 404, 409, 413, 415, 422, 429, 202, 200}, None)
    if burst:
        with httpx.Client(base_url=api_url, headers={"Authorization": f"Bearer {other_key}"}, timeout=30) as c:
            for _ in range(burst):
                resp = c.get("/v1/jobs")
                if resp.status_code == 429:
                    out.rate_limited += 1
                    if "retry-after" not in resp.headers:
                        out.unexpected.append("429 without Retry-After")
                out.record("burst", resp, {200, 429}, None)
    return out


def _junk(rng: random.Random, depth: int) -> Any:
    choice = rng.randrange(7 if depth > 0 else 5)
    if choice == 0:
        return rng.randint(-(2**70), 2**70)
    if choice == 1:
        return rng.random() * 10 ** rng.randint(-5, 40)
    if choice == 2:
        return "".join(chr(rng.randrange(0x20, 0x2FFF)) for _ in range(rng.randrange(0, 40)))
    if choice == 3:
        return rng.choice([None, True, False])
    if choice == 4:
        return rng.choice(["generate", "edit", "understand", "data:image/png;base64,AAAA", {"upload_id": "x"}])
    if choice == 5:
        return [_junk(rng, depth - 1) for _ in range(rng.randrange(0, 4))]
    keys = ["kind", "prompt", "width", "height", "steps", "image", "question", "seed", "webhook_url", "metadata",
            "num_images", "guidance_scale", "temperature", rng.choice(["x", "__proto__", "🙂"])]
    return {rng.choice(keys): _junk(rng, depth - 1) for _ in range(rng.randrange(0, 6))}
