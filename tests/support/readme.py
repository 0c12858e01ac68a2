"""README.md's fenced code blocks, and which of its shell blocks CI runs.

A shell block runs in CI (tests/cli/test_readme_shell.py) unless the line just above its fence is
`<!-- not run in CI: <reason> -->`: an example that cannot run on a build machine by its nature (it installs
the stack, needs Docker, Kubernetes, a GPU or another host) says so where a reader sees it, and any other shell
block is run, so a new example cannot slip in untested.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from tests.support import REPO

SHELLS = frozenset({"bash", "sh", "shell", "console", "zsh"})
NOT_RUN = re.compile(r"^<!-- not run in CI: (?P<reason>.*?) -->$")
_FENCE = re.compile(r"^```(?P<info>\S*)\s*$")


@dataclass(frozen=True)
class Block:
    """One fenced block: where it opens (1-based line), its info string, its text, and why CI skips it."""

    line: int
    info: str
    text: str
    not_run: str | None

    @property
    def shell(self) -> bool:
        return self.info in SHELLS

    @property
    def runs(self) -> bool:
        return self.shell and self.not_run is None


def readme() -> str:
    return (REPO / "README.md").read_text()


def blocks(text: str) -> list[Block]:
    """Every fenced block of `text`, in order (an unterminated fence is an error)."""
    lines = text.splitlines()
    found: list[Block] = []
    index = 0
    while index < len(lines):
        opening = _FENCE.match(lines[index])
        if opening is None:
            index += 1
            continue
        end = next((i for i in range(index + 1, len(lines)) if lines[i].rstrip() == "```"), None)
        if end is None:
            raise ValueError(f"README line {index + 1}: the fence is never closed")
        marker = NOT_RUN.match(lines[index - 1].strip()) if index else None
        found.append(Block(index + 1, opening["info"], "\n".join(lines[index + 1:end]) + "\n",
                           marker["reason"].strip() if marker else None))
        index = end + 1
    return found


def not_run_markers(text: str) -> list[int]:
    """The 1-based lines that open with a `not run in CI` comment (each must sit right above a shell block)."""
    return [number for number, line in enumerate(text.splitlines(), 1)
            if line.strip().startswith("<!-- not run in CI")]
