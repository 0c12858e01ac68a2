"""The README's SDK and OpenAI examples, run as written against the real stack (in a subprocess, with the
stack's URL and a fresh key in the environment, as a user would)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.stack import Stack

pytestmark = pytest.mark.system

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()


def example(name: str) -> str:
    match = re.search(rf"<!-- {name}:start -->\n```python\n(.*?)```\n<!-- {name}:end -->", README, re.S)
    assert match, f"README has no {name} block"
    return match.group(1)


@pytest.mark.parametrize("name", ["sdk-example", "openai-example"])
def test_readme_example_runs(name: str, prod_stack: Stack, new_key: str, tmp_path: Path) -> None:
    (tmp_path / "items.jsonl").write_text("".join(
        json.dumps({"kind": "generate", "prompt": f"p{i}", "custom_id": f"c{i}", "size": 64, "steps": 2}) + "\n"
        for i in range(2)))
    env = {**prod_stack.env, "UNIPIC_API_URL": prod_stack.url, "UNIPIC_API_KEY": new_key}
    result = subprocess.run([sys.executable, "-c", example(name)], cwd=tmp_path, env=env, capture_output=True,
                            text=True, timeout=600, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    if name == "sdk-example":
        assert (tmp_path / "lighthouse.png").stat().st_size > 0
        assert len((tmp_path / "manifest.jsonl").read_text().splitlines()) == 2
        assert sorted(line.split()[0] for line in result.stdout.splitlines()) == ["c0", "c1"]
