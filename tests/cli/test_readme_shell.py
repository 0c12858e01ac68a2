"""README's shell blocks run as written (issue 27).

Every shell block README does not mark `<!-- not run in CI: why -->` (tests/support/readme.py) is pasted, in
README order, into one bash session (`set -eo pipefail`, so every command must succeed) against a fresh embedded
`unipic up --model tiny` (its own temporary data dir, a free port), with what a user has after the quickstart:
the clone's directory (its `.venv`, not on PATH), a home whose default data dir is the stack's (the quickstart
reads the first API key from there), and `UNIPIC_API_URL` naming the stack's free port, as the banner of
`unipic up --port` says. The one text replaced is the local webhook receiver's port (README's 8787), by a free
one. Checked besides the exit status: no block gets an API error answer, every `-o` image decodes, `ask` prints
an answer line, and the local receiver prints the verified `job.succeeded` of the job submitted with its URL.
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image

from tests.support import REPO
from tests.support.readme import Block, blocks, readme
from tests.support.stack import Stack, clean_env, free_port, start_stack
from tests.support.waiting import wait_for

pytestmark = pytest.mark.system

RECEIVER_PORT = "8787"  # README's local webhook receiver; a free port here, as the API's is
SESSION_TIMEOUT_S = 420.0  # liveness bound for all blocks together (tiny model, a dozen jobs at 256 px, 8 steps)
API_ERROR = '{"error":'  # how every error answer starts; a failed job's own "error" follows a comma
RECEIVED = re.compile(r"job\.succeeded +job (\S+) succeeded")  # the receiver's line for a verified delivery


@pytest.fixture
def fresh_stack(tmp_path: Path) -> Iterator[Stack]:
    """A stack of its own: the blocks set the key's default webhook endpoint and rotate its secret."""
    (tmp_path / "stack").mkdir()
    stack = start_stack(tmp_path / "stack")
    try:
        yield stack
    finally:
        stack.stop()


def user_checkout(root: Path) -> Path:
    """A directory like the clone README's commands run in: the repository's folders (`.venv` too), linked, so
    what the blocks write (images, items.jsonl) lands here, not in the repository."""
    root.mkdir()
    for entry in REPO.iterdir():
        if entry.is_dir() and entry.name != ".git":
            (root / entry.name).symlink_to(entry)
    return root


def user_env(home: Path, stack: Stack) -> dict[str, str]:
    """The shell after the quickstart: the default data dir is the stack's, the venv is not activated."""
    (home / ".local" / "share").mkdir(parents=True)
    (home / ".local" / "share" / "unipic").symlink_to(stack.data_dir)
    venv_bin = str(REPO / ".venv" / "bin")
    path = os.pathsep.join(p for p in os.environ.get("PATH", "").split(os.pathsep) if p != venv_bin)
    return clean_env(HOME=str(home), PATH=path, UNIPIC_API_URL=stack.url)


def session_script(run: list[Block], out: Path, receiver_port: int) -> Path:
    """One bash session that sources each block, its output to `out/<i>.out` and `.err`, in README order."""
    lines = ["set -eo pipefail"]
    for i, block in enumerate(run):
        (out / f"{i}.sh").write_text(block.text.replace(RECEIVER_PORT, str(receiver_port)))
        lines += [f"echo {i} > {shlex.quote(str(out / 'reached'))}",
                  f"source {shlex.quote(str(out / f'{i}.sh'))} > {shlex.quote(str(out / f'{i}.out'))} "
                  f"2> {shlex.quote(str(out / f'{i}.err'))}"]
    lines.append(f"echo all > {shlex.quote(str(out / 'reached'))}")
    script = out / "session.sh"
    script.write_text("\n".join(lines) + "\n")
    return script


def report(run: list[Block], out: Path, index: int, stack: Stack) -> str:
    block = run[index]
    stdout, stderr = ((out / f"{index}{ext}").read_text(errors="replace") for ext in (".out", ".err"))
    return (f"README block at line {block.line}:\n{block.text}\n--- stdout (tail)\n{stdout[-3000:]}\n"
            f"--- stderr (tail)\n{stderr[-3000:]}\n--- unipic up (tail)\n{stack.log()[-3000:]}")


def test_readme_shell_blocks_run_as_written(fresh_stack: Stack, tmp_path: Path) -> None:
    # Given: README's shell blocks that CI runs (the quickstart's fast `ask` among them)
    run = [block for block in blocks(readme()) if block.runs]
    assert any("unipic ask" in block.text for block in run), "README's fast `ask` example is not run"
    checkout, out = user_checkout(tmp_path / "clone"), tmp_path / "out"
    out.mkdir()
    receiver_port = free_port()
    script = session_script(run, out, receiver_port)

    # When: they are pasted into one shell, in order
    proc = subprocess.Popen(["bash", str(script)], cwd=checkout, env=user_env(tmp_path / "home", fresh_stack),
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)  # its group holds what the blocks start in the background
    try:
        try:
            code = proc.wait(timeout=SESSION_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            code = None
        reached = (out / "reached").read_text().strip()
        if code != 0 or reached != "all":
            pytest.fail(f"exit {code} in " + report(run, out, int(reached), fresh_stack), pytrace=False)

        # Then: no example got an error answer, and what they make is there
        for i, block in enumerate(run):
            stdout = (out / f"{i}.out").read_text(errors="replace")
            assert API_ERROR not in stdout, "an error answer in " + report(run, out, i, fresh_stack)
            for name in re.findall(r" -o (\S+)", block.text):
                with Image.open(checkout / name) as image:
                    image.load()
                    assert image.width == image.height > 0, name
            if "unipic ask" in block.text:  # its answer is the last line (random weights: any text, even none)
                assert stdout.endswith("\n") and not stdout.splitlines()[-1].endswith(".png"), \
                    report(run, out, i, fresh_stack)
        listening = [i for i, block in enumerate(run) if "unipic webhooks listen" in block.text]
        assert listening, "README's local webhook receiver is not run"
        printed = out / f"{listening[0]}.out"
        wait_for(lambda: RECEIVED.search(printed.read_text()) is not None, "the receiver's verified delivery")
        received = RECEIVED.search(printed.read_text())
        assert received is not None and f'"id":"{received[1]}"' in printed.read_text()
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)  # the receiver the blocks started in the background
        proc.wait(timeout=30)
