"""Loading through the real path: write -> load round trip, conversion cache, and clear errors on bad files."""

from __future__ import annotations

import os
import shutil

import pytest
import torch

from model.checkpoint import load_model
from model.errors import CheckpointError


def test_round_trip_equals_tiny_weights(tiny_dir, engine):
    loaded = load_model(str(tiny_dir))
    assert loaded.config.name == "tiny" and loaded.model_id == "unipic-tiny"
    ref = engine.model.state_dict()
    got = loaded.model.state_dict()
    assert set(got) == set(ref)
    for k in ref:
        torch.testing.assert_close(got[k], ref[k], rtol=0, atol=0)
    assert loaded.model.llm.lm_head.weight is loaded.model.llm.model.embed_tokens.weight
    assert (tiny_dir / "pytorch_model.safetensors").exists() and (tiny_dir / "kl16.safetensors").exists()


def test_dtype_and_reuse_of_conversion(tiny_dir):
    load_model(str(tiny_dir))
    stamp = (tiny_dir / "pytorch_model.safetensors").stat().st_mtime_ns
    loaded = load_model(str(tiny_dir), dtype="bfloat16")
    assert next(loaded.model.parameters()).dtype == torch.bfloat16
    assert (tiny_dir / "pytorch_model.safetensors").stat().st_mtime_ns == stamp  # converted once


@pytest.fixture(scope="module")
def states():
    from model.testing import tiny_state_dicts

    return tiny_state_dicts()


def tiny_state_dicts_from(states):
    main, vae = states
    return dict(main), dict(vae)


def copy_ckpt(src, dst):
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("*.safetensors"))
    return dst


def test_read_only_dir_converts_into_cache(tiny_dir, tmp_path, monkeypatch):
    ro = copy_ckpt(tiny_dir, tmp_path / "ro")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    # inject the fault "this directory is read-only" (root ignores permission bits, so chmod cannot do it)
    monkeypatch.setattr("model.checkpoint._writable", lambda directory: directory != ro)
    load_model(str(ro))
    assert not (ro / "pytorch_model.safetensors").exists()
    assert list((tmp_path / "cache").rglob("pytorch_model.safetensors"))


def write_main(dirpath, state):
    torch.save(state, dirpath / "pytorch_model.bin")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda sd: sd.pop("mar.z_proj.weight"), "missing keys: mar.z_proj.weight"),
        (lambda sd: sd.__setitem__("mar.bogus", torch.zeros(1)), "unexpected keys: mar.bogus"),
        (lambda sd: sd.__setitem__("proj_in.0.weight", torch.zeros(64, 47)), "shape mismatches: proj_in.0.weight"),
    ],
)
def test_key_and_shape_mismatches_are_named(tiny_dir, tmp_path, change, message, states):
    bad = copy_ckpt(tiny_dir, tmp_path / "bad")
    main, _ = tiny_state_dicts_from(states)
    change(main)
    write_main(bad, main)
    with pytest.raises(CheckpointError, match=message.replace("(", r"\(")):
        load_model(str(bad))


def test_ignorable_keys_are_tolerated(tiny_dir, tmp_path, states):
    ok = copy_ckpt(tiny_dir, tmp_path / "ok")
    main, _ = tiny_state_dicts_from(states)
    main["siglip2.vision_model.post_layernorm.weight"] = torch.ones(4)
    main["siglip2_proj.0.weight"] = torch.ones(4, 4)
    main["llm.model.rotary_emb.inv_freq"] = torch.ones(8)
    main["llm.lm_head.weight"] = main["llm.model.embed_tokens.weight"].clone()
    write_main(ok, main)
    loaded = load_model(str(ok))
    assert loaded.model.llm.lm_head.weight is loaded.model.llm.model.embed_tokens.weight


def test_untied_lm_head_is_kept(tiny_dir, tmp_path, states):
    d = copy_ckpt(tiny_dir, tmp_path / "untied")
    main, _ = tiny_state_dicts_from(states)
    main["llm.lm_head.weight"] = torch.randn_like(main["llm.model.embed_tokens.weight"])
    write_main(d, main)
    loaded = load_model(str(d))
    torch.testing.assert_close(loaded.model.llm.lm_head.weight, main["llm.lm_head.weight"])
    assert loaded.model.llm.lm_head.weight is not loaded.model.llm.model.embed_tokens.weight


def test_missing_vae_key_is_named(tiny_dir, tmp_path, states):
    bad = copy_ckpt(tiny_dir, tmp_path / "vae")
    _, vae = tiny_state_dicts_from(states)
    vae.pop("decoder.conv_out.bias")
    torch.save({"model": vae, "discriminator": {}}, bad / "kl16.ckpt")
    with pytest.raises(CheckpointError, match=r"missing VAE keys \(kl16.ckpt\): decoder.conv_out.bias"):
        load_model(str(bad))


def test_truncated_file(tiny_dir, tmp_path):
    bad = copy_ckpt(tiny_dir, tmp_path / "trunc")
    data = (bad / "pytorch_model.bin").read_bytes()
    (bad / "pytorch_model.bin").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_model(str(bad))


class Exploit:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_pickle_with_code_is_refused(tiny_dir, tmp_path, states):
    bad = copy_ckpt(tiny_dir, tmp_path / "evil")
    main, _ = tiny_state_dicts_from(states)
    main["payload"] = Exploit()
    torch.save(main, bad / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="refused to unpickle"):
        load_model(str(bad))


def test_missing_file_and_bad_source(tiny_dir, tmp_path):
    bad = copy_ckpt(tiny_dir, tmp_path / "nofile")
    (bad / "kl16.ckpt").unlink()
    with pytest.raises(CheckpointError, match="missing checkpoint file .*kl16.ckpt"):
        load_model(str(bad))
    with pytest.raises(CheckpointError, match="neither a directory nor"):
        load_model(str(tmp_path / "does-not-exist"))


def test_hub_source_offline_is_a_checkpoint_error(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(CheckpointError, match="cannot fetch 'Skywork/not-here'"):
        load_model("Skywork/not-here")


def test_hub_source_comes_from_the_cache_dir_it_is_given(tiny_dir, monkeypatch, tmp_path):
    # Given: a repo in a Hugging Face cache at cache_dir (the hub's layout), none in HF_HOME, and no network
    cache = tmp_path / "models"
    copy_ckpt(tiny_dir, cache / "models--acme--tiny" / "snapshots" / "0123abc")
    (cache / "models--acme--tiny" / "refs").mkdir()
    (cache / "models--acme--tiny" / "refs" / "main").write_text("0123abc")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    # Then: it loads from cache_dir (UNIPIC_MODEL_CACHE_DIR), and is not found without it
    loaded = load_model("acme/tiny", cache_dir=cache)
    assert (loaded.model_id, loaded.revision, loaded.config.name) == ("acme/tiny", "0123abc", "tiny")
    with pytest.raises(CheckpointError, match="cannot fetch 'acme/tiny'"):
        load_model("acme/tiny")


def test_unknown_config_name_is_a_checkpoint_error(tiny_dir, tmp_path):
    bad = copy_ckpt(tiny_dir, tmp_path / "cfg")
    (bad / "unipic_config.json").write_text('{"config": "huge"}')
    with pytest.raises(CheckpointError, match="unknown model config 'huge'"):
        load_model(str(bad))


def test_converted_files_alone_are_enough(tiny_dir, tmp_path):
    d = tmp_path / "converted"
    shutil.copytree(tiny_dir, d)
    load_model(str(d))  # makes sure the safetensors exist
    (d / "pytorch_model.bin").unlink()
    (d / "kl16.ckpt").unlink()
    assert load_model(str(d)).config.name == "tiny"


def test_random_source_builds_any_config():
    loaded = load_model("random:tiny")
    assert loaded.config.name == "tiny" and loaded.revision == "random"
    assert torch.isfinite(loaded.model.mar.z_proj.weight).all()
