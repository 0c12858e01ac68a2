"""Making sure a model's weights are on this machine before `unipic up` starts a worker for it.

`tiny` needs nothing (random weights), a local directory must exist, and a Hugging Face repo id must be in the
local cache, or be downloadable once when the hub is reachable. Failures become one `WeightsUnavailable` with a
message a person can act on; the worker itself loads the weights (this module never imports torch).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

# the files model.checkpoint.resolve fetches (copied: that module imports torch, which `up` must not)
WEIGHT_FILES = ("pytorch_model.bin", "kl16.ckpt")
ALLOW_PATTERNS = [*WEIGHT_FILES, "*.json", "merges.txt", "vocab.json"]


class WeightsUnavailable(RuntimeError):
    """The model named by the source cannot be loaded on this machine."""


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")


def ensure_weights(source: str, echo: Callable[[str], None] = print, cache_dir: str = "") -> str:
    """Return where the weights are (`tiny`, a directory); download a repo once when online, into `cache_dir`
    (`UNIPIC_MODEL_CACHE_DIR`; empty: the hub's default cache, `HF_HOME`)."""
    if source == "tiny":
        return source
    path = Path(source).expanduser()
    if path.exists() or source.startswith((".", "/", "~")):
        if not path.is_dir():
            raise WeightsUnavailable(f"model directory {path} does not exist")
        return str(path)
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError

    try:
        cached = Path(snapshot_download(source, allow_patterns=ALLOW_PATTERNS, local_files_only=True,
                                        cache_dir=cache_dir or None))
        if all((cached / name).exists() for name in WEIGHT_FILES):
            return str(cached)
    except HFValidationError as exc:
        raise WeightsUnavailable(f"{source!r} is neither 'tiny', a directory nor a repo id: {exc}") from None
    except LocalEntryNotFoundError:
        pass
    hint = (f"download it once with `huggingface-cli download {source}` where the hub is reachable (HF_HOME "
            "names the cache), pass a local directory with --model, or use `--model tiny` for a smoke run")
    if _offline():
        raise WeightsUnavailable(f"the weights of {source} are not in the local Hugging Face cache and "
                                 f"HF_HUB_OFFLINE is set; {hint}")
    echo(f"downloading {source} into the Hugging Face cache (once per machine)...")
    try:
        return snapshot_download(source, allow_patterns=ALLOW_PATTERNS, cache_dir=cache_dir or None)
    except Exception as exc:  # noqa: BLE001 - network, auth, missing repo: all end the same way for the user
        raise WeightsUnavailable(f"could not download {source}: {type(exc).__name__}: {exc}; {hint}") from None
