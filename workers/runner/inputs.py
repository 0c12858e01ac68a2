"""From a claimed job row to a model request: reading its input image and mapping its params.

Edit and understand jobs carry their input in the object store (`input_key`, written at submission), so the
job is self-contained; here it is fetched and decoded. Whatever makes one job unusable (a missing or
undecodable input, a non-square size, an unknown output format) raises `InvalidInput` for that job alone.
It imports the model's request types but knows nothing of batches or leases.
"""

from __future__ import annotations

from PIL import Image

from model.inference import EditRequest, GenerateRequest, UnderstandRequest
from storage.errors import NotFound
from storage.jobs.params import EditParams, GenerateParams, JobParams, UnderstandParams, params_of
from storage.records import JobRecord
from workers.runner.encoding import InvalidInput, decode_image, output_format
from workers.runner.engine import ModelRequest
from workers.transport.base import ObjectPort


def load_input(objects: ObjectPort, job: JobRecord) -> Image.Image:
    """The job's input image, decoded to RGB."""
    if not job.input_key:
        raise InvalidInput(f"{job.kind} job has no input image")
    try:
        data = objects.get(job.input_key)
    except NotFound as exc:
        raise InvalidInput(f"input image {job.input_key} is missing") from exc
    return decode_image(data)


def typed_params(job: JobRecord) -> JobParams:
    """The job's stored params, typed (`storage.jobs.params` holds the defaults); `InvalidInput` if unusable."""
    try:
        return params_of(job.kind, job.params)
    except ValueError as exc:
        raise InvalidInput(str(exc)) from None


def build_request(job: JobRecord, image: Image.Image | None) -> ModelRequest:
    """The engine request for one job (its id is the job id, its seed the job's recorded seed)."""
    p = typed_params(job)
    seed = int(job.seed if job.seed is not None else p.seed)
    if isinstance(p, UnderstandParams):
        assert image is not None
        return UnderstandRequest(id=job.id, image=image, question=p.question, seed=seed, size=p.size,
                                 max_new_tokens=p.max_new_tokens, temperature=p.temperature)
    output_format(job.params)  # an unknown format fails the job before it costs model time
    if p.width != p.height:
        raise InvalidInput(f"only square sizes are supported, got {p.width}x{p.height}")
    if isinstance(p, EditParams):
        assert image is not None
        return EditRequest(id=job.id, image=image, instruction=p.instruction, seed=seed, size=p.width,
                           num_images=p.num_images, steps=p.steps, guidance_scale=p.guidance_scale,
                           guidance_schedule=p.guidance_schedule, temperature=p.temperature)
    assert isinstance(p, GenerateParams)
    return GenerateRequest(id=job.id, prompt=p.prompt, negative_prompt=p.negative_prompt, seed=seed, size=p.width,
                           num_images=p.num_images, steps=p.steps, guidance_scale=p.guidance_scale,
                           guidance_schedule=p.guidance_schedule, temperature=p.temperature)


def prepare(objects: ObjectPort, job: JobRecord) -> ModelRequest:
    """Read and decode the job's input (if any) and build its request; `InvalidInput` if it cannot run."""
    image = load_input(objects, job) if job.kind in ("edit", "understand") else None
    return build_request(job, image)
