"""The MAR sampling loop (spec §5): masked autoregressive generation conditioned through the LLM.

Owns the per-step flow encoder -> proj_in -> LLM chunk over the read-only prefix -> proj_out residual -> decoder
-> diffusion head, the commit schedule, CFG row pairing, per-item random draws and dropping canceled items.
Rows are [cond rows of item 0, item 1, ...; the same for uncond] so an item's rows, noise and orders never depend
on its batch-mates. It does no PIL, no tokenizing and no VAE decoding (the engine does).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from model.diffloss import cfg_mix
from model.diffusion import DiffusionSchedule, masked_after, p_sample_loop
from model.head_graph import HeadGraphs
from model.llm import KVBuffer, QwenRunner
from model.unipic import UniPic

ProgressFn = Callable[[list[str], int, int], None]
CancelFn = Callable[[], set[str]]


@dataclass
class SampleItem:
    """One request: `rows` images, its own generator (CPU) and temperature."""

    id: str
    rows: int
    temperature: float
    generator: torch.Generator


@dataclass
class SampleState:
    items: list[SampleItem]
    cfg: bool
    tokens: torch.Tensor  # (R, L, C)
    orders: torch.Tensor  # (B, L) per cond row; uncond rows reuse them
    kv: KVBuffer  # R rows
    text_mask: torch.Tensor  # (R, T)
    con_embed: torch.Tensor | None  # (R, P+L, D) decoder_embed(x_con) for editing
    canceled: list[str] = field(default_factory=list)

    @property
    def cond_rows(self) -> int:
        return self.orders.shape[0]

    def drop(self, ids: set[str]) -> None:
        """Remove the items in `ids` (all their cond, uncond and KV rows)."""
        keep_items = [it for it in self.items if it.id not in ids]
        if len(keep_items) == len(self.items):
            return
        keep: list[int] = []
        start = 0
        for it in self.items:
            if it.id not in ids:
                keep.extend(range(start, start + it.rows))
            start += it.rows
        cond = torch.tensor(keep, dtype=torch.long, device=self.tokens.device)
        rows = torch.cat([cond, cond + self.cond_rows]) if self.cfg else cond
        self.canceled.extend(it.id for it in self.items if it.id in ids)
        self.items = keep_items
        self.tokens = self.tokens.index_select(0, rows)
        self.orders = self.orders.index_select(0, cond)
        self.kv = self.kv.select(rows)
        self.text_mask = self.text_mask.index_select(0, rows)
        if self.con_embed is not None:
            self.con_embed = self.con_embed.index_select(0, rows)


def cfg_scale(scale: float, schedule: str, seq_len: int, masked_next: int) -> float:
    if schedule == "constant":
        return scale
    if schedule == "linear":
        return 1 + (scale - 1) * (seq_len - masked_next) / seq_len
    raise ValueError(f"unsupported guidance_schedule {schedule!r} (constant or linear)")


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

    def init_state(
        self,
        items: list[SampleItem],
        kv: KVBuffer,
        text_mask: torch.Tensor,
        seq_len: int,
        cfg: bool,
        con_embed: torch.Tensor | None,
    ) -> SampleState:
        dev, dtype = kv.keys[0].device, kv.keys[0].dtype
        orders = torch.cat([torch.stack([torch.randperm(seq_len, generator=it.generator) for _ in range(it.rows)])
                            for it in items]).to(dev)  # (B, L)
        rows = text_mask.shape[0]
        tokens = torch.zeros(rows, seq_len, self.model.cfg.mar.token_dim, device=dev, dtype=dtype)
        return SampleState(items, cfg, tokens, orders, kv, text_mask, con_embed)

    def run(
        self,
        state: SampleState,
        grid: tuple[int, int],
        num_iter: int,
        scale: float,
        schedule: str,
        progress: ProgressFn | None = None,
        should_cancel: CancelFn | None = None,
    ) -> SampleState:
        seq_len = grid[0] * grid[1]
        after = masked_after(seq_len, num_iter)
        masked = seq_len
        for step in range(num_iter):
            self.step(state, grid, masked, after[step], scale, schedule)
            masked = after[step]
            if progress is not None:
                progress([it.id for it in state.items], step + 1, num_iter)
            if should_cancel is not None and step < num_iter - 1:
                state.drop(set(should_cancel()))
                if not state.items:
                    break
        return state

    def step(self, st: SampleState, grid: tuple[int, int], masked: int, masked_next: int, scale: float,
             schedule: str) -> None:
        mar, p = self.model.mar, self.model.cfg.mar.buffer_size
        seq_len = grid[0] * grid[1]
        b = st.cond_rows
        visible = st.orders[:, masked:].sort(dim=1).values  # (B, V) ascending raster
        commit = st.orders[:, masked_next:masked].sort(dim=1).values  # (B, k)
        if st.cfg:
            visible = torch.cat([visible, visible])
        x_enc = mar.encode(st.tokens, visible, grid)  # (R, P+V, D)
        u = self.model.proj_in(x_enc)
        u = torch.cat([u[:, p:], u[:, :p]], dim=1)  # visible tokens, then buffers
        h = self.runner.extend(u, st.kv, st.text_mask)  # (R, V+P, H)
        h = torch.cat([h[:, -p:], h[:, :-p]], dim=1)  # buffers first again
        x_enc = x_enc + self.model.proj_out(h)
        z = mar.decode(x_enc, visible, grid, st.con_embed)  # (R, L, D)
        d = z.shape[-1]
        idx = commit[..., None].expand(-1, -1, d)
        cond_z = torch.gather(z[:b], 1, idx).reshape(-1, d)  # (B·k, D) row-major
        uncond_z = torch.gather(z[b:], 1, idx).reshape(-1, d) if st.cfg else None
        s = cfg_scale(scale, schedule, seq_len, max(masked_next, 1)) if st.cfg else 1.0
        samples = self.sample_head(st.items, cond_z, uncond_z, commit.shape[1], s)
        tokens = st.tokens.clone()
        c = tokens.shape[-1]
        tokens[:b].scatter_(1, commit[..., None].expand(-1, -1, c), samples.to(tokens.dtype).view(b, -1, c))
        if st.cfg:
            tokens[b:] = tokens[:b]
        st.tokens = tokens

    def sample_head(self, items: list[SampleItem], cond_z: torch.Tensor, uncond_z: torch.Tensor | None, k: int,
                    scale: float) -> torch.Tensor:
        """Diffusion head over the committed tokens; noise drawn per item from its generator. -> (B·k, C) fp32."""
        net = self.model.mar.diffloss.net
        c, steps, dev = net.input_proj.in_features, self.schedule.num_steps, cond_z.device
        init, noise, temps = [], [], []
        for it in items:
            n = it.rows * k
            init.append(torch.randn(n, c, generator=it.generator))
            noise.append(torch.randn(max(steps - 1, 0), n, c, generator=it.generator))
            temps.append(torch.full((n, 1), float(it.temperature)))
        x = torch.cat(init).to(dev)
        xi = torch.cat(noise, dim=1).to(dev)
        temp = torch.cat(temps).to(dev)
        t_emb = self.time_embeddings()
        cond = net.cond_embed(cond_z)
        use_cfg = uncond_z is not None and scale != 1.0
        if self.cuda_graphs and x.is_cuda:
            if self._graphs is None or self._graphs.t_emb is not t_emb:
                self._graphs = HeadGraphs(net, self.schedule, t_emb)
            return self._graphs.run(x, xi, temp, cond, net.cond_embed(uncond_z) if use_cfg else None, scale)
        if use_cfg:
            both = torch.cat([cond, net.cond_embed(uncond_z)])

            def denoise(state: torch.Tensor, step: int) -> torch.Tensor:
                out = net.forward_embedded(torch.cat([state, state]), both + t_emb[step])
                return cfg_mix(out, scale, c)
        else:

            def denoise(state: torch.Tensor, step: int) -> torch.Tensor:
                return net.forward_embedded(state, cond + t_emb[step])

        return p_sample_loop(self.schedule, denoise, x, xi, temp)
