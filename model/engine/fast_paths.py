"""Fast paths: the model's hot modules as `torch.compile`d graphs (issue 20, item 2).

Owns which modules are compiled and how: every MAR encoder/decoder block, the diffusion head's residual blocks
and final layer, and each LLM layer's norms and SwiGLU MLP, each compiled in place (`nn.Module.compile`).
Inside the MAR steps shapes depend only on the image size (grid), the step (visible tokens) and the rows: with
`static=True` every (size, step, rows) bucket gets its own static graph (`dynamic=False`, the dynamo cache
raised to hold them); by default torch turns a dimension dynamic once it changes, so each module compiles about
twice. The engine runs the text prefix pass and token decoding under `eager()`: their shapes follow the prompt
length. The LLM attention with its prefix mask and the sampling arithmetic stay eager.
`set_fast_paths(model, False)` restores the eager modules, which remain the reference (the CPU suite checks
exact fp32 parity on the eager path; compiled outputs match it within float tolerance). It knows nothing of
requests, devices or serving.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from model.unipic import UniPic

# graphs per compiled code object: sizes x MAR steps x row buckets (each a static shape)
CACHE_SIZE_LIMIT = 1024


def hot_modules(model: UniPic) -> Iterator[tuple[str, nn.Module]]:
    """The modules compiled by the fast paths, by name."""
    mar = model.mar
    for i, block in enumerate(mar.encoder_blocks):
        yield f"mar.encoder_blocks.{i}", block
    for i, block in enumerate(mar.decoder_blocks):
        yield f"mar.decoder_blocks.{i}", block
    net = mar.diffloss.net
    for i, res in enumerate(net.res_blocks):
        yield f"mar.diffloss.net.res_blocks.{i}", res
    yield "mar.diffloss.net.final_layer", net.final_layer
    for i, layer in enumerate(model.llm.model.layers):
        yield f"llm.model.layers.{i}.input_layernorm", layer.input_layernorm
        yield f"llm.model.layers.{i}.post_attention_layernorm", layer.post_attention_layernorm
        yield f"llm.model.layers.{i}.mlp", layer.mlp


def set_fast_paths(model: UniPic, enabled: bool, mode: str | None = None, static: bool = False) -> list[str]:
    """Compile (or restore to eager) the hot modules in place; returns their names.

    mode: torch.compile's mode (None = "default"; "max-autotune-no-cudagraphs" on a GPU is worth a try).
    static: one graph per (size, step, rows) bucket: specialized kernels, but one compile per bucket (32 steps x
    sizes x batch sizes: far too many for a worker's start or a short bench). The default lets torch mark a
    dimension dynamic once it changes: about two compiles per module in all."""
    names = []
    if enabled:
        dynamo = torch._dynamo.config
        dynamo.cache_size_limit = max(dynamo.cache_size_limit, CACHE_SIZE_LIMIT)
        dynamo.accumulated_cache_size_limit = max(dynamo.accumulated_cache_size_limit, 8 * CACHE_SIZE_LIMIT)
    for name, module in hot_modules(model):
        if enabled:
            module.compile(dynamic=False if static else None, mode=mode)
        else:
            module._compiled_call_impl = None  # nn.Module.compile's hook: None = the eager forward
        names.append(name)
    return names


def fast_paths_enabled(model: UniPic) -> bool:
    return any(getattr(m, "_compiled_call_impl", None) is not None for _, m in hot_modules(model))


@contextmanager
def eager() -> Iterator[None]:
    """Run compiled modules eagerly inside the block (shapes that vary per request: prompts, decoding)."""
    with torch.compiler.set_stance("force_eager"):
        yield
