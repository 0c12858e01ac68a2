"""README.md stays true: its configuration table is exactly what the code reads, and its commands exist."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from cli.commands.admin import settings_table

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def test_configuration_table_lists_every_setting_with_its_default() -> None:
    start, end = README.index("<!-- settings-table:start -->"), README.index("<!-- settings-table:end -->")
    assert README[start:end].split("\n", 1)[1].strip() == settings_table(), \
        "regenerate with `unipic config --markdown`"


def test_every_unipic_variable_named_in_the_readme_exists() -> None:
    from storage.settings import Settings

    known = {f"UNIPIC_{name.upper()}" for name in Settings.model_fields}
    named = set(re.findall(r"UNIPIC_[A-Z0-9_]+", README))
    assert named - known == set()


def test_the_readme_commands_exist() -> None:
    # Given the quickstart's entry points
    assert (ROOT / "bin" / "up").exists() and (ROOT / ".ci" / "run").exists()
    assert ".venv/bin/python -m pytest -q" in (ROOT / ".ci" / "run").read_text()
    # When each `unipic <command>` the README uses asks for help, Then it answers
    commands = sorted(set(re.findall(r"unipic (generate|edit|ask|worker|up|keys|batch|jobs|migrate|config)\b",
                                     README)))
    for command in commands:
        done = subprocess.run([sys.executable, "-m", "cli.main", command, "--help"], check=False, cwd=ROOT,
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, (command, done.stderr)
