"""From a claimed job row to a model request: reading its input image and mapping its params.

Edit and understand jobs carry their input in the object store (`input_key`, written at submission), so the
job is self-contained; here it is fetched and decoded. Whatever makes one job unusable (a missing or
undecodable input, a non-square size, an unknown output format) raises `InvalidInput` for that job alone.
It imports the model's request types but knows nothing of batches or leases.
"""

from __future__ import annotations

from typing import Any

from PIL import Image

from model.inference import EditRequest, GenerateRequest, UnderstandRequest
from storage.errors import NotFound
from storage.objects import ObjectStore
from storage.records import JobRecord
from workers.encoding import InvalidInput, decode_image, output_format

ModelRequest = GenerateRequest | EditRequest | UnderstandRequest


def load_input(objects: ObjectStore, job: JobRecord) -> Image.Image:
    """The job's input image, decoded to RGB."""
    if not job.input_key:
        raise InvalidInput(f"{job.kind} job has no input image")
    try:
        data = objects.get(job.input_key)
    except NotFound as exc:
        raise InvalidInput(f"input image {job.input_key} is missing") from exc
    return decode_image(data)


def build_request(job: JobRecord, image: Image.Image | None) -> ModelRequest:
    """The engine request for one job (its id is the job id, its seed the job's recorded seed)."""
    p: dict[str, Any] = job.params
    seed = int(job.seed if job.seed is not None else p.get("seed", 0))
    if job.kind == "understand":
        assert image is not None
        return UnderstandRequest(
            id=job.id, image=image, question=str(p.get("question", "")), seed=seed, size=int(p["size"]),
            max_new_tokens=int(p.get("max_new_tokens", 256)), temperature=float(p.get("temperature", 0.0)),
        )
    output_format(p)  # an unknown format fails the job before it costs model time
    width, height = int(p["width"]), int(p["height"])
    if width != height:
        raise InvalidInput(f"only square sizes are supported, got {width}x{height}")
    common: dict[str, Any] = {
        "seed": seed, "size": width, "num_images": int(p.get("num_images", 1)), "steps": int(p["steps"]),
        "guidance_scale": float(p.get("guidance_scale", 3.0)),
        "guidance_schedule": str(p.get("guidance_schedule", "constant")),
        "temperature": float(p.get("temperature", 1.0)),
    }
    if job.kind == "edit":
        assert image is not None
        return EditRequest(id=job.id, image=image, instruction=str(p.get("instruction", "")), **common)
    if job.kind == "generate":
        return GenerateRequest(
            id=job.id, prompt=str(p.get("prompt", "")), negative_prompt=p.get("negative_prompt"), **common
        )
    raise InvalidInput(f"unknown job kind {job.kind!r}")


def prepare(objects: ObjectStore, job: JobRecord) -> ModelRequest:
    """Read and decode the job's input (if any) and build its request; `InvalidInput` if it cannot run."""
    image = load_input(objects, job) if job.kind in ("edit", "understand") else None
    return build_request(job, image)
