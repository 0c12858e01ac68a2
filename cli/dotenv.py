"""`.env` support: `KEY=value` lines from `./.env` (or the file `UNIPIC_ENV_FILE` names) become environment
variables before any option is read, without overriding variables already set.

Owns the small file format only (comments, `export `, single or double quotes); it knows no variable names.
"""

from __future__ import annotations

import os
from pathlib import Path


def parse(text: str) -> dict[str, str]:
    values: dict[str, str] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        name, _, value = line.removeprefix("export ").partition("=")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        elif " #" in value:
            value = value.split(" #", 1)[0].rstrip()
        values[name.strip()] = value
    return values


def load_env_file(path: Path | None = None) -> Path | None:
    """Apply the file's variables that are not set yet; returns the file used, None when there is none."""
    path = path or Path(os.environ.get("UNIPIC_ENV_FILE") or ".env")
    if not path.is_file():
        return None
    for name, value in parse(path.read_text()).items():
        if not os.environ.get(name):  # set and non-empty wins over the file
            os.environ[name] = value
    return path
