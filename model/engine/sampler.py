"""The MAR sampling step (spec §5.4) over rows that may stand at different steps, and the diffusion head.

Owns the network flow of one MAR iteration: encoder -> proj_in -> LLM chunk over the read-only prefix ->
proj_out residual -> decoder, for a batch whose rows see different numbers of visible tokens and prompts of
different lengths, plus the head's reverse loop over committed tokens with per-row guidance and temperature.
Ragged rows are packed: the encoder's and the chunk's row-wise layers run on each row's real tokens only (a
set whose items stand at different steps pays no padding), and every attention runs per group of alike rows over
that group's own lengths, so a row's result does not depend on its batch-mates. It draws no random numbers
(callers pass each item's draws) and knows nothing of items, schedules or steps; `model.engine.running_set` does.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import pairwise

import torch

from model.diffloss import cfg_mix
from model.diffusion import DiffusionSchedule, p_sample_loop
from model.engine.head_graph import HeadGraphs
from model.llm import ChunkGroup, PrefixRun, QwenRunner
from model.unipic import UniPic


@dataclass
class StepRows:
    """One MAR iteration's input rows, item after item (its n cond rows, then its n uncond rows with CFG)."""

    tokens: torch.Tensor  # (R, L, C)
    visible: torch.Tensor  # (R, V) ascending raster indices; a row's first V_g count (the rest: L, never read)
    groups: list[tuple[int, int, int, int]]  # (first row, end row, prefix T, visible V): rows alike, in order
    prefixes: list[PrefixRun]  # where each row's prefix K/V are held, covering the R rows in order
    text_mask: torch.Tensor  # (R, T) bool, T the longest prefix
    con_embed: torch.Tensor | None  # (R, P+L, D) decoder_embed(x_con), editing

    @property
    def ragged(self) -> bool:
        """Whether rows see different numbers of visible tokens (items at different steps)."""
        return len({v for *_, v in self.groups}) > 1

    def rows(self, a: int, b: int) -> StepRows:
        """Rows [a, b) alone (as if only they were stepped; shapes other than the row count unchanged)."""
        groups = [(max(g, a) - a, min(e, b) - a, t, v) for g, e, t, v in self.groups if max(g, a) < min(e, b)]
        con = None if self.con_embed is None else self.con_embed[a:b]
        return StepRows(self.tokens[a:b], self.visible[a:b], groups, prefix_runs(self.prefixes, a, b),
                        self.text_mask[a:b], con)

    def encoder_segments(self, p: int) -> list[tuple[int, int, int]]:
        """(first row, end row, P+V) with neighbouring groups of the same V merged."""
        out: list[tuple[int, int, int]] = []
        for a, b, _, v in self.groups:
            if out and out[-1][1] == a and out[-1][2] == p + v:
                out[-1] = (out[-1][0], b, p + v)
            else:
                out.append((a, b, p + v))
        return out


def prefix_runs(runs: list[PrefixRun], a: int, b: int) -> list[PrefixRun]:
    """The parts of `runs` (covering rows 0.. in order) that hold rows [a, b)."""
    out, row = [], 0
    for run in runs:
        lo, hi = max(a, row), min(b, row + run.count)
        if lo < hi:
            out.append(PrefixRun(run.kv, run.first + lo - row, hi - lo))
        row += run.count
    return out


def to_chunk_layout(x: torch.Tensor, groups: list[ChunkGroup], p: int, back: bool = False) -> torch.Tensor:
    """Packed rows (N, F) from the encoder's layout [P buffers, V visible] to the LLM chunk's [V visible, P
    buffers], or back (`back`): one copy, each group's rows at their own length."""
    parts = []
    for g in groups:
        rows = x[g.first : g.first + (g.b - g.a) * g.n].view(g.b - g.a, g.n, -1)
        cut = g.n - p if back else p
        parts.append(torch.cat([rows[:, cut:], rows[:, :cut]], dim=1).reshape(-1, x.shape[-1]))
    return torch.cat(parts) if len(parts) > 1 else parts[0]


# The head's rows are padded to a multiple of this: BLAS takes other kernels below 4 rows, and vectorized exp/silu
# compute a tensor's last odd elements with scalar code; both round differently, so without padding a token's
# sample would depend on how many tokens share the call (fp32, CPU)
HEAD_ROWS = 4


class MARSampler:
    def __init__(self, model: UniPic, runner: QwenRunner, schedule: DiffusionSchedule,
                 cuda_graphs: bool = True) -> None:
        self.model = model
        self.runner = runner
        self.schedule = schedule
        self.cuda_graphs = cuda_graphs
        self._t_emb: dict[tuple, torch.Tensor] = {}
        self._graphs: HeadGraphs | None = None

    def time_embeddings(self) -> torch.Tensor:
        """(K, W) time embeddings of the used original timesteps, computed once per device/dtype."""
        net = self.model.mar.diffloss.net
        w = net.cond_embed.weight
        key = (w.device, w.dtype, w.data_ptr())
        if key not in self._t_emb:
            t = torch.tensor(self.schedule.timesteps, device=w.device)
            self._t_emb[key] = net.time_embed(t)
        return self._t_emb[key]

    def conditions(self, rows: StepRows, grid: tuple[int, int], passes: int = 1) -> torch.Tensor:
        """Steps 1-6 of spec §5.4 -> per-position head conditions z (R, L, D).

        Every attention runs per row group over that group's own lengths (`StepRows.groups`), and row-wise
        layers run on each row's own tokens (packed), so a row's result does not depend on its batch-mates. That is
        what lets `passes` > 1 run the rows in that many passes of contiguous rows (about R/passes each: with CFG
        and 2 passes, an item's cond rows, then its uncond rows) when the activations of all rows at once do not
        fit: the same z, for a peak that the step's transients add only R/passes rows' worth to."""
        r = rows.tokens.shape[0]
        if passes <= 1 or r == 1:
            return self._conditions(rows, grid)
        n = min(passes, r)
        bounds = [i * r // n for i in range(n + 1)]
        return torch.cat([self._conditions(rows.rows(a, b), grid) for a, b in pairwise(bounds)])

    def _conditions(self, rows: StepRows, grid: tuple[int, int]) -> torch.Tensor:
        mar, p = self.model.mar, self.model.cfg.mar.buffer_size
        segments = rows.encoder_segments(p)
        x_enc = mar.encode_packed(rows.tokens, rows.visible, grid, segments)  # (N, D): each row's P+V_r tokens
        chunks, first = [], 0
        for a, b, t, v in rows.groups:
            chunks.append(ChunkGroup(a, b, t, v + p, prefix_runs(rows.prefixes, a, b), first))
            first += (b - a) * (v + p)
        u = to_chunk_layout(self.model.proj_in(x_enc), chunks, p)  # (N, H): visible tokens, then buffers
        h = self.runner.chunk(u, rows.text_mask, chunks)  # (N, H)
        x_enc = x_enc + self.model.proj_out(to_chunk_layout(h, chunks, p, back=True))  # buffers first again
        return mar.decode(x_enc, rows.visible, grid, rows.con_embed, segments)  # (R, L, D)

    def sample_head(self, cond_z: torch.Tensor, uncond_z: torch.Tensor | None, scale: torch.Tensor,
                    temperature: torch.Tensor, init: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """Diffusion head over N committed tokens (spec §4.3) -> (N, C) float32.

        cond_z, uncond_z (N, D): conditions (uncond_z None: no CFG for any row); scale (N, 1) float32 guidance
        per row; temperature (N, 1); init (N, C) and noise (K-1, N, C): the rows' own draws, on the device."""
        n = init.shape[0]
        if n == 0:  # a step that commits no token: more steps than tokens (the schedule holds the last one back)
            return init
        rows = max(HEAD_ROWS, -(-n // HEAD_ROWS) * HEAD_ROWS)
        if n == rows:
            return self._head(cond_z, uncond_z, scale, temperature, init, noise)

        def pad(t: torch.Tensor, dim: int = 0) -> torch.Tensor:  # repeat the first row; rows are independent
            return torch.cat([t] + [t.narrow(dim, 0, 1)] * (rows - n), dim=dim)

        out = self._head(pad(cond_z), None if uncond_z is None else pad(uncond_z), pad(scale), pad(temperature),
                         pad(init), pad(noise, 1))
        return out[:n]

    def _head(self, cond_z: torch.Tensor, uncond_z: torch.Tensor | None, scale: torch.Tensor,
              temperature: torch.Tensor, init: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        net = self.model.mar.diffloss.net
        c = net.input_proj.in_features
        t_emb = self.time_embeddings()
        cond = net.cond_embed(cond_z)
        uncond = None if uncond_z is None else net.cond_embed(uncond_z)
        if self.cuda_graphs and init.is_cuda:
            if self._graphs is None or self._graphs.t_emb is not t_emb:
                self._graphs = HeadGraphs(net, self.schedule, t_emb)
            return self._graphs.run(init, noise, temperature, cond, uncond, scale)
        if uncond is not None:
            both = torch.cat([cond, uncond])  # (2N, W)

            def denoise(state: torch.Tensor, step: int) -> torch.Tensor:
                out = net.forward_embedded(torch.cat([state, state]), both + t_emb[step])
                return cfg_mix(out, scale, c)
        else:

            def denoise(state: torch.Tensor, step: int) -> torch.Tensor:
                return net.forward_embedded(state, cond + t_emb[step])

        return p_sample_loop(self.schedule, denoise, init, noise, temperature)
