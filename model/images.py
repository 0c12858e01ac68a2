"""Pixel conversions at the engine boundary (spec §5.6, §6.2, §6.3): PIL in, PIL out.

Owns crop/pad/resize rules and the [-1, 1] <-> uint8 mappings; knows nothing about the network.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image


def to_rgb(image: Image.Image) -> Image.Image:
    return image if image.mode == "RGB" else image.convert("RGB")


def center_crop_resize(image: Image.Image, size: int) -> Image.Image:
    """Editing input: largest centred square, then bicubic resize (PIL's default for RGB)."""
    image = to_rgb(image)
    w, h = image.size
    s = min(w, h)
    left, top = (w - s) // 2, (h - s) // 2
    return image.crop((left, top, left + s, top + s)).resize((size, size), Image.Resampling.BICUBIC)


def pad_square_resize(image: Image.Image, size: int) -> Image.Image:
    """Understanding input: pad to a square with grey 127 (original centred), then bicubic resize."""
    image = to_rgb(image)
    w, h = image.size
    s = max(w, h)
    canvas = Image.new("RGB", (s, s), (127, 127, 127))
    canvas.paste(image, ((s - w) // 2, (s - h) // 2))
    return canvas.resize((size, size), Image.Resampling.BICUBIC)


def edit_pixels(images: list[Image.Image], size: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """(N, 3, size, size) in [-1, 1]: normalised in float32, then cast (as the edit script does)."""
    arr = np.stack([np.asarray(center_crop_resize(im, size)) for im in images])  # (N, H, W, 3) uint8
    x = torch.from_numpy(arr).permute(0, 3, 1, 2).float()
    return (2 * (x / 255) - 1).to(device=device, dtype=dtype)


def understand_pixels(images: list[Image.Image], size: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """(N, 3, size, size) in [-1, 1]: cast to the model dtype before dividing (as the understanding script does)."""
    arr = np.stack([np.asarray(pad_square_resize(im, size)) for im in images])
    x = torch.from_numpy(arr).permute(0, 3, 1, 2).to(device=device, dtype=dtype)
    return 2 * (x / 255) - 1


def to_pil(pixels: torch.Tensor) -> list[Image.Image]:
    """(N, 3, H, W) in ~[-1, 1] -> uint8 RGB images: clamp(127.5·x + 128) truncated, in the model dtype."""
    u8 = torch.clamp(127.5 * pixels + 128, 0, 255).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    return [Image.fromarray(a) for a in u8]
