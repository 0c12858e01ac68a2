"""`unipic model info`: per-module parameter counts of the released configuration (spec §2.1, §3)."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from cli.main import app


def test_model_info_json_counts_for_unipic_1_5b():
    result = CliRunner().invoke(app, ["model", "info", "unipic-1.5b", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    m = data["modules"]
    assert 1.53e9 < m["llm"] < 1.55e9
    assert 940e6 < m["mar"] < 950e6 and 148e6 < m["mar.diffloss"] < 154e6
    assert 64e6 < m["vae"] < 68e6
    assert 4.2e6 < m["proj_in"] < 4.4e6 and 4.2e6 < m["proj_out"] < 4.4e6
    assert 420e6 < m["siglip2"] < 435e6 and 4.0e6 < m["siglip2_proj"] < 4.3e6
    assert data["total"] == sum(v for k, v in m.items() if k != "mar.diffloss")
    assert data["weight_bytes"]["bfloat16"] * 2 == data["weight_bytes"]["float32"]
    assert data["tokens"]["1024"] == {"grid": 64, "image_tokens": 4096, "llm_image_slots": 4160}


def test_model_info_table_and_unknown_config():
    runner = CliRunner()
    result = runner.invoke(app, ["model", "info", "tiny"])
    assert result.exit_code == 0 and "mar.diffloss" in result.output and "1024 px" in result.output
    bad = runner.invoke(app, ["model", "info", "huge"])
    assert bad.exit_code == 2
