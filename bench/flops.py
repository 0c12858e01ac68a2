"""FLOP count of one image: the work UniPic does per generated image, from the model config alone.

Owns the arithmetic behind "achieved TFLOP/s" in `bench.model` and `bench.gpu_suite` (issue 20): matmul FLOPs
(2 per multiply-add) of the LLM chunk passes over visible + buffer tokens, the MAR encoder over the same tokens,
the MAR decoder over all P + L slots, and the diffusion head's K reverse steps over every token, each times the
CFG rows, plus attention (QKᵀ and AV; the LLM chunk attends to the text prefix too). Elementwise work, norms,
the one-off prefix pass and the VAE decode are left out (a few % at most; the VAE is reported apart). It knows
nothing of devices or timing: pure arithmetic on `model.config.UniPicConfig`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from model.config import UniPicConfig
from model.diffusion import masked_after

PREFIX_TOKENS = 32  # a typical chat-templated prompt; the prefix term is < 0.1 % of the total


@dataclass(frozen=True)
class ImageFlops:
    """FLOPs of one image (all CFG rows included), per part."""

    llm: float
    mar_encoder: float
    mar_decoder: float
    head: float

    @property
    def total(self) -> float:
        return self.llm + self.mar_encoder + self.mar_decoder + self.head

    def as_dict(self) -> dict[str, float]:
        return {**asdict(self), "total": self.total}


def _llm_token_flops(cfg: UniPicConfig) -> float:
    """Linear FLOPs per token through all LLM layers plus the proj_in/proj_out bridges."""
    c, d = cfg.llm, cfg.mar.width
    h, kv = c.hidden_size, c.num_kv_heads * c.head_dim
    per_layer = h * h + 2 * h * kv + h * h + 3 * h * c.intermediate_size  # q, k+v, o, SwiGLU
    bridges = (d * h + h * h) + (h * h + h * d)
    return 2.0 * (c.num_layers * per_layer + bridges)


def _vit_token_flops(width: int, mlp_ratio: float, depth: int) -> float:
    """Linear FLOPs per token through `depth` timm ViT blocks (qkv, proj, MLP)."""
    return 2.0 * depth * (4 * width * width + 2 * width * int(width * mlp_ratio))


def _attention_flops(queries: int, keys: int, width: int, layers: int) -> float:
    """QKᵀ and AV for one row: 2·2·Q·K·width per layer (heads share the width)."""
    return 4.0 * queries * keys * width * layers


def _head_token_flops(cfg: UniPicConfig) -> float:
    """Linear FLOPs of one diffusion-head evaluation of one token (cond_embed and t_emb are computed once)."""
    w, c = cfg.diffloss.width, cfg.diffloss.in_channels
    per_block = 2 * w * w + 3 * w * w  # MLP + adaLN modulation
    final = 2 * w * w + w * 2 * c  # adaLN + linear
    return 2.0 * (c * w + cfg.diffloss.depth * per_block + final)


def image_flops(cfg: UniPicConfig, size: int, steps: int, guidance_scale: float = 3.0,
                prefix_tokens: int = PREFIX_TOKENS) -> ImageFlops:
    """FLOPs to generate one `size`² image with `steps` MAR steps (CFG doubles the rows unless scale is 1)."""
    rows = 2 if guidance_scale != 1.0 else 1
    seq_len = cfg.tokens_for(size)
    p = cfg.mar.buffer_size
    head_steps = sum(int(x) for x in cfg.diffloss.respacing.split(","))  # K respaced reverse steps
    llm = enc = dec = 0.0
    masked = seq_len
    llm_tok, enc_tok = _llm_token_flops(cfg), _vit_token_flops(cfg.mar.width, cfg.mar.mlp_ratio,
                                                               cfg.mar.encoder_depth)
    dec_tok = _vit_token_flops(cfg.mar.width, cfg.mar.mlp_ratio, cfg.mar.decoder_depth)
    h = cfg.llm.hidden_size
    for after in masked_after(seq_len, steps):
        chunk = seq_len - masked + p  # visible tokens + buffers
        llm += chunk * llm_tok + _attention_flops(chunk, prefix_tokens + chunk, h, cfg.llm.num_layers)
        enc += chunk * enc_tok + _attention_flops(chunk, chunk, cfg.mar.width, cfg.mar.encoder_depth)
        slots = p + seq_len
        dec += slots * dec_tok + _attention_flops(slots, slots, cfg.mar.width, cfg.mar.decoder_depth)
        masked = after
    head = head_steps * seq_len * _head_token_flops(cfg)
    return ImageFlops(llm * rows, enc * rows, dec * rows, head * rows)


def achieved_tflops(cfg: UniPicConfig, size: int, steps: int, guidance_scale: float, images: int,
                    seconds: float) -> float:
    """TFLOP/s achieved by `images` images of `size`² in `seconds` of wall time."""
    return image_flops(cfg, size, steps, guidance_scale).total * images / seconds / 1e12


def ragged_padding_share(cfg: UniPicConfig, size: int, steps: int, items: int,
                         guidance_scale: float = 3.0) -> float:
    """What padding ragged rows cost, as a share of the FLOPs a stream of images needs: a running set of `items`
    items spread evenly over the `steps` steps (a steady stream: one joins as one leaves), each step padding every
    row's visible tokens through the LLM chunk's and the MAR encoder's linear layers to the widest row's (as the
    running set did before rows were packed; attention already ran per group over real lengths). Over one full
    cycle of the phases every item passes every phase once, so the real work is `steps` cycles' images."""
    seq_len, p = cfg.tokens_for(size), cfg.mar.buffer_size
    per_token = _llm_token_flops(cfg) + _vit_token_flops(cfg.mar.width, cfg.mar.mlp_ratio, cfg.mar.encoder_depth)
    masked = [seq_len, *masked_after(seq_len, steps)][:steps]  # masked before each phase
    chunk = [seq_len - m + p for m in masked]  # visible + buffers per row, by phase
    rows = 2 if guidance_scale != 1.0 else 1
    padding = 0.0
    for shift in range(steps):  # the set at each step of a cycle: items at phases shift, shift + gap, ...
        phases = sorted({(shift + i * steps // items) % steps for i in range(items)})
        widest = max(chunk[k] for k in phases)
        padding += sum(widest - chunk[k] for k in phases) * per_token * rows * (items / len(phases))
    images = items  # each cycle of `steps` steps finishes `items` images
    return padding / (padding + images * image_flops(cfg, size, steps, guidance_scale).total)
