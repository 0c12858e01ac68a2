"""Load before consume: the model worker loads its model and runs a one-item warm-up before it takes any work.

Owns the documented exit codes of a model worker and the translation of every known start-up failure (bad
model path, no CUDA, unsupported dtype, out of memory at load, corrupted or mismatched checkpoint, missing
tokenizer, failed warm-up) into a `StartupFailure` carrying one line that says what failed and what to do.
The callers (`cli.commands.worker`, `workers.gpu`) print that line and exit with its code before subscribing to any
queue, so a worker that cannot serve never takes a message.

It knows nothing of Celery, queues or jobs.
"""

from __future__ import annotations

import gc
import logging
from dataclasses import dataclass
from enum import IntEnum
from typing import Any

from storage.routing import served_model
from storage.settings import Settings
from workers.device.card_fit import configure_engine
from workers.device.health import GuardedEngine, probe_request
from workers.device.host_memory import keep_host_memory
from workers.faults import FaultInjector
from workers.runner.oom import is_oom

log = logging.getLogger(__name__)


class ExitCode(IntEnum):
    """A model worker's exit status (documented in the README; supervisors restart on any non-zero)."""

    OK = 0
    FAILURE = 1  # Celery's own failures (e.g. the broker refused us)
    BAD_SETTINGS = 2  # an UNIPIC_* variable is invalid
    MODEL_NOT_FOUND = 10
    NO_DEVICE = 11
    UNSUPPORTED_DTYPE = 12
    OUT_OF_MEMORY = 13
    BAD_CHECKPOINT = 14
    MISSING_TOKENIZER = 15
    WARMUP_FAILED = 16
    DEVICE_LOST = 17
    STARTUP_FAILED = 18  # anything unexpected while starting (the traceback is logged)


class StartupFailure(Exception):
    """The worker cannot serve; `line()` is what to print, `code` the exit status."""

    def __init__(self, code: ExitCode, what: str, todo: str) -> None:
        super().__init__(what)
        self.code, self.what, self.todo = code, what, todo

    def line(self) -> str:
        return f"error: {self.what}; {self.todo} (exit code {int(self.code)})"


_NOT_FOUND = ("neither a directory nor", "cannot fetch", "missing checkpoint file")


def runtime_dtype(settings: Settings) -> str:
    # half precision is for accelerators; a CPU worker computes in float32
    return settings.model_dtype if settings.worker_device.startswith("cuda") else "float32"


def load_ready_engine(settings: Settings, faults: FaultInjector | None = None) -> GuardedEngine:
    """Check the device, load weights and tokenizer, run the warm-up: a guarded engine ready to serve."""
    device, dtype = settings.worker_device, runtime_dtype(settings)
    check_device(device, dtype)
    if settings.worker_host_memory_reuse:
        keep_host_memory()  # before the weights: blocks allocated from now on are reused, not mapped again
    engine = _load(settings.model, device, dtype, fast=settings.model_fast, cache_dir=settings.model_cache_dir,
                   int8=settings.model_int8)
    configure_engine(engine)  # card fit's CFG row passes per size, where one batch does not fit the card
    guarded = GuardedEngine(engine, probe_request(settings.allowed_sizes, settings.worker_max_pixels),
                            check_device=(faults or FaultInjector()).check_device)
    try:
        guarded.warm_up()
    except Exception as exc:
        if is_oom(exc):
            raise _oom(device, "the warm-up") from exc
        raise StartupFailure(ExitCode.WARMUP_FAILED, f"the one-item warm-up on {device} failed: {_short(exc)}",
                             "check the device (nvidia-smi, driver and CUDA versions) and the checkpoint") from exc
    return guarded


def freeze_startup_heap() -> int:
    """(once the worker is ready, before it serves) Move every object the process holds now (torch, transformers,
    the model's modules, the stores, the runner: about 510,000 in a tiny-model worker, most of which live as long
    as the process) out of the cyclic garbage collector's reach, after one last collection. A full collection
    walks every tracked object while holding the GIL, so before this each one stopped the sampling thread, the
    claim and finishing threads and the wake-up listener at once: 0.24-0.52 s every 30-60 s under load on the
    2-core CPU (`gc.callbacks`, `bench.fairness --b-jobs 300`), which were most of tenant B's slowest jobs (a
    claim heard 0.49 s late, a 64 px decode "taking" 0.45 s). Afterwards a full collection walks only what was
    made since: 0.03-0.08 s, five times in 3.5 minutes of the bulk there (once claims stopped making an alias of
    the jobs table each, `scheduling.worth_claiming`). Returns how many objects were frozen."""
    gc.collect()
    gc.freeze()
    frozen = gc.get_freeze_count()
    log.info("%d long-lived objects frozen out of the garbage collector's full passes", frozen)
    return frozen


@dataclass(frozen=True)
class WorkerModel:
    """The model a worker holds, as it advertises it: its routing key (`storage.routing.served_model`: None for
    the deployment's default) and the digest of the weights it loaded (`model.checkpoint.checkpoint_hash`)."""

    key: str | None
    checkpoint_hash: str | None


def held_model(settings: Settings, engine: Any) -> WorkerModel:
    """What `engine` (loaded from these settings) holds; hashed once, at start (seconds for a full checkpoint)."""
    from model.checkpoint import checkpoint_hash

    loaded = getattr(engine, "loaded", None)  # engines that are not a loaded checkpoint (tests) have no hash
    digest = checkpoint_hash(loaded) if loaded is not None else None
    return WorkerModel(served_model(settings.model_name, settings.default_model), digest)


def check_device(device: str, dtype: str) -> None:
    """Refuse a device this torch cannot use, before loading anything (initializes no CUDA context)."""
    import torch

    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            why = ("this torch build has no CUDA support" if torch.version.cuda is None
                   else "no usable NVIDIA GPU or driver")
            raise StartupFailure(ExitCode.NO_DEVICE, f"device {device} is not available: {why} "
                                 f"(torch {torch.__version__})",
                                 "start the worker with --device cpu, or install a CUDA build of torch and a "
                                 "driver that supports it")
        index = int(device.split(":")[1]) if ":" in device else 0
        count = torch.cuda.device_count()
        if index >= count:
            raise StartupFailure(ExitCode.NO_DEVICE, f"device {device} does not exist ({count} CUDA devices)",
                                 f"use --device cuda:0 .. cuda:{count - 1}")
        if dtype == "bfloat16" and not torch.cuda.is_bf16_supported():
            raise StartupFailure(ExitCode.UNSUPPORTED_DTYPE, f"{device} does not support bfloat16",
                                 "set UNIPIC_MODEL_DTYPE=float16 (or float32)")
    elif device == "mps" and not torch.backends.mps.is_available():
        raise StartupFailure(ExitCode.NO_DEVICE, "device mps is not available on this machine",
                             "start the worker with --device cpu")


def _load(source: str, device: str, dtype: str, fast: bool = False, cache_dir: str = "", int8: bool = False) -> Any:
    """`model.inference.load_engine`, step by step, so each failure is named by the step that failed; a hub repo
    downloads into `cache_dir` (`UNIPIC_MODEL_CACHE_DIR`; empty: the hub's default); `int8`: the LLM's linears as
    weight-only int8 (`UNIPIC_MODEL_INT8`), before anything else is allocated on the device."""
    from model.checkpoint import load_model
    from model.errors import CheckpointError
    from model.inference import UniPicEngine
    from model.llm import quantize_int8
    from model.prompts import load_tokenizer

    try:
        loaded = load_model(source, device, dtype, cache_dir=cache_dir or None)
    except Exception as exc:
        raise _weights_failure(exc, source, device) from exc
    if int8:
        quantize_int8(loaded.model.llm)
    try:
        tokenizer = load_tokenizer(loaded.directory, loaded.config.llm.vocab_size)
    except CheckpointError as exc:
        raise StartupFailure(ExitCode.BAD_CHECKPOINT, f"the tokenizer does not match the checkpoint: {exc}",
                             "use the tokenizer files that came with the checkpoint") from exc
    except Exception as exc:
        raise StartupFailure(ExitCode.MISSING_TOKENIZER,
                             f"cannot load the tokenizer of {source!r}: {_short(exc)}",
                             "put the tokenizer files (vocab.json, merges.txt, tokenizer_config.json) next to the "
                             "checkpoint, or download the model again") from exc
    params = next(loaded.model.parameters())
    return UniPicEngine(loaded, tokenizer, params.device, params.dtype, fast=fast)


def _weights_failure(exc: Exception, source: str, device: str) -> Exception:
    from model.errors import CheckpointError

    if is_oom(exc):
        return _oom(device, "loading the model")
    if isinstance(exc, CheckpointError):
        if any(marker in str(exc) for marker in _NOT_FOUND):
            return StartupFailure(ExitCode.MODEL_NOT_FOUND, f"cannot find the model: {exc}",
                                  "pass --model (or UNIPIC_MODEL) a checkpoint directory, a Hugging Face repo id "
                                  "or 'tiny'")
        return StartupFailure(ExitCode.BAD_CHECKPOINT, f"the checkpoint is corrupt or does not match: {exc}",
                              "download the checkpoint again (and delete ~/.cache/unipic/converted)")
    if isinstance(exc, ValueError) and "dtype" in str(exc):
        return StartupFailure(ExitCode.UNSUPPORTED_DTYPE, str(exc), "set UNIPIC_MODEL_DTYPE to a supported dtype")
    if "cuda" in str(exc).lower():
        return StartupFailure(ExitCode.NO_DEVICE, f"device {device} failed while loading: {_short(exc)}",
                              "check the driver (nvidia-smi) or start with --device cpu")
    log.exception("loading %s on %s failed", source, device)
    return StartupFailure(ExitCode.STARTUP_FAILED, f"loading {source!r} on {device} failed: {_short(exc)}",
                          "see the traceback above")


def _oom(device: str, step: str) -> StartupFailure:
    return StartupFailure(ExitCode.OUT_OF_MEMORY, f"out of memory on {device} while {step}",
                          "use a GPU with more memory, UNIPIC_MODEL_DTYPE=bfloat16 or float16, or stop other "
                          "processes using the GPU")


def _short(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 300 else text[:297] + "..."
