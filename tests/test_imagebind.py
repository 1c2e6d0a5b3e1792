"""ImageBind audio branch: official key layout, memory-mapped loading, audio-only export, errors."""

import math

import numpy as np
import pytest
import torch

from dsaml_utils import cli
from dsaml_utils.encoders.imagebind import (
    AUDIO_PREFIXES,
    CHECKPOINT_ENV,
    CHECKPOINT_URL,
    DEFAULT_CHECKPOINTS,
    DropPath,
    ImageBindAudio,
    ImageBindAudioConfig,
    export_audio_checkpoint,
    find_checkpoint,
    from_official_key,
    load_imagebind_audio,
    official_state_dict,
    to_official_key,
)
from dsaml_utils.encoders.registry import ENCODER_DIMS
from dsaml_utils.errors import UserError
from dsaml_utils.features.kaldi import imagebind_clips

SMALL = ImageBindAudioConfig(embed_dim=64, depth=2, num_heads=4)  # same key names as imagebind_huge


def write_official_checkpoint(path, cfg=SMALL, seed=0):
    """A checkpoint in imagebind_huge.pth's layout with random audio weights and some other-modality keys."""
    torch.manual_seed(seed)
    model = ImageBindAudio(cfg)
    with torch.no_grad():
        for p in model.parameters():  # random everywhere, LayerNorms included, so every tensor matters
            p.add_(torch.randn_like(p) * 0.05)
    state = official_state_dict(model)
    state["modality_trunks.vision.blocks.0.attn.in_proj_weight"] = torch.randn(12, 4)
    state["modality_preprocessors.text.token_embedding.weight"] = torch.randn(10, 4)
    state["modality_postprocessors.text.1.log_logit_scale"] = torch.tensor(2.0)
    torch.save(state, path)
    return model.eval()


def clips(seconds=3.0, seed=0):
    wave = np.random.default_rng(seed).standard_normal(int(16000 * seconds)).astype(np.float32) * 0.1
    return imagebind_clips(wave)[None]  # [1, 3, 1, 128, 204]


def reference_forward(state, x, heads):
    """ImageBind audio written out in plain tensor ops from the official state dict (one clip batch)."""
    g = lambda k: state["modality_" + k]  # noqa: E731
    ln = torch.nn.functional.layer_norm
    t = torch.nn.functional.conv2d(x, g("preprocessors.audio.rgbt_stem.proj.weight"), stride=10)
    t = t.flatten(2).transpose(1, 2)
    d = t.shape[-1]
    t = ln(t, (d,), g("preprocessors.audio.rgbt_stem.norm_layer.weight"), g("preprocessors.audio.rgbt_stem.norm_layer.bias"))
    t = torch.cat([g("preprocessors.audio.cls_token").expand(len(t), -1, -1), t], 1)
    t = t + g("preprocessors.audio.pos_embedding_helper.pos_embed")
    n_blocks = len({k.split(".")[3] for k in state if k.startswith("modality_trunks.audio.blocks.")})
    for i in range(n_blocks):
        b = lambda k: state[f"modality_trunks.audio.blocks.{i}.{k}"]  # noqa: E731
        h = ln(t, (d,), b("norm_1.weight"), b("norm_1.bias"), eps=1e-6)
        q, k, v = (h @ b("attn.in_proj_weight").T + b("attn.in_proj_bias")).chunk(3, dim=-1)
        k = torch.cat([k, b("attn.bias_k").reshape(1, 1, d).expand(len(k), 1, d)], 1)  # one extra key/value
        v = torch.cat([v, b("attn.bias_v").reshape(1, 1, d).expand(len(v), 1, d)], 1)
        split = lambda z: z.reshape(len(z), z.shape[1], heads, d // heads).transpose(1, 2)  # noqa: E731
        a = torch.softmax(split(q) @ split(k).transpose(-1, -2) / math.sqrt(d // heads), dim=-1) @ split(v)
        a = a.transpose(1, 2).reshape(len(t), -1, d) @ b("attn.out_proj.weight").T + b("attn.out_proj.bias")
        t = t + a
        h = ln(t, (d,), b("norm_2.weight"), b("norm_2.bias"), eps=1e-6)
        h = torch.nn.functional.gelu(h @ b("mlp.fc1.weight").T + b("mlp.fc1.bias"))
        t = t + h @ b("mlp.fc2.weight").T + b("mlp.fc2.bias")
    z = ln(t, (d,), g("heads.audio.0.weight"), g("heads.audio.0.bias"), eps=1e-6)[:, 0] @ g("heads.audio.2.weight").T
    return torch.nn.functional.normalize(z, dim=-1) * g("postprocessors.audio.1.log_logit_scale").exp()


def test_full_size_model_has_imagebind_huge_shapes():
    model = ImageBindAudio()
    n = sum(p.numel() for p in model.parameters())
    assert 85.5e6 < n < 87e6  # "86 M parameters"
    assert model.cfg.grid == (12, 19)

    assert model.cfg.out_dim == ENCODER_DIMS["imagebind"]
    state = official_state_dict(model)
    assert state["modality_preprocessors.audio.pos_embedding_helper.pos_embed"].shape == (1, 229, 768)
    assert state["modality_preprocessors.audio.rgbt_stem.proj.weight"].shape == (768, 1, 16, 16)
    assert state["modality_trunks.audio.blocks.11.attn.bias_k"].shape == (1, 1, 768)
    assert state["modality_trunks.audio.blocks.11.attn.in_proj_weight"].shape == (3 * 768, 768)
    assert state["modality_trunks.audio.blocks.0.mlp.fc1.weight"].shape == (3072, 768)
    assert state["modality_heads.audio.2.weight"].shape == (1024, 768)
    assert float(state["modality_postprocessors.audio.1.log_logit_scale"].exp()) == pytest.approx(20.0)
    assert all(k.startswith(AUDIO_PREFIXES) for k in state)
    assert ImageBindAudioConfig.from_state_dict(state) == ImageBindAudioConfig()


def test_key_names_round_trip():
    for key in ImageBindAudio(SMALL).state_dict():
        assert from_official_key(to_official_key(key)) == key
    assert to_official_key("blocks.1.norm_2.bias") == "modality_trunks.audio.blocks.1.norm_2.bias"
    with pytest.raises(KeyError):
        from_official_key("modality_trunks.vision.blocks.0.norm_1.weight")


def test_forward_matches_plain_tensor_reference(tmp_path):
    path = tmp_path / "imagebind_huge.pth"
    write_official_checkpoint(path)
    model = load_imagebind_audio(path, SMALL)
    state = torch.load(path, weights_only=True)
    x = clips()[0]
    with torch.no_grad():
        ours = model.embed_clips(x)
    ref = reference_forward(state, x, heads=SMALL.num_heads)
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-4)


def test_load_embed_export_reload(tmp_path, monkeypatch):
    src = tmp_path / "imagebind_huge.pth"
    original = write_official_checkpoint(src)
    calls = []
    real_load = torch.load
    monkeypatch.setattr(torch, "load", lambda *a, **k: calls.append(k) or real_load(*a, **k))
    model = load_imagebind_audio(src, SMALL)
    assert calls and all(c.get("mmap") and c.get("weights_only") for c in calls)
    for key, value in original.state_dict().items():
        torch.testing.assert_close(model.state_dict()[key], value, rtol=0, atol=0)
    x = clips()
    with torch.no_grad():
        per_clip = model.embed_clips(x[0])
        z = model(x)
    assert z.shape == (1, 1024)
    torch.testing.assert_close(per_clip.norm(dim=-1), torch.full((3,), 20.0))
    torch.testing.assert_close(z[0], per_clip.mean(0))

    out = tmp_path / "ckpt" / "imagebind_audio.pth"
    assert export_audio_checkpoint(src, out) == len(official_state_dict(model))
    exported = torch.load(out, weights_only=True)
    assert set(exported) == set(official_state_dict(model))  # same names, audio only
    reloaded = load_imagebind_audio(out, SMALL)
    with torch.no_grad():
        assert torch.equal(reloaded(x), z)


def test_config_inferred_from_checkpoint(tmp_path):
    path = tmp_path / "a.pth"
    write_official_checkpoint(path, ImageBindAudioConfig(embed_dim=128, depth=3, num_heads=8, out_dim=32))
    model = load_imagebind_audio(path)
    assert (model.cfg.embed_dim, model.cfg.depth, model.cfg.out_dim, model.cfg.num_heads) == (128, 3, 32, 2)


def test_training_mode_drop_path_only_in_training():
    drop = DropPath(0.5).train()
    x = torch.ones(400, 3)
    y = drop(x)
    assert set(torch.unique(y).tolist()) == {0.0, 2.0}  # dropped, or kept and rescaled by 1 / keep
    assert 100 < int((y[:, 0] == 0).sum()) < 300
    assert torch.equal(drop.eval()(x), x)
    rates = [b.drop_path.p for b in ImageBindAudio(ImageBindAudioConfig(embed_dim=64, depth=3, num_heads=4)).blocks]
    assert rates == pytest.approx([0.0, 0.05, 0.1])


def test_missing_checkpoint_says_where_to_get_one(tmp_path):
    with pytest.raises(UserError) as err:
        load_imagebind_audio(tmp_path / "nope.pth")
    msg = str(err.value)
    assert "nope.pth" in msg and CHECKPOINT_URL in msg and CHECKPOINT_ENV in msg and "data/checkpoints" in msg


def test_bad_checkpoints_are_named(tmp_path):
    other = tmp_path / "vision_only.pth"
    torch.save({"modality_trunks.vision.blocks.0.norm_1.weight": torch.ones(3)}, other)
    with pytest.raises(UserError, match="vision_only.pth.*no ImageBind audio weights"):
        load_imagebind_audio(other)

    partial = tmp_path / "partial.pth"
    write_official_checkpoint(partial)
    state = torch.load(partial, weights_only=True)
    del state["modality_trunks.audio.blocks.1.attn.bias_v"]
    state["modality_trunks.audio.blocks.0.extra"] = torch.zeros(1)
    torch.save(state, partial)
    with pytest.raises(UserError) as err:
        load_imagebind_audio(partial, SMALL)
    assert "partial.pth" in str(err.value) and "blocks.1.attn.bias_v" in str(err.value) and "extra" in str(err.value)

    ok = tmp_path / "ok.pth"
    write_official_checkpoint(ok)
    with pytest.raises(UserError, match="ok.pth.*wrong shape.*modality_heads.audio.2.weight"):
        load_imagebind_audio(ok, ImageBindAudioConfig(embed_dim=64, depth=2, num_heads=4, out_dim=16))

    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="garbage.pth"):
        load_imagebind_audio(garbage)


def test_wrapped_state_dict_is_accepted(tmp_path):
    path = tmp_path / "wrapped.pth"
    model = write_official_checkpoint(path)
    torch.save({"model": torch.load(path, weights_only=True)}, path)
    loaded = load_imagebind_audio(path, SMALL)
    x = clips()
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))


def test_find_checkpoint_order(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(CHECKPOINT_ENV, raising=False)
    assert find_checkpoint() is None
    default = tmp_path / "data" / "checkpoints" / "imagebind_huge.pth"
    default.parent.mkdir(parents=True)
    default.write_bytes(b"x")
    assert find_checkpoint() == DEFAULT_CHECKPOINTS[1]
    monkeypatch.setenv(CHECKPOINT_ENV, "/env/ib.pth")
    assert str(find_checkpoint()) == "/env/ib.pth"
    assert str(find_checkpoint("given.pth")) == "given.pth"


def test_cli_export(tmp_path, capsys):
    src, out = tmp_path / "imagebind_huge.pth", tmp_path / "audio.pth"
    write_official_checkpoint(src)
    assert cli.main(["export-imagebind-audio", "--checkpoint", str(src), "--out", str(out)]) == 0
    assert "audio tensors" in capsys.readouterr().out
    assert not any("vision" in k for k in torch.load(out, weights_only=True))
    missing = ["export-imagebind-audio", "--checkpoint", str(tmp_path / "missing.pth"), "--out", str(out)]
    assert cli.main(missing) == 2  # refused before reading anything: the output exists
    assert "exists already" in capsys.readouterr().err
    assert cli.main([*missing, "--overwrite"]) == 2
    assert "missing.pth" in capsys.readouterr().err
