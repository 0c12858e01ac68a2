"""Model configurations: frozen dataclasses and the named presets `unipic-1.5b` and `tiny`.

Owns every architectural number of UniPic-1 (spec §2). Knows nothing about checkpoints or requests; a config is
pure data so it can be built on any device (including `meta` for parameter counting).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace


@dataclass(frozen=True)
class LLMConfig:
    """Qwen2 decoder (spec §3.2)."""

    vocab_size: int = 151936
    hidden_size: int = 1536
    num_layers: int = 28
    num_heads: int = 12
    num_kv_heads: int = 2
    intermediate_size: int = 8960
    rms_norm_eps: float = 1e-6
    rope_theta: float = 1_000_000.0
    max_position_embeddings: int = 32768

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads


@dataclass(frozen=True)
class MARConfig:
    """MAR encoder/decoder over latent tokens (spec §3.3)."""

    img_size: int = 512
    vae_stride: int = 16
    patch_size: int = 1
    token_dim: int = 16
    width: int = 1280
    encoder_depth: int = 20
    decoder_depth: int = 20
    num_heads: int = 16
    mlp_ratio: float = 4.0
    buffer_size: int = 64
    class_num: int = 1000

    @property
    def grid(self) -> int:
        return self.img_size // self.vae_stride // self.patch_size

    @property
    def seq_len(self) -> int:
        return self.grid * self.grid


@dataclass(frozen=True)
class DiffLossConfig:
    """Per-token diffusion MLP head and its sampler (spec §3.5, §4)."""

    width: int = 1536
    depth: int = 12
    in_channels: int = 16
    num_train_steps: int = 1000
    respacing: str = "100"
    max_beta: float = 0.2


@dataclass(frozen=True)
class VAEConfig:
    """KL-16 autoencoder (spec §3.7)."""

    ch: int = 128
    ch_mult: tuple[int, ...] = (1, 1, 2, 2, 4)
    num_res_blocks: int = 2
    z_channels: int = 16
    in_channels: int = 3
    attn_resolution: int = 16
    design_resolution: int = 256
    scale: float = 0.2325

    @property
    def stride(self) -> int:
        return 2 ** (len(self.ch_mult) - 1)


@dataclass(frozen=True)
class SiglipConfig:
    """SigLIP2 so400m-patch16-512 vision tower (spec §7.2; never used at inference)."""

    hidden_size: int = 1152
    num_layers: int = 27
    num_heads: int = 16
    intermediate_size: int = 4304
    image_size: int = 512
    patch_size: int = 16


@dataclass(frozen=True)
class UniPicConfig:
    """The whole model plus inference defaults."""

    name: str
    llm: LLMConfig = field(default_factory=LLMConfig)
    mar: MARConfig = field(default_factory=MARConfig)
    diffloss: DiffLossConfig = field(default_factory=DiffLossConfig)
    vae: VAEConfig = field(default_factory=VAEConfig)
    siglip: SiglipConfig = field(default_factory=SiglipConfig)
    with_siglip: bool = False
    image_token: str = "<image>"
    repetition_penalty: float = 1.1  # used when the checkpoint ships no generation_config.json (spec §7.1, [open])
    default_size: int = 1024

    def tokens_for(self, size: int) -> int:
        """Number of image latent tokens L for a square image of `size` pixels."""
        grid = size // self.vae.stride
        return grid * grid

    def with_flags(self, **changes: object) -> UniPicConfig:
        return replace(self, **changes)


UNIPIC_1_5B = UniPicConfig(name="unipic-1.5b")

TINY = UniPicConfig(
    name="tiny",
    llm=LLMConfig(hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2, intermediate_size=128),
    mar=MARConfig(img_size=64, width=48, encoder_depth=2, decoder_depth=2, num_heads=4, buffer_size=4),
    diffloss=DiffLossConfig(width=80, depth=2, respacing="4"),
    vae=VAEConfig(ch=32),
    siglip=SiglipConfig(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64, image_size=64),
    default_size=64,
)

CONFIGS: dict[str, UniPicConfig] = {c.name: c for c in (UNIPIC_1_5B, TINY)}


def get_config(name: str) -> UniPicConfig:
    try:
        return CONFIGS[name]
    except KeyError:
        raise ValueError(f"unknown model config {name!r}; known: {sorted(CONFIGS)}") from None
