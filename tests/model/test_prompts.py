"""Templates, tokenizer and `<image>` expansion (spec §6)."""

from __future__ import annotations

import torch

from model.prompts import EDIT_UNCOND, T2I_UNCOND, TEMPLATE, image_input, load_tokenizer, pad_rows, t2i_input


def test_tokenizer_is_qwen25_with_image_token_151665(engine):
    tok = engine.tokenizer
    assert tok.image_id == 151665
    assert tok.eos_id == 151645 and tok.pad_id == 151643 and set(tok.stop_ids) == {151643, 151645}
    assert tok.hf.convert_tokens_to_ids("<think>") != 151667  # Qwen3 additions trimmed


def test_templates():
    assert t2i_input("  a red fox ") == "Generate an image: a red fox"
    assert T2I_UNCOND == "Generate an image." and EDIT_UNCOND == "Repeat this image."
    assert image_input(" add a hat ") == "<image>\nadd a hat"
    assert TEMPLATE.format(input="x") == "<|im_start|>user\nx<|im_end|>\n<|im_start|>assistant\n"


def test_image_token_expanded_to_l_plus_p(engine):
    tok = engine.tokenizer
    slots = (1024 // 16) ** 2 + 64
    ids = tok.encode(image_input("make it blue"), slots)
    assert ids.count(tok.image_id) == 4160
    first = ids.index(tok.image_id)
    assert ids[first : first + 4160] == [tok.image_id] * 4160  # contiguous, in place of the single token
    plain = tok.encode(image_input("make it blue"))
    assert len(ids) == len(plain) - 1 + 4160
    assert ids[:3] == [151644, 872, 198] and ids[-5:-3] != [tok.image_id] * 2


def test_checkpoint_tokenizer_dir_is_used(tiny_dir):
    tok = load_tokenizer(tiny_dir, 151936)
    assert tok.image_id == 151665


def test_pad_rows_right_pads_with_mask():
    ids, mask = pad_rows([[1, 2, 3], [4]], 0, torch.device("cpu"))
    assert ids.tolist() == [[1, 2, 3], [4, 0, 0]]
    assert mask.tolist() == [[True, True, True], [True, False, False]]
