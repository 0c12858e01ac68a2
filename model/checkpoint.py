"""Checkpoint loading: resolve a source, read weights safely, check keys and shapes strictly, place on a device.

Owns the official file layout (spec §8): `pytorch_model.bin` (whole model minus the VAE), `kl16.ckpt` (`{"model":
VAE state dict}`), tokenizer files, optional `generation_config.json`, plus our `unipic_config.json` naming a preset
(absent in the official repo -> `unipic-1.5b`). Pickles are read with `weights_only=True` (code in a pickle is
refused) and converted once to safetensors, next to the original or in a cache directory if that is read-only;
later loads memory-map the safetensors. Every mismatch is a `CheckpointError` that names the keys or the file.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import pickle
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from model.config import TINY, UniPicConfig, get_config
from model.errors import CheckpointError
from model.unipic import UniPic, init_random_

log = logging.getLogger(__name__)

MODEL_FILE = "pytorch_model.bin"
VAE_FILE = "kl16.ckpt"
CONFIG_FILE = "unipic_config.json"
TINY_SEED = 0
VAE_PREFIXES = ("encoder.", "decoder.", "quant_conv.", "post_quant_conv.")
DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
          "float16": torch.float16, "fp16": torch.float16}


@dataclass
class LoadedModel:
    model: UniPic
    config: UniPicConfig
    directory: Path | None  # where tokenizer / generation config files may be
    model_id: str
    revision: str
    repetition_penalty: float


def parse_dtype(dtype: str | torch.dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    try:
        return DTYPES[dtype]
    except KeyError:
        raise ValueError(f"unsupported dtype {dtype!r}; use one of {sorted(DTYPES)}") from None


def resolve(source: str, cache_dir: str | Path | None = None) -> tuple[Path, str, str]:
    """A local directory or a Hugging Face repo id -> (directory, model_id, revision). A repo is downloaded into
    `cache_dir` (None: the hub's default cache, `HF_HOME`)."""
    path = Path(source).expanduser()
    if path.is_dir():
        return path, _local_model_id(path), _local_revision(path)
    if path.exists() or source.count("/") != 1 or source.startswith((".", "/")):
        raise CheckpointError(f"checkpoint source {source!r} is neither a directory nor a Hugging Face repo id")
    from huggingface_hub import snapshot_download

    patterns = [MODEL_FILE, VAE_FILE, "*.json", "merges.txt", "vocab.json"]
    try:
        local = Path(snapshot_download(repo_id=source, allow_patterns=patterns, cache_dir=cache_dir or None))
    except Exception as exc:  # hub errors are many types; all mean "could not get it"
        raise CheckpointError(f"cannot fetch {source!r} from the Hugging Face hub: {exc}") from exc
    return local, source, local.name


def _local_model_id(path: Path) -> str:
    conf = _read_config_file(path)
    return str(conf.get("model_id", path.resolve().name))


def _local_revision(path: Path) -> str:
    h = hashlib.sha1()
    for name in (MODEL_FILE, VAE_FILE):
        f = path / name
        if f.exists():
            st = f.stat()
            h.update(f"{name}:{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()[:12]


def _read_config_file(path: Path) -> dict:
    f = path / CONFIG_FILE
    if not f.exists():
        return {}
    try:
        return json.loads(f.read_text())
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{f}: unreadable config ({exc})") from exc


def _cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "unipic" / "converted"


def _torch_load(path: Path) -> dict:
    if not path.exists():
        raise CheckpointError(f"missing checkpoint file {path}")
    try:
        try:
            return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as exc:
            if "mmap" not in str(exc):
                raise
            return torch.load(path, map_location="cpu", weights_only=True)  # legacy (non-zip) format
    except pickle.UnpicklingError as exc:
        raise CheckpointError(
            f"{path}: refused to unpickle: it contains objects other than tensors (possible code): {exc}"
        ) from exc
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: cannot read (truncated or corrupt file): {exc}") from exc


def _writable(directory: Path) -> bool:
    """Probe by writing (permission bits lie for root, and read-only mounts say EROFS only on write)."""
    probe = directory / f".unipic-probe-{os.getpid()}"
    try:
        probe.touch()
        probe.unlink()
        return True
    except OSError:
        return False


def _converted_path(src: Path) -> Path:
    beside = src.with_suffix(".safetensors")
    if _writable(src.parent):
        return beside
    digest = hashlib.sha1(str(src.resolve()).encode()).hexdigest()[:16]
    return _cache_root() / digest / beside.name


def _stamp(src: Path) -> str:
    st = src.stat()
    return f"{st.st_size}:{st.st_mtime_ns}"


def _flat_tensors(path: Path, key: str | None) -> dict[str, torch.Tensor]:
    obj = _torch_load(path)
    if key is not None:
        if not isinstance(obj, dict) or key not in obj:
            raise CheckpointError(f"{path}: expected a dict with a {key!r} entry")
        extra = sorted(k for k in obj if k != key)
        if extra:
            log.warning("%s: ignoring top-level entries %s", path, extra)
        obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path}: expected a flat state dict of tensors")
    return obj


def convert(src: Path, key: str | None = None) -> Path:
    """Convert a torch pickle to safetensors once (atomic write); returns the safetensors path."""
    dst = _converted_path(src)
    if not src.exists() and dst.exists():  # only the converted file was kept
        return dst
    stamp = _stamp(src) if src.exists() else None
    if dst.exists() and stamp is not None:
        try:
            with safe_open(str(dst), framework="pt") as f:
                if (f.metadata() or {}).get("source_stamp") == stamp:
                    return dst
        except (OSError, SafetensorError):  # a broken earlier conversion: redo it
            log.warning("re-converting %s: existing %s unreadable", src, dst)
    tensors = _flat_tensors(src, key)
    seen: dict[tuple, str] = {}
    out: dict[str, torch.Tensor] = {}
    for name, t in tensors.items():
        ident = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape))
        if ident in seen:  # a tied alias (llm.lm_head.weight): safetensors rejects shared storage
            continue
        seen[ident] = name
        out[name] = t.contiguous()
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.{os.getpid()}.tmp")
    save_file(out, str(tmp), metadata={"source_stamp": stamp or ""})
    os.replace(tmp, dst)
    log.info("converted %s -> %s (%d tensors)", src, dst, len(out))
    return dst


@dataclass
class _TensorSource:
    path: Path

    def shapes(self) -> dict[str, tuple[int, ...]]:
        with safe_open(str(self.path), framework="pt") as f:
            return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}  # noqa: SIM118 (safe_open is no dict)

    def items(self, names: list[str]) -> Iterator[tuple[str, torch.Tensor]]:
        with safe_open(str(self.path), framework="pt") as f:
            for k in names:
                yield k, f.get_tensor(k)


def _ignorable_unexpected(name: str, model_keys: set[str]) -> bool:
    if name.endswith("rotary_emb.inv_freq"):
        return True
    if name.startswith(("siglip2.", "siglip2_proj.")) and not any(k.startswith("siglip2") for k in model_keys):
        return True
    return name == "mar.class_emb.weight" and name not in model_keys


def check_keys(model_shapes: dict[str, tuple], got: dict[str, tuple], vae_got: dict[str, tuple]) -> list[str]:
    """Strict comparison (spec §8); returns notes, raises CheckpointError listing every problem."""
    expected = {k: v for k, v in model_shapes.items() if not k.startswith("vae.")}
    expected_vae = {k[4:]: v for k, v in model_shapes.items() if k.startswith("vae.")}
    allowed_missing = {"llm.lm_head.weight"}
    missing = sorted(k for k in expected if k not in got and k not in allowed_missing)
    unexpected = sorted(k for k in got if k not in expected and not _ignorable_unexpected(k, set(expected)))
    vae_missing = sorted(k for k in expected_vae if k not in vae_got)
    vae_unexpected = sorted(k for k in vae_got if k not in expected_vae)
    shapes = [f"{k}: checkpoint {tuple(got[k])} vs model {tuple(v)}" for k, v in expected.items()
              if k in got and tuple(got[k]) != tuple(v)]
    shapes += [f"vae {k}: checkpoint {tuple(vae_got[k])} vs model {tuple(v)}" for k, v in expected_vae.items()
               if k in vae_got and tuple(vae_got[k]) != tuple(v)]
    problems = []
    for label, keys in (("missing keys", missing), ("unexpected keys", unexpected),
                        ("missing VAE keys (kl16.ckpt)", vae_missing),
                        ("unexpected VAE keys (kl16.ckpt)", vae_unexpected), ("shape mismatches", shapes)):
        if keys:
            shown = ", ".join(keys[:20]) + (f", ... ({len(keys)} in all)" if len(keys) > 20 else "")
            problems.append(f"{label}: {shown}")
    if problems:
        raise CheckpointError("checkpoint does not match the model: " + "; ".join(problems))
    notes = []
    if not any(k.startswith("llm.") for k in got):
        notes.append("checkpoint has no llm.* weights")
    return notes


def build_empty(cfg: UniPicConfig, device: torch.device, dtype: torch.dtype) -> UniPic:
    """The module tree with uninitialised parameters on `device` (no host-side init of 1.5 B weights)."""
    with torch.device("meta"):
        model = UniPic(cfg)
    model = model.to(dtype).to_empty(device=device)
    model.tie_lm_head()
    model.reset_rotary(device)
    return model.eval().requires_grad_(False)


def build_random(cfg: UniPicConfig, seed: int, device: torch.device, dtype: torch.dtype) -> UniPic:
    """Random weights from a fixed seed (built on CPU in float32 so every process gets the same values)."""
    model = build_empty(cfg, torch.device("cpu"), torch.float32)
    init_random_(model, seed)
    return model.to(device=device, dtype=dtype)


def load_weights(directory: Path, cfg: UniPicConfig, device: torch.device, dtype: torch.dtype) -> UniPic:
    main = _TensorSource(convert(directory / MODEL_FILE))
    vae = _TensorSource(convert(directory / VAE_FILE, key="model"))
    got, vae_got = main.shapes(), vae.shapes()
    model = build_empty(cfg, device, dtype)
    model_shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    for note in check_keys(model_shapes, got, vae_got):
        log.warning("%s: %s", directory, note)
    params = model.state_dict()
    names = [k for k in got if k in params]
    with torch.no_grad():
        for name, tensor in main.items(names):
            params[name].copy_(tensor)
        for name, tensor in vae.items(list(vae_got)):
            params["vae." + name].copy_(tensor)
    _tie_or_keep(model, got, main)
    return model


def _tie_or_keep(model: UniPic, got: dict, main: _TensorSource) -> None:
    if "llm.lm_head.weight" not in got:
        model.tie_lm_head()
        return
    (_, head), = list(main.items(["llm.lm_head.weight"]))
    (_, emb), = list(main.items(["llm.model.embed_tokens.weight"]))
    if torch.equal(head, emb):
        model.tie_lm_head()
    else:
        log.warning("llm.lm_head.weight differs from the embedding table: keeping an untied lm_head")
        weight = model.llm.model.embed_tokens.weight
        model.llm.lm_head.weight = torch.nn.Parameter(head.to(weight.device, weight.dtype), requires_grad=False)


def load_model(source: str, device: str | torch.device = "cpu", dtype: str | torch.dtype = "float32",
               cache_dir: str | Path | None = None) -> LoadedModel:
    dev, dt = torch.device(device), parse_dtype(dtype)
    if source == "tiny":
        model = build_random(TINY, TINY_SEED, dev, dt)
        return LoadedModel(model, TINY, None, "tiny", f"random-seed{TINY_SEED}", TINY.repetition_penalty)
    if source.startswith("random:"):  # benchmarks: random weights drawn on the target device (not portable)
        cfg = get_config(source.split(":", 1)[1])
        model = build_empty(cfg, dev, dt)
        init_random_(model, TINY_SEED)
        return LoadedModel(model, cfg, None, source, "random", cfg.repetition_penalty)
    directory, model_id, revision = resolve(source, cache_dir)
    conf = _read_config_file(directory)
    try:
        cfg = get_config(conf.get("config", "unipic-1.5b"))
    except ValueError as exc:
        raise CheckpointError(f"{directory / CONFIG_FILE}: {exc}") from exc
    model = load_weights(directory, cfg, dev, dt)
    return LoadedModel(model, cfg, directory, model_id, revision, _repetition_penalty(directory, cfg))


def _repetition_penalty(directory: Path, cfg: UniPicConfig) -> float:
    f = directory / "generation_config.json"
    if f.exists():
        try:
            return float(json.loads(f.read_text()).get("repetition_penalty", 1.0))
        except (OSError, ValueError) as exc:
            raise CheckpointError(f"{f}: unreadable ({exc})") from exc
    return cfg.repetition_penalty



def checkpoint_hash(loaded: LoadedModel) -> str:
    """What a worker advertises as its checkpoint: `weights_digest` of the files its weights loaded from;
    weights built in memory (`tiny`, `random:...`) have none, so theirs is a digest of their id and revision."""
    if loaded.directory is None:
        return hashlib.sha256(f"{loaded.model_id}\0{loaded.revision}".encode()).hexdigest()
    return weights_digest(loaded.directory)


def weights_digest(directory: Path, chunk: int = 1 << 24) -> str:
    """A sha256 of a checkpoint directory's weights: for each safetensors file they load from (the converted
    `pytorch_model.bin` and `kl16.ckpt`, see `convert`), its tensor table (names, dtypes, shapes, offsets; not the
    file's free-form metadata, which holds the conversion's source stamp) and its data bytes. Two copies of one
    checkpoint agree wherever they were converted; a fine-tune of the same shapes differs."""
    h = hashlib.sha256()
    for path in (convert(directory / MODEL_FILE), convert(directory / VAE_FILE, key="model")):
        with path.open("rb") as f:
            size = int.from_bytes(f.read(8), "little")
            table = json.loads(f.read(size))
            table.pop("__metadata__", None)
            h.update(json.dumps(table, sort_keys=True, separators=(",", ":")).encode())
            while block := f.read(chunk):
                h.update(block)
    return h.hexdigest()
