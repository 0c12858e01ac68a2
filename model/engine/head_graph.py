"""CUDA-graph replay of the diffusion head's reverse loop (spec §9.1: the 100 small steps are launch-bound).

Owns one captured graph per (row bucket, CFG on/off): rows are padded up to a bucket size (rows are independent,
so padding changes no real row beyond float tolerance), inputs are copied into static buffers, the whole K-step
loop is replayed with one launch. Used only on CUDA; the eager loop in `model.diffusion` stays the reference.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from model.diffloss import SimpleMLPAdaLN, cfg_mix
from model.diffusion import DiffusionSchedule, p_sample_loop

MIN_BUCKET = 64
STEP = 512  # above this, round up to a multiple of it (powers of two would waste up to half the work)


def bucket(rows: int) -> int:
    if rows <= STEP:
        return max(MIN_BUCKET, 1 << (rows - 1).bit_length())
    return -(-rows // STEP) * STEP


@dataclass
class _Captured:
    graph: torch.cuda.CUDAGraph
    x: torch.Tensor  # (N, C) f32
    noise: torch.Tensor  # (K-1, N, C) f32
    temp: torch.Tensor  # (N, 1) f32
    cond: torch.Tensor  # (N or 2N, W) model dtype: cond_embed rows ([cond; uncond] with CFG)
    scale: torch.Tensor  # (N, 1) f32 guidance per row
    out: torch.Tensor  # (N, C) f32


class HeadGraphs:
    def __init__(self, net: SimpleMLPAdaLN, schedule: DiffusionSchedule, t_emb: torch.Tensor) -> None:
        self.net = net
        self.schedule = schedule
        self.t_emb = t_emb  # (K, W) static
        self._graphs: dict[tuple[int, bool], _Captured] = {}

    def _loop(self, x, noise, temp, cond, scale, cfg: bool) -> torch.Tensor:
        net, t_emb, channels = self.net, self.t_emb, x.shape[1]

        def denoise(state: torch.Tensor, step: int) -> torch.Tensor:
            if cfg:
                out = net.forward_embedded(torch.cat([state, state]), cond + t_emb[step])
                return cfg_mix(out, scale, channels)
            return net.forward_embedded(state, cond + t_emb[step])

        return p_sample_loop(self.schedule, denoise, x, noise, temp)

    def _capture(self, rows: int, cfg: bool) -> _Captured:
        dev, dtype = self.t_emb.device, self.t_emb.dtype
        c, w, k = self.net.input_proj.in_features, self.t_emb.shape[1], self.schedule.num_steps
        x = torch.zeros(rows, c, device=dev)
        noise = torch.zeros(max(k - 1, 0), rows, c, device=dev)
        temp = torch.ones(rows, 1, device=dev)
        cond = torch.zeros(2 * rows if cfg else rows, w, device=dev, dtype=dtype)
        scale = torch.ones(rows, 1, device=dev)
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):  # warm-up outside the graph (allocator, cuBLAS handles)
            self._loop(x, noise, temp, cond, scale, cfg)
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out = self._loop(x, noise, temp, cond, scale, cfg)
        return _Captured(graph, x, noise, temp, cond, scale, out)

    def run(self, x: torch.Tensor, noise: torch.Tensor, temp: torch.Tensor, cond: torch.Tensor,
            uncond: torch.Tensor | None, scale: torch.Tensor) -> torch.Tensor:
        """Same contract as the eager loop: x (n, C), noise (K-1, n, C), temp (n, 1), cond/uncond (n, W),
        scale (n, 1) f32 (read only with uncond)."""
        n, cfg = x.shape[0], uncond is not None
        rows = bucket(n)
        key = (rows, cfg)
        if key not in self._graphs:
            self._graphs[key] = self._capture(rows, cfg)
        g = self._graphs[key]
        g.x.zero_()
        g.x[:n].copy_(x)
        g.noise.zero_()
        g.noise[:, :n].copy_(noise)
        g.temp.fill_(1.0)
        g.temp[:n].copy_(temp)
        g.cond.zero_()
        g.cond[:n].copy_(cond)
        if uncond is not None:
            g.cond[rows : rows + n].copy_(uncond)
        g.scale.fill_(1.0)
        g.scale[:n].copy_(scale)
        g.graph.replay()
        return g.out[:n].clone()
