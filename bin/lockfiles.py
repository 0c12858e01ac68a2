#!/usr/bin/env python3
"""The lock files in requirements/: how they are made and the two checks on them, stdlib only so they run
before anything is installed.

`bash bin/lock` (which runs `lockfiles.py compile` with a pinned uv) resolves every target below from the
pyproject.toml files, universally (any OS, Python >= 3.11), with hashes, against the CPU build of torch.

`python bin/lockfiles.py inputs` fails when a lock in requirements/ was made from other inputs than the ones in
the tree (pyproject.toml's dependency lists, the SDK's, the `.in` files, the torch pin): someone changed a
dependency and did not run `bash bin/lock`. Each lock records the digest of its inputs in its header; comparing
digests needs no resolver and no network, so the check is exact and fast.

`python bin/lockfiles.py env requirements/dev.txt` fails when the running environment holds a distribution the
lock does not pin, or another version of one it does: the proof that an install pulled nothing unlocked. Our own
two distributions and torch (installed from its own pinned wheel, CPU or CUDA) are the only exceptions, with the
packages only a CUDA build of torch requires (nvidia-*, triton): torch pins those exactly itself. The CPU build
requires nothing outside the lock, so on CI the check is strict.
"""
from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
REQUIREMENTS = ROOT / "requirements"
TORCH_PIN = "2.13.0"  # the one exact pin outside the lock: bin/lock resolves against it, .ci/run installs it
OURS = {"unipic-queue", "unipic-client"}
DIGEST_LINE = re.compile(r"^# inputs-sha256: ([0-9a-f]{64})$", re.MULTILINE)
PIN_LINE = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;\\]+)", re.MULTILINE)

# lock file -> (extras of unipic-queue, SDK included); bin/lock builds each from the same table (`targets`)
TARGETS: dict[str, tuple[tuple[str, ...], bool]] = {
    "dev": (("model", "api", "dev", "tracing"), True),  # .ci/run: everything the tests import
    "up": (("model", "api"), True),                      # bin/up: the embedded stack and the CLI
    "api": (("api",), False),                            # docker/api.Dockerfile: no torch
    "worker": (("model",), False),                       # docker/worker.Dockerfile: torch comes from its index
    "sdk": ((), True),                                   # unipic-client alone (no unipic-queue at all)
}


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def inputs_digest(target: str, root: Path = ROOT) -> str:
    """The digest of everything a target's lock is resolved from (requirement lists, not comments or layout)."""
    extras, with_sdk = TARGETS[target]
    project = tomllib.loads((root / "pyproject.toml").read_text())["project"]
    sdk = tomllib.loads((root / "sdk/python/pyproject.toml").read_text())["project"]
    parts: dict[str, object] = {"target": target, "torch": TORCH_PIN, "build": _in_file(root / "requirements/build.in")}
    if target != "sdk":
        parts["python"] = project["requires-python"]
        parts["project"] = project["dependencies"]
        parts["extras"] = {e: project["optional-dependencies"][e] for e in extras}
    if with_sdk:
        parts["sdk"] = sdk["dependencies"]
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def _in_file(path: Path) -> list[str]:
    lines = path.read_text().splitlines()
    return sorted(line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#"))


def stale_locks(root: Path = ROOT) -> list[str]:
    """One line per lock file that is missing or was made from other inputs."""
    problems = []
    for target in TARGETS:
        path = root / "requirements" / f"{target}.txt"
        if not path.exists():
            problems.append(f"requirements/{target}.txt is missing")
            continue
        found = DIGEST_LINE.search(path.read_text())
        if found is None or found.group(1) != inputs_digest(target, root):
            problems.append(f"requirements/{target}.txt was not made from the current pyproject.toml files")
    return problems


def pins(lock: Path) -> dict[str, set[str]]:
    """name -> the versions a lock pins (a universal lock may pin two, under exclusive markers)."""
    found: dict[str, set[str]] = {}
    for name, version in PIN_LINE.findall(lock.read_text()):
        found.setdefault(canonical(name), set()).add(version)
    return found


def unlocked_distributions(lock: Path) -> list[str]:
    """One line per installed distribution the lock does not pin at its installed version."""
    locked = pins(lock)
    torch_own = _required_by("torch") - set(locked)
    problems = []
    for dist in importlib.metadata.distributions():
        name, version = canonical(dist.metadata["Name"]), dist.version
        if name in OURS or name in torch_own:
            continue
        if name == "torch":
            if version.split("+")[0] != TORCH_PIN:
                problems.append(f"torch {version} installed, {TORCH_PIN} pinned")
            continue
        if version not in locked.get(name, set()):
            want = ", ".join(sorted(locked.get(name, set()))) or "not in the lock"
            problems.append(f"{name} {version} installed ({want})")
    return sorted(problems)


def compile_locks(uv: str, extra_args: list[str]) -> None:
    """Write requirements/<target>.txt for every target; `extra_args` go to uv (`--upgrade`, `-P NAME`)."""
    wheels = os.environ.get("UNIPIC_TORCH_WHEELS", "/opt/wheels")
    # the CPU build's metadata (no CUDA packages); where no local wheel lies, PyTorch's CPU index has the same one
    source = ["--find-links", wheels] if Path(wheels).is_dir() else [
        "--extra-index-url", "https://download.pytorch.org/whl/cpu", "--index-strategy", "unsafe-best-match"]
    constraints = REQUIREMENTS / "torch-cpu.constraint"
    constraints.write_text(f"torch=={TORCH_PIN}+cpu\n")
    try:
        for target, (extras, with_sdk) in TARGETS.items():
            out = REQUIREMENTS / f"{target}.txt"
            sources = ([] if target == "sdk" else ["pyproject.toml"]) + (
                ["sdk/python/pyproject.toml"] if with_sdk else []) + ["requirements/build.in"]
            command = [uv, "pip", "compile", *sources, *(f"--extra={e}" for e in extras),
                       "--constraint", str(constraints.relative_to(ROOT)), *source,
                       "--universal", "--python-version", "3.11", "--generate-hashes",
                       "--no-emit-package", "torch", "--no-header", "--quiet", "-o", str(out.relative_to(ROOT)),
                       *extra_args]
            subprocess.run(command, cwd=ROOT, check=True)
            header = (f"# The locked set for `{target}`; made by `bash bin/lock` (bin/lockfiles.py), do not edit.\n"
                      f"# torch=={TORCH_PIN} is installed on its own (CPU wheel here, CUDA in the worker image).\n"
                      f"# inputs-sha256: {inputs_digest(target)}\n")
            out.write_text(header + out.read_text())
    finally:
        constraints.unlink()


def _required_by(distribution: str) -> set[str]:
    try:
        requires = importlib.metadata.requires(distribution) or []
    except importlib.metadata.PackageNotFoundError:
        return set()
    return {canonical(m.group(0)) for r in requires if (m := re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*", r))}


def main(argv: list[str]) -> int:
    if argv[:1] == ["compile"]:
        compile_locks(os.environ.get("UV", "uv"), argv[1:])
        return 0
    if argv[:1] == ["inputs"] and len(argv) == 1:
        problems = stale_locks()
        advice = "the lock is stale: run `bash bin/lock` and commit requirements/ (README: Dependencies)"
    elif argv[:1] == ["env"] and len(argv) == 2:
        problems = unlocked_distributions(Path(argv[1]))
        advice = f"this environment is not the locked set {argv[1]}"
    else:
        print("usage: lockfiles.py compile [uv args] | inputs | env requirements/<target>.txt", file=sys.stderr)
        return 2
    for line in problems:
        print(f"  {line}", file=sys.stderr)
    if problems:
        print(advice, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
