"""`cli.main.load_env_file`: `./.env` (python-dotenv) fills the environment before any option is read, and a
variable already set and non-empty in the environment wins over the file."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from cli.main import load_env_file


def test_the_env_file_fills_unset_and_empty_variables_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Given a .env in the working directory, one variable set in the environment and one set but empty
    (tmp_path / ".env").write_text(
        "# a comment\n"
        "export UNIPIC_API_KEY='upk_from_file'\n"
        'UNIPIC_API_URL="http://file.example:8000"\n'
        "UNIPIC_JSON=1 # trailing comment\n"
        "UNIPIC_NOTE=a$b\n"
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("UNIPIC_ENV_FILE", raising=False)
    monkeypatch.setenv("UNIPIC_API_URL", "http://env.example:9000")
    monkeypatch.setenv("UNIPIC_API_KEY", "")
    monkeypatch.delenv("UNIPIC_JSON", raising=False)
    monkeypatch.delenv("UNIPIC_NOTE", raising=False)
    # When it is loaded
    assert load_env_file() == Path(".env")
    # Then the environment wins where it has a value; the file fills the rest, quotes and comments stripped
    assert os.environ["UNIPIC_API_URL"] == "http://env.example:9000"
    assert os.environ["UNIPIC_API_KEY"] == "upk_from_file"
    assert os.environ["UNIPIC_JSON"] == "1"
    assert os.environ["UNIPIC_NOTE"] == "a$b"  # no ${...} expansion


def test_unipic_env_file_names_another_file_and_a_missing_one_changes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    (tmp_path / "other.env").write_text("UNIPIC_API_KEY=upk_other\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("UNIPIC_API_KEY", raising=False)
    monkeypatch.setenv("UNIPIC_ENV_FILE", str(tmp_path / "missing.env"))
    before = dict(os.environ)
    load_env_file()
    assert dict(os.environ) == before
    monkeypatch.setenv("UNIPIC_ENV_FILE", str(tmp_path / "other.env"))
    load_env_file()
    assert os.environ["UNIPIC_API_KEY"] == "upk_other"
