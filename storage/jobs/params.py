"""A job's `params` per kind: field names, types and defaults, defined once.

The API fills the defaults and stores `to_dict()` as the job's normalized `params` (JSON); the worker reads them
back with `params_of(kind, params)`; the API schemas take their defaults from the same classes. A stored value
is coerced to its field's type on the way back (JSON keeps `3.0` and `3` apart only loosely). `from_dict` raises
`ValueError` for a kind it does not know or a required field that is missing. It knows nothing of HTTP,
settings bounds or the model.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any, Literal, Self

GuidanceSchedule = Literal["constant", "linear"]
OutputFormat = Literal["png", "webp", "jpeg"]
DEFAULT_SIZE = 1024  # the side of a square image when the request names none (if the deployment allows it)
_COERCE = {"int": int, "float": float, "str": str}


@dataclass(frozen=True, kw_only=True)
class _Params:
    seed: int

    def to_dict(self) -> dict[str, Any]:
        """The JSON-ready `params` stored on the job row."""
        return asdict(self)

    @classmethod
    def from_dict(cls, params: Mapping[str, Any]) -> Self:
        """The typed params of a stored dict (unknown keys ignored); `ValueError` if a required one is missing."""
        values = {}
        for f in fields(cls):
            if f.name in params:
                value = params[f.name]
                coerce = _COERCE.get(str(f.type))
                values[f.name] = coerce(value) if coerce is not None and value is not None else value
        try:
            return cls(**values)
        except TypeError as exc:
            raise ValueError(f"incomplete {cls.__name__}: {exc}") from None


@dataclass(frozen=True, kw_only=True)
class SamplingParams(_Params):
    """Image sampling (generate and edit)."""

    width: int
    height: int
    num_images: int = 1
    steps: int = 32
    guidance_scale: float = 3.0
    guidance_schedule: GuidanceSchedule = "constant"
    temperature: float = 1.0
    output_format: OutputFormat = "png"


@dataclass(frozen=True, kw_only=True)
class GenerateParams(SamplingParams):
    prompt: str
    negative_prompt: str | None = None


@dataclass(frozen=True, kw_only=True)
class EditParams(SamplingParams):
    instruction: str


@dataclass(frozen=True, kw_only=True)
class UnderstandParams(_Params):
    question: str
    size: int
    max_new_tokens: int = 256
    temperature: float = 0.0  # greedy


JobParams = GenerateParams | EditParams | UnderstandParams
PARAMS_BY_KIND: dict[str, type[GenerateParams] | type[EditParams] | type[UnderstandParams]] = {
    "generate": GenerateParams, "edit": EditParams, "understand": UnderstandParams,
}


def params_of(kind: str, params: Mapping[str, Any]) -> JobParams:
    """The typed params of a stored job; `ValueError` for an unknown kind or missing fields."""
    if kind not in PARAMS_BY_KIND:
        raise ValueError(f"unknown job kind {kind!r}")
    return PARAMS_BY_KIND[kind].from_dict(params)


def progress_total(kind: str, params: Mapping[str, Any]) -> int:
    """A job's own step count, the `total` of its progress: sampling steps, or `max_new_tokens` to understand."""
    typed = params_of(kind, params)
    return typed.max_new_tokens if isinstance(typed, UnderstandParams) else typed.steps
