"""`write_tiny_checkpoint(dir)`: a tiny UniPic checkpoint in the official file layout, for tests of every package.

Writes `pytorch_model.bin` (official key names, no VAE, tied lm_head omitted), `kl16.ckpt` (`{"model": VAE state
dict}`), the Qwen2.5 tokenizer files and `unipic_config.json` naming the `tiny` preset, so that
`load_engine(str(dir))` goes through the real loading path. Weights equal `load_engine("tiny")`'s (fixed seed).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from model.checkpoint import CONFIG_FILE, MODEL_FILE, TINY_SEED, VAE_FILE, build_random
from model.config import TINY
from model.prompts import write_tokenizer_files


def tiny_state_dicts(seed: int = TINY_SEED) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(main state dict as in pytorch_model.bin, VAE state dict as in kl16.ckpt["model"]), float32 CPU."""
    model = build_random(TINY, seed, torch.device("cpu"), torch.float32)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    main = {k: v for k, v in state.items() if not k.startswith("vae.") and k != "llm.lm_head.weight"}
    vae = {k[4:]: v for k, v in state.items() if k.startswith("vae.")}
    return main, vae


def write_tiny_checkpoint(directory: str | Path, seed: int = TINY_SEED) -> Path:
    """Write the tiny checkpoint into `directory` (created if needed) and return it; another `seed` gives other
    weights of the same shapes (a stand-in for a fine-tune: another checkpoint hash, other pixels)."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    main, vae = tiny_state_dicts(seed)
    torch.save(main, out / MODEL_FILE)
    torch.save({"model": vae}, out / VAE_FILE)
    write_tokenizer_files(out)
    (out / CONFIG_FILE).write_text(json.dumps({"config": TINY.name, "model_id": "unipic-tiny"}))
    return out
