"""Pixel conversions (spec §5.6, §6.2, §6.3)."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from model.images import center_crop_resize, edit_pixels, pad_square_resize, to_pil, understand_pixels


def test_center_crop_takes_the_middle_square():
    arr = np.zeros((20, 40, 3), dtype=np.uint8)
    arr[:, 10:30] = 255  # the centred 20x20 square is white
    out = center_crop_resize(Image.fromarray(arr), 20)
    assert np.asarray(out).min() == 255


def test_pad_square_uses_grey_127_and_centres():
    out = pad_square_resize(Image.new("RGBA", (40, 20), (255, 0, 0, 255)), 40)
    a = np.asarray(out)
    assert out.mode == "RGB" and tuple(a[0, 0]) == (127, 127, 127) and tuple(a[20, 20]) == (255, 0, 0)


def test_pixel_ranges_and_output_mapping():
    img = Image.new("L", (16, 16), 255)
    assert edit_pixels([img], 16, torch.float32, torch.device("cpu")).min() == 1.0
    assert understand_pixels([img], 16, torch.bfloat16, torch.device("cpu")).dtype == torch.bfloat16
    x = torch.tensor([-1.0, 0.0, 1.0, 2.0]).view(1, 1, 1, 4).expand(1, 3, 1, 4)
    assert np.asarray(to_pil(x)[0])[0, :, 0].tolist() == [0, 128, 255, 255]  # clamp(127.5x + 128), truncated
