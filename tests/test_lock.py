"""The lock files in requirements/: made from the pyproject.toml files as they are, satisfying every declared
requirement, torch-free for the API image, and what the Dockerfiles install. `.ci/run` checks the digests before
installing and the installed set after; these tests say why a stale or hand-edited lock is refused."""

from __future__ import annotations

import importlib.util
import re
import shutil
import tomllib
from pathlib import Path
from types import ModuleType

import pytest
from packaging.requirements import Requirement

from tests.support import REPO


def _lockfiles() -> ModuleType:
    spec = importlib.util.spec_from_file_location("lockfiles", REPO / "bin/lockfiles.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


lockfiles = _lockfiles()


def _declared(target: str) -> list[Requirement]:
    extras, with_sdk = lockfiles.TARGETS[target]
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    sdk = tomllib.loads((REPO / "sdk/python/pyproject.toml").read_text())["project"]
    lines = [] if target == "sdk" else [*project["dependencies"],
                                        *(r for e in extras for r in project["optional-dependencies"][e])]
    return [Requirement(line) for line in [*lines, *(sdk["dependencies"] if with_sdk else [])]]


def test_every_lock_was_made_from_the_current_inputs() -> None:
    assert lockfiles.stale_locks() == []


def test_a_changed_dependency_makes_the_lock_stale(tmp_path: Path) -> None:
    # Given a copy of the inputs and locks
    for name in ("pyproject.toml", "sdk/python/pyproject.toml", "requirements"):
        source, copy = REPO / name, tmp_path / name
        copy.parent.mkdir(parents=True, exist_ok=True)
        (shutil.copytree if source.is_dir() else shutil.copy)(source, copy)
    assert lockfiles.stale_locks(tmp_path) == []
    # When a dependency is added to an extra without regenerating the lock
    pyproject = tmp_path / "pyproject.toml"
    pyproject.write_text(pyproject.read_text().replace('api = [\n', 'api = [\n  "orjson>=3",\n', 1))
    # Then the locks resolved from that extra (and only those) are stale
    stale = lockfiles.stale_locks(tmp_path)
    assert sorted(stale) == sorted(f"requirements/{t}.txt was not made from the current pyproject.toml files"
                                   for t in ("dev", "up", "api"))


@pytest.mark.parametrize("target", sorted(lockfiles.TARGETS))
def test_the_lock_satisfies_every_declared_requirement(target: str) -> None:
    pins = lockfiles.pins(REPO / f"requirements/{target}.txt")
    for requirement in _declared(target):
        name = lockfiles.canonical(requirement.name)
        if name == "torch":  # installed on its own, exactly pinned
            assert requirement.specifier.contains(lockfiles.TORCH_PIN), requirement
            continue
        assert name in pins, f"{requirement} is declared but not locked in {target}.txt"
        assert any(requirement.specifier.contains(v, prereleases=True) for v in pins[name]), (requirement, pins[name])


def test_every_pin_carries_hashes() -> None:
    for lock in (REPO / "requirements").glob("*.txt"):
        entries = re.split(r"\n(?=[A-Za-z0-9])", lock.read_text().split("\n", 3)[3])
        for entry in entries:
            assert "--hash=sha256:" in entry, f"{lock.name}: {entry.splitlines()[0]} has no hash"


def test_the_api_lock_holds_no_torch() -> None:
    assert "torch" not in lockfiles.pins(REPO / "requirements/api.txt")
    assert "torch" not in lockfiles.pins(REPO / "requirements/sdk.txt")


def test_the_images_install_their_locks_without_resolving() -> None:
    for image, target in (("api", "api"), ("worker", "worker")):
        text = (REPO / f"docker/{image}.Dockerfile").read_text()
        assert f"--require-hashes --no-deps -r requirements/{target}.txt" in text
        assert "pip install --no-deps --no-build-isolation ." in text
