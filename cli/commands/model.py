"""`unipic model ...`: model information (owned by the model work; imports model lazily)."""

from __future__ import annotations

import json
from typing import Any

import typer

app = typer.Typer(no_args_is_help=True)

DTYPE_BYTES = {"bfloat16": 2, "float16": 2, "float32": 4}
RESOLUTIONS = (256, 512, 1024)


def model_info(config_name: str) -> dict[str, Any]:
    """Parameter counts per module (built on the meta device, SigLIP2 included), memory and token counts."""
    import torch

    from model.config import get_config
    from model.unipic import UniPic, module_parameter_counts

    cfg = get_config(config_name).with_flags(with_siglip=True)
    with torch.device("meta"):
        model = UniPic(cfg)
    modules = module_parameter_counts(model)
    total = sum(v for k, v in modules.items() if k != "mar.diffloss")
    served = total - modules["siglip2"] - modules["siglip2_proj"]
    p = cfg.mar.buffer_size
    tokens = {str(s): {"grid": s // cfg.vae.stride, "image_tokens": cfg.tokens_for(s),
                       "llm_image_slots": cfg.tokens_for(s) + p} for s in RESOLUTIONS}
    return {
        "config": cfg.name,
        "modules": modules,
        "total": total,
        "served_total": served,
        "weight_bytes": {d: served * b for d, b in DTYPE_BYTES.items()},
        "tokens": tokens,
    }


def _fmt(n: float) -> str:
    for unit, scale in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= scale:
            return f"{n / scale:.3f} {unit}"
    return str(int(n))


@app.command()
def info(config: str = typer.Argument("unipic-1.5b", help="Config name: unipic-1.5b or tiny"),
         as_json: bool = typer.Option(False, "--json", help="Print one JSON object")) -> None:
    """Parameter counts per module, weight memory per dtype and token counts per resolution."""
    try:
        data = model_info(config)
    except ValueError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(2) from None
    if as_json:
        typer.echo(json.dumps(data))
        return
    typer.echo(f"config {data['config']}")
    for name, n in data["modules"].items():
        typer.echo(f"  {name:<14} {_fmt(n):>12}  ({n:,})")
    typer.echo(f"  {'total':<14} {_fmt(data['total']):>12}  (served without SigLIP2: {_fmt(data['served_total'])})")
    for dtype, nbytes in data["weight_bytes"].items():
        typer.echo(f"  weights as {dtype:<9} {nbytes / 2**30:6.2f} GiB (served modules)")
    for size, t in data["tokens"].items():
        typer.echo(f"  {size:>5} px: grid {t['grid']}x{t['grid']}, {t['image_tokens']} image tokens, "
                   f"{t['llm_image_slots']} LLM image slots")
