"""How the CLI prints: the global `--json` switch (`unipic --json COMMAND`, or `--json` after a command).

Owns that one flag so every command can ask `json_mode()`; it knows nothing of what the commands print.
"""

from __future__ import annotations

_state = {"json": False}


def set_json_mode(on: bool) -> None:
    _state["json"] = on


def json_mode(local: bool = False) -> bool:
    """True when the command's own `--json` or the global one was given."""
    return local or _state["json"]
