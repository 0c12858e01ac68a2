"""README.md stays true: its configuration table is exactly what the code reads, and its commands exist."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from cli.commands.admin import settings_table
from tests.support.readme import blocks, not_run_markers

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


def test_every_code_block_names_its_language_and_every_unrun_shell_block_says_why() -> None:
    # Given README's fenced blocks
    found = blocks(README)
    # Then each names its language (so no shell example hides in a bare fence), each `not run in CI` marker sits
    # just above a shell block and gives a reason, and the rest of the shell blocks run
    assert [block.line for block in found if not block.info] == []
    assert not_run_markers(README) == [block.line - 1 for block in found if block.not_run is not None]
    assert all(block.shell and block.not_run for block in found if block.not_run is not None)
    assert sum(block.runs for block in found) >= 2  # the quickstart's client commands and the API's examples
