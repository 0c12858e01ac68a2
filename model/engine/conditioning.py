"""Per-item conditioning of image requests (spec §5.2, §5.5, §6.1-6.2): prompt rows, the prefix pass, edit latents.

Owns turning admitted requests into what each item keeps for its whole life in a running set: the K/V of its
text prefix (cond rows, then uncond rows with CFG), the text mask, and for editing `decoder_embed(x_con)`.
Each item runs its own prefix pass (its cond and uncond prompt, once each), so its K/V are the same whoever
was admitted with it. It knows nothing of steps, schedules or jobs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from model.engine.fast_paths import eager
from model.engine.requests import EditRequest, GenerateRequest
from model.images import edit_pixels
from model.llm import KVBuffer, QwenRunner
from model.prompts import EDIT_UNCOND, Tokenizer, image_input, pad_rows, t2i_input, t2i_uncond_input
from model.unipic import UniPic


@dataclass
class Conditioning:
    """What one item attends to at every step: rows are [n cond; n uncond] with CFG, else [n cond]."""

    kv: KVBuffer  # prefix only: (rows, kv_heads, T, head_dim) per layer, T = the item's longest real row
    text_mask: torch.Tensor  # (rows, T) bool, True = real token
    con_embed: torch.Tensor | None  # (1, P+L, D) decoder_embed(x_con) of the source image (editing)


class Conditioner:
    def __init__(self, model: UniPic, runner: QwenRunner, tokenizer: Tokenizer) -> None:
        self.model = model
        self.runner = runner
        self.tokenizer = tokenizer

    def image_embeddings(self, pixels: torch.Tensor, grid: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        """pixels (N, 3, S, S) -> (x_con (N, P+L, D), z_img (N, L+P, H) with buffers rotated to the end)."""
        p = self.model.cfg.mar.buffer_size
        tokens = self.model.vae.encode_tokens(pixels)  # (N, m, n, C)
        tokens = tokens.reshape(tokens.shape[0], -1, tokens.shape[-1])  # (N, L, C)
        x_con = self.model.mar.encode(tokens, None, grid)
        z = self.model.proj_in(x_con)
        return x_con, torch.cat([z[:, p:], z[:, :p]], dim=1)

    def embed_rows(self, rows: list[list[int]], images: list[torch.Tensor | None]
                   ) -> tuple[torch.Tensor, torch.Tensor]:
        """Embed right-padded rows -> (embeds (U, T, H), text_mask (U, T)); `<image>` slots take the row's image."""
        device = self.model.proj_in[0].weight.device
        ids, text_mask = pad_rows(rows, self.tokenizer.pad_id, device)
        embeds = self.runner.embed(ids)  # (U, T, H)
        for r, z in enumerate(images):
            if z is not None:
                slots = ids[r] == self.tokenizer.image_id
                embeds[r, slots] = z.to(embeds.dtype)
        return embeds, text_mask

    def generate(self, requests: list[GenerateRequest]) -> list[Conditioning]:
        out = []
        for r in requests:
            texts = [t2i_input(r.prompt)] + ([t2i_uncond_input(r.negative_prompt)] if r.guidance_scale != 1.0 else [])
            rows = [self.tokenizer.encode(t) for t in texts]
            out.append(self._prefix(rows, [None] * len(rows), r.num_images, None))
        return out

    def edit(self, requests: list[EditRequest], grid: tuple[int, int]) -> list[Conditioning]:
        slots = grid[0] * grid[1] + self.model.cfg.mar.buffer_size
        weight = self.model.proj_in[0].weight
        out = []
        for r in requests:
            pixels = edit_pixels([r.image], r.size, weight.dtype, weight.device)  # (1, 3, S, S)
            x_con, z_img = self.image_embeddings(pixels, grid)
            texts = [r.instruction] + ([EDIT_UNCOND] if r.guidance_scale != 1.0 else [])
            rows = [self.tokenizer.encode(image_input(t), slots) for t in texts]
            out.append(self._prefix(rows, [z_img[0]] * len(rows), r.num_images, self.model.mar.decoder_embed(x_con)))
        return out

    def _prefix(self, rows: list[list[int]], images: list[torch.Tensor | None], n: int,
                con: torch.Tensor | None) -> Conditioning:
        """One prefix pass over an item's prompt rows ([cond] or [cond, uncond]), each then repeated for its n
        images. Per item, never across items: its K/V then do not depend on who was admitted with it."""
        embeds, mask = self.embed_rows(rows, images)  # (U, T, H), (U, T)
        with eager():  # text lengths vary per request: the prefix pass is never compiled (model.engine.fast_paths)
            _, kv = self.runner.prefix(embeds)
        idx = torch.arange(len(rows), device=mask.device).repeat_interleave(n)  # (U·n,) [cond×n, uncond×n]
        return Conditioning(kv.select(idx), mask.index_select(0, idx), con)
