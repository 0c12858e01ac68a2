"""What the model is asked and what it answers: request and result records, per-item generators, checks.

Owns the plain data the engine, the running set and the workers exchange, and the validation of sampling
parameters that must fail before any work starts. It knows nothing of tensors beyond the item's generator.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from PIL import Image

SCHEDULES = ("constant", "linear")


@dataclass(kw_only=True)
class ImageSampling:
    """The sampling parameters every image request takes (keyword-only; `check_sampling` checks them)."""

    seed: int
    size: int = 1024
    num_images: int = 1
    steps: int = 32
    guidance_scale: float = 3.0
    guidance_schedule: str = "constant"
    temperature: float = 1.0


@dataclass
class GenerateRequest(ImageSampling):
    id: str
    prompt: str
    negative_prompt: str | None = None


@dataclass
class EditRequest(ImageSampling):
    id: str
    image: Image.Image
    instruction: str


@dataclass
class UnderstandRequest:
    id: str
    image: Image.Image
    question: str
    seed: int
    size: int = 1024
    max_new_tokens: int = 256
    temperature: float = 0.0


ImageRequest = GenerateRequest | EditRequest


@dataclass
class ImageResult:
    id: str
    images: list[Image.Image]
    seed: int
    seconds: float
    canceled: bool = False


@dataclass
class TextResult:
    id: str
    text: str
    seed: int
    seconds: float
    canceled: bool = False


def item_generator(seed: int) -> torch.Generator:
    """The item's own CPU generator: draws are then moved to the device, never taken from device RNG state."""
    return torch.Generator(device="cpu").manual_seed(int(seed) % (2**63))


def check_sampling(requests: Sequence[ImageRequest]) -> None:
    """Reject bad sampling parameters before any work starts (ValueError names the request)."""
    for r in requests:
        if r.guidance_schedule not in SCHEDULES:
            raise ValueError(f"request {r.id}: guidance_schedule must be one of {SCHEDULES}")
        if r.steps < 1 or r.num_images < 1:
            raise ValueError(f"request {r.id}: steps and num_images must be >= 1")
        if r.temperature < 0 or r.guidance_scale < 0:
            raise ValueError(f"request {r.id}: temperature and guidance_scale must be >= 0")
