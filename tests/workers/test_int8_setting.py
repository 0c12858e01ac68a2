"""`UNIPIC_MODEL_INT8` reaches the worker's engine: the weights the worker loads are the int8 ones, and the worker
still warms up and serves (the setting was a dead switch before: only `load_engine(int8=True)` had it)."""

from __future__ import annotations

from pathlib import Path

from model.engine.requests import GenerateRequest
from model.llm import Int8Linear
from storage.settings import Settings
from workers.startup import load_ready_engine


def _int8_linears(engine: object) -> int:
    return sum(isinstance(m, Int8Linear) for m in engine.model.llm.modules())  # type: ignore[attr-defined]


def test_the_int8_setting_loads_the_llm_linears_as_int8_and_the_worker_serves(tiny_checkpoint: Path) -> None:
    # Given the same tiny checkpoint loaded by a worker with and without UNIPIC_MODEL_INT8
    plain = load_ready_engine(Settings(model=str(tiny_checkpoint), worker_device="cpu"))
    int8 = load_ready_engine(Settings(model=str(tiny_checkpoint), worker_device="cpu", model_int8=True))
    # Then only the int8 worker's LLM holds int8 linears (q/k/v/o and the MLP of every layer)
    layers = len(plain.model.llm.model.layers)
    assert _int8_linears(plain) == 0 and _int8_linears(int8) == 7 * layers
    # And it generates an image of the asked size (it passed its warm-up too)
    [result] = int8.generate([GenerateRequest(id="a", prompt="a red cube", size=256, steps=2, seed=1)])
    assert [image.size for image in result.images] == [(256, 256)]
