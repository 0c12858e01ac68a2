"""The one GPU measuring script runs end to end in its CPU dry-run mode and writes every table as JSON."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.gpu_suite import SECTIONS, main


def test_dry_run_writes_every_table(tmp_path: Path) -> None:
    summary = main(["--dry-run", "--out", str(tmp_path), "--only", ",".join(s for s in SECTIONS if s != "cap")])
    assert {k: v["status"] for k, v in summary["sections"].items()} == {
        s: "ok" for s in SECTIONS if s != "cap"}
    rows = json.loads((tmp_path / "throughput.json").read_text())["rows"]
    assert {(r["fast"], r["batch"]) for r in rows} == {(False, 1), (False, 2), (True, 1), (True, 2)}
    assert all(r["achieved_tflops"] > 0 for r in rows)
    parts = json.loads((tmp_path / "parts.json").read_text())["rows"]
    assert {"llm", "mar_encoder", "mar_decoder", "head", "vae", "host"} <= set(parts[0])
    cont = json.loads((tmp_path / "continuous.json").read_text())
    assert [r["rows"] for r in cont["step_seconds"]] == [1, 2, 4, 8] and all(r["seconds"] > 0 for r in cont["step_seconds"])
    assert [r["mode"] for r in cont["images"]] == ["whole", "continuous"] and all(r["images_per_s"] > 0 for r in cont["images"])
    assert [r["mode"] for r in cont["questions"]] == ["whole", "continuous"] and cont["answers_that_differ"] == 0
    table = json.loads((tmp_path / "memory_table.json").read_text())
    assert {(r["kind"], r["size"], r["batch"]) for r in table["rows"]} == {
        (k, 64, b) for k in ("generate", "edit", "understand") for b in (1, 2)}
    drift = json.loads((tmp_path / "drift.json").read_text())
    assert all(0 <= e <= 2 / 255 + 1e-6 for e in drift["tiny_float32_fast_vs_eager_64px"])
    assert json.loads((tmp_path / "summary.json").read_text())["sections"] == summary["sections"]


@pytest.mark.system  # the capped run is a child process
def test_dry_run_cap_child(tmp_path: Path) -> None:
    summary = main(["--dry-run", "--out", str(tmp_path), "--only", "cap"])
    assert summary["sections"]["cap"]["status"] == "ok"
    cap = json.loads((tmp_path / "cap_8gib.json").read_text())
    assert cap["returncode"] == 0
    assert [(r["kind"], r["ok"]) for r in cap["runs"]] == [("generate", True), ("edit", True), ("understand", True)]
