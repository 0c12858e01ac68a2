"""`weights_digest`: what a worker advertises as its checkpoint hash. Two copies of one checkpoint, converted
apart (their safetensors metadata carries different source stamps), agree; other weights of the same shapes
(another seed, the stand-in for a fine-tune) differ; weights built in memory are named by id and revision."""

from __future__ import annotations

import shutil
from pathlib import Path

from model.checkpoint import LoadedModel, checkpoint_hash, weights_digest
from model.config import TINY
from model.testing import write_tiny_checkpoint


def test_the_digest_follows_the_weights_not_the_files(tiny_checkpoint: Path, tmp_path: Path) -> None:
    copy = shutil.copytree(tiny_checkpoint, tmp_path / "copy", copy_function=shutil.copyfile,  # new mtimes
                           ignore=shutil.ignore_patterns("*.safetensors"))
    other = write_tiny_checkpoint(tmp_path / "other", seed=1)
    first, again, tuned = (weights_digest(Path(d)) for d in (tiny_checkpoint, copy, other))
    assert first == again and first != tuned and len(first) == 64
    in_memory = LoadedModel(None, TINY, None, "tiny", "random-seed0", 1.0)  # type: ignore[arg-type]
    assert checkpoint_hash(in_memory) not in (first, checkpoint_hash(LoadedModel(
        None, TINY, None, "tiny", "random-seed1", 1.0)))  # type: ignore[arg-type]
