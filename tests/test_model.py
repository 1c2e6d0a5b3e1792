"""Tests for dsaml_utils.models.dsaml: masks, attention loss, ablation switches, padding, gradients, MAML, CLI."""

from __future__ import annotations

import argparse
import copy
import dataclasses

import numpy as np
import pytest
import torch
from torch.func import functional_call

from dsaml_utils import cli
from dsaml_utils.cli import models as cli_models
from dsaml_utils.data.types import MEAN
from dsaml_utils.errors import UserError
from dsaml_utils.features.songs import SongData
from dsaml_utils.meta.batched import meta_loss_batched, vmap_ready
from dsaml_utils.meta.maml import MetaConfig, meta_loss_loop
from dsaml_utils.models.dsaml import (
    ATTN_TARGETS,
    DSAML,
    Adapter,
    DSAMLConfig,
    attention_loss,
    band_mask,
)
from dsaml_utils.models.inference import predict_song
from dsaml_utils.models.registry import MODELS, build_model, example_batch, summarize

N_MELS = 16  # small mel input keeps the adapter cheap in tests


def quick(**kw) -> DSAML:
    torch.manual_seed(0)
    return DSAML(DSAMLConfig.quick(n_mels=N_MELS, **kw))


def batch_for(model: DSAML, T: int = 12, B: int = 2, seed: int = 1) -> dict:
    gen = torch.Generator().manual_seed(seed)
    cfg = model.cfg
    return {"mel": torch.randn(B, T, cfg.n_frames, cfg.n_mels, generator=gen),
            "frames": torch.randn(B, T, cfg.frames_dim, generator=gen),
            "global": torch.randn(B, cfg.global_dim, generator=gen),
            "mask": torch.ones(B, T, dtype=torch.bool)}


def predict(model: DSAML, batch: dict) -> dict:
    model.eval()
    with torch.no_grad():
        return model(batch)


# ------------------------------------------------------------------ config


def test_config_defaults_are_the_papers_and_quick_is_small():
    cfg = DSAMLConfig.paper()
    assert (cfg.d_model, cfg.n_layers, cfg.n_local, cfg.n_global) == (1024, 3, 5, 30)
    assert (cfg.n_heads, cfg.d_ff, cfg.activation, cfg.dropout, cfg.attn_loss_weight) == (16, 2048, "gelu", 0.1, 1.0)
    assert cfg.targets() == (0.5, 0.05)
    assert cfg.lstm_size() == 256 and cfg.head_size() == 256
    q = DSAMLConfig.quick()
    assert (q.d_model, q.n_heads, q.d_ff, q.n_layers) == (64, 2, 128, 2)
    assert q.lstm_size() == 16


def test_attention_targets_resolve_and_survive_replace():
    assert DSAMLConfig(attn_targets="authors").targets() == ATTN_TARGETS["authors"] == (0.9, 0.1)
    assert DSAMLConfig(alpha=0.7).targets() == (0.7, 0.05)
    assert dataclasses.replace(DSAMLConfig(), attn_targets="authors").targets() == (0.9, 0.1)


@pytest.mark.parametrize("kw", [{"frontend": "wave"}, {"norm": "layer"}, {"rel_pos": "rotary"}, {"n_heads": 5},
                                {"attn_targets": "mine"}, {"use_adapter": False, "use_global_encoder": False}])
def test_config_rejects_bad_values(kw):
    with pytest.raises(UserError):
        DSAMLConfig(**kw)


def test_build_model_registry_and_errors():
    assert set(MODELS) >= {"dsaml", "crnn", "dnn", "mcrnn", "damff", "bilstm", "cnn_bilstm"}
    m = build_model("dsaml", "quick", n_layers=1)
    assert isinstance(m, DSAML) and len(m.transformer.layers) == 1
    with pytest.raises(UserError, match="unknown model"):
        build_model("resnet")
    with pytest.raises(UserError, match="no field"):
        build_model("dsaml", "quick", d_modle=8)
    with pytest.raises(UserError, match="preset"):
        build_model("dsaml", "huge")


# ------------------------------------------------------------------ pieces


@pytest.mark.parametrize("T,n", [(1, 0), (7, 0), (12, 2), (12, 5), (40, 30)])
def test_band_mask_matches_formula(T, n):
    m = band_mask(T, n)
    assert m.dtype == torch.bool and m.shape == (T, T)
    for i in range(T):
        for j in range(T):
            assert bool(m[i, j]) == (abs(i - j) <= n)


def test_adapter_flat_size_matches_conv_output():
    assert Adapter.flat_size(51, 128) == 476
    for F, M in [(51, 128), (20, 16), (9, 33)]:
        a = Adapter(DSAMLConfig.quick(n_frames=F, n_mels=M)).eval()
        with torch.no_grad():
            flat = a.reduce(a.block2(a.block1(torch.zeros(1, 1, F, M)))).flatten(1)
        assert flat.shape[1] == Adapter.flat_size(F, M) == a.proj.in_features


def test_attention_loss_on_hand_computed_maps():
    # diag(A_l): song 0 [.5, .2, .9], song 1 [.3, .6, pad]; diag(A_g): song 0 [.1, .1, .1], song 1 [.3, .1, pad]
    al = torch.zeros(2, 3, 3)
    ag = torch.zeros(2, 3, 3)
    al[0].diagonal().copy_(torch.tensor([0.5, 0.2, 0.9]))
    al[1].diagonal().copy_(torch.tensor([0.3, 0.6, 0.99]))
    ag[0].diagonal().copy_(torch.tensor([0.1, 0.1, 0.1]))
    ag[1].diagonal().copy_(torch.tensor([0.3, 0.1, 0.99]))
    mask = torch.tensor([[True, True, True], [True, True, False]])
    # per-step batch means: A_l [.4, .4, .9], A_g [.2, .1, .1]
    want = ((0.4 - 0.5) ** 2 + (0.2 - 0.05) ** 2 + (0.4 - 0.5) ** 2 + (0.1 - 0.05) ** 2
            + (0.9 - 0.5) ** 2 + (0.1 - 0.05) ** 2) / 3
    got = attention_loss(al, ag, mask, 0.5, 0.05)
    assert got.item() == pytest.approx(want, rel=1e-6)
    # without a mask every step of every song counts
    full = attention_loss(al, ag, None, 0.9, 0.1)
    dl, dg = al.diagonal(dim1=1, dim2=2).mean(0), ag.diagonal(dim1=1, dim2=2).mean(0)
    assert full.item() == pytest.approx((((dl - 0.9) ** 2 + (dg - 0.1) ** 2).mean()).item(), rel=1e-6)


# ------------------------------------------------------------------ the dual-scale transformer


def test_local_and_global_passes_share_one_transformer():
    model = quick()
    assert sum(type(m).__name__ == "Transformer" for m in model.modules()) == 1
    calls = []
    model.transformer.register_forward_hook(lambda m, i, o: calls.append(i[1].clone()))
    b = batch_for(model, T=12)
    out = predict(model, b)
    assert len(calls) == 2  # the same module ran twice, under the two band masks
    assert torch.equal(calls[0][0], band_mask(12, 5)) and torch.equal(calls[1][0], band_mask(12, 30))
    # attention outside the band is exactly zero
    assert (out["attn_local"][:, ~band_mask(12, 5)] == 0).all()
    assert out["attn_local"].shape == out["attn_global"].shape == (2, 12, 12)
    # one weight changes both passes
    with torch.no_grad():
        model.transformer.layers[-1].attn.qkv.weight.mul_(1.5)
    out2 = predict(model, b)
    assert not torch.allclose(out["attn_local"], out2["attn_local"])
    assert not torch.allclose(out["attn_global"], out2["attn_global"])


def test_attention_maps_are_row_stochastic_and_aux_is_the_attention_loss():
    model = quick(attn_targets="authors", attn_loss_weight=2.0)
    b = batch_for(model, T=10)
    b["mask"][1, 7:] = False
    out = predict(model, b)
    for key in ("attn_local", "attn_global"):
        assert torch.allclose(out[key].sum(-1), torch.ones(2, 10), atol=1e-5)
        assert (out[key][1, :7, 7:] == 0).all()  # real steps never attend to padding
    want = 2.0 * attention_loss(out["attn_local"], out["attn_global"], b["mask"], 0.9, 0.1)
    assert out["aux_loss"].item() == pytest.approx(want.item(), rel=1e-6) and want.item() > 0


@pytest.mark.parametrize("rel_pos", ["key", "bias", "none"])
def test_relative_position_variants_run(rel_pos):
    model = quick(rel_pos=rel_pos)
    out = predict(model, batch_for(model, T=8))
    assert out["pred"].shape == (2, 8, 2) and torch.isfinite(out["pred"]).all()
    assert hasattr(model.transformer.layers[0].attn, "rel") == (rel_pos != "none")


def test_relative_positions_clip_beyond_max_distance():
    # with max_rel_distance 2, sequences longer than 3 steps reuse the +-2 rows: output still well defined
    model = quick(max_rel_distance=2)
    out = predict(model, batch_for(model, T=9))
    assert model.transformer.layers[0].attn.rel.shape == (5, 32)
    assert torch.isfinite(out["pred"]).all()


# ------------------------------------------------------------------ ablations


def test_no_local_attention_drops_the_local_pass():
    b = batch_for(quick(), T=12)
    a = predict(quick(use_local_attention=False, n_local=1), b)
    c = predict(quick(use_local_attention=False, n_local=4), b)
    assert "attn_local" not in a and "attn_global" in a
    assert torch.equal(a["pred"], c["pred"]) and a["aux_loss"].item() == 0
    # with the local pass on, n_local matters (so the check above can fail)
    assert not torch.allclose(predict(quick(n_local=1), b)["pred"], predict(quick(n_local=4), b)["pred"])


def test_no_global_attention_drops_the_global_pass():
    b = batch_for(quick(), T=12)
    a = predict(quick(use_global_attention=False, n_global=2), b)
    c = predict(quick(use_global_attention=False, n_global=6), b)
    assert "attn_global" not in a and "attn_local" in a
    assert torch.equal(a["pred"], c["pred"]) and a["aux_loss"].item() == 0
    assert not torch.allclose(predict(quick(n_global=2), b)["pred"], predict(quick(n_global=6), b)["pred"])


def test_no_attention_at_all_runs_one_full_attention_pass():
    model = quick(use_local_attention=False, use_global_attention=False)
    calls = []
    model.transformer.register_forward_hook(lambda m, i, o: calls.append(i[1]))
    out = predict(model, batch_for(model, T=12))
    assert len(calls) == 1 and bool(calls[0].all())
    assert "attn_local" not in out and "attn_global" not in out and out["aux_loss"].item() == 0


def test_no_adapter_ignores_mel():
    model = quick(use_adapter=False)
    assert not hasattr(model, "adapter") and model.inputs == ("global", "mask")
    b = batch_for(model, T=12)
    b2 = dict(b, mel=torch.randn_like(b["mel"]))
    assert torch.equal(predict(model, b)["pred"], predict(model, b2)["pred"])
    del b2["mel"]
    assert torch.equal(predict(model, b)["pred"], predict(model, b2)["pred"])
    full = quick()
    assert not torch.allclose(predict(full, b)["pred"], predict(full, dict(b, mel=torch.randn_like(b["mel"])))["pred"])


def test_no_global_encoder_ignores_global():
    model = quick(use_global_encoder=False)
    assert not hasattr(model, "global_proj") and model.inputs == ("mel", "mask")
    b = batch_for(model, T=12)
    b2 = dict(b, **{"global": torch.randn_like(b["global"])})
    assert torch.equal(predict(model, b)["pred"], predict(model, b2)["pred"])
    del b2["global"]
    assert torch.equal(predict(model, b)["pred"], predict(model, b2)["pred"])
    full = quick()
    assert not torch.allclose(predict(full, b)["pred"],
                              predict(full, dict(b, **{"global": torch.randn_like(b["global"])}))["pred"])


def test_no_attention_loss_zeroes_aux_and_keeps_predictions():
    full, ablated = quick(), quick(use_attention_loss=False)
    ablated.load_state_dict(full.state_dict())
    b = batch_for(full, T=12)
    a, c = predict(full, b), predict(ablated, b)
    assert a["aux_loss"].item() > 0 and c["aux_loss"].item() == 0
    assert torch.equal(a["pred"], c["pred"])


def test_global_projection_is_identity_when_sizes_match():
    assert isinstance(quick(global_dim=64).global_proj, torch.nn.Identity)
    assert quick(global_dim=32).global_proj.in_features == 32


def test_per_step_global_embedding_is_accepted():
    model = quick(global_dim=8)
    b = batch_for(model, T=6)
    b["global"] = torch.randn(2, 6, 8)
    assert predict(model, b)["pred"].shape == (2, 6, 2)


def test_frames_frontend_reads_frames_not_mel():
    model = quick(frontend="frames", frames_dim=10)
    assert model.inputs == ("frames", "global", "mask") and isinstance(model.adapter, torch.nn.Linear)
    b = batch_for(model, T=7)
    out = predict(model, b)
    assert out["pred"].shape == (2, 7, 2)
    assert torch.equal(out["pred"], predict(model, dict(b, mel=torch.randn_like(b["mel"])))["pred"])
    assert not torch.allclose(out["pred"], predict(model, dict(b, frames=torch.randn_like(b["frames"])))["pred"])


def test_group_norm_option_has_no_running_stats():
    model = quick(norm="group")
    assert not any("running" in n for n, _ in model.named_buffers())
    assert any("running" in n for n, _ in quick().named_buffers())


def test_bad_inputs_raise_clear_errors():
    model = quick()
    b = batch_for(model, T=5)
    with pytest.raises(UserError, match="'mel'"):
        model({k: v for k, v in b.items() if k != "mel"})
    with pytest.raises(UserError, match="'global'"):
        model(dict(b, **{"global": torch.randn(2, 7)}))
    with pytest.raises(UserError, match="'mel'"):
        model(dict(b, mel=torch.randn(2, 5, 51, 128)))
    bad = b["mask"].clone()
    bad[0, 1] = False  # a hole in the middle
    with pytest.raises(UserError, match="prefix"):
        model(dict(b, mask=bad))
    with pytest.raises(UserError, match="mask"):
        quick(use_adapter=False)({"global": b["global"]})


# ------------------------------------------------------------------ shapes, padding, gradients


def test_shapes_for_30s_and_padding_does_not_change_a_shorter_song():
    model = quick()
    short = batch_for(model, T=60, B=1, seed=3)
    out = predict(model, short)
    assert out["pred"].shape == (1, 60, 2) and out["attn_local"].shape == (1, 60, 60)
    long = batch_for(model, T=420, B=1, seed=4)
    pad = lambda x: torch.cat([x, torch.zeros(1, 360, *x.shape[2:], dtype=x.dtype)], 1)
    both = {"mel": torch.cat([pad(short["mel"]), long["mel"]]), "global": torch.cat([short["global"], long["global"]]),
            "mask": torch.cat([pad(short["mask"]), long["mask"]])}
    out2 = predict(model, both)
    assert out2["pred"].shape == (2, 420, 2) and out2["attn_global"].shape == (2, 420, 420)
    torch.testing.assert_close(out2["pred"][0, :60], out["pred"][0], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(out2["attn_global"][0, :60, :60], out["attn_global"][0], atol=1e-6, rtol=1e-4)
    assert torch.isfinite(out2["pred"]).all()


def test_gradients_reach_every_parameter_and_never_the_global_encoder():
    model = quick()
    model.train()
    b = batch_for(model, T=12)
    b["global"].requires_grad_(True)  # stands for an encoder output that is still attached
    out = model(b)
    (out["pred"].pow(2).mean() + out["aux_loss"]).backward()
    # a conv bias just before a train-mode BatchNorm is cancelled by the batch mean: its gradient is zero
    # (exactly, where the adapter folds the norm into the conv; rounding noise otherwise)
    before_norm = {"adapter.block1.0.bias", "adapter.block2.0.bias"}
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        if name in before_norm:
            assert p.grad.abs().max() < 1e-4 * model.adapter.block1[0].weight.grad.abs().max(), name
        else:
            assert p.grad.abs().sum() > 0, name
    assert b["global"].grad is None


def test_deterministic_under_a_seed():
    b = batch_for(quick(), T=12)
    outs = []
    for _ in range(2):
        model = quick()
        model.train()
        torch.manual_seed(5)
        outs.append(model(b)["pred"])
    assert torch.equal(outs[0], outs[1])


def test_functional_call_second_order_maml_step():
    model = quick(dropout=0.0)
    model.train()
    b = batch_for(model, T=8, B=1)
    y = torch.randn(1, 8, 2)
    params = {k: v for k, v in model.named_parameters()}

    def loss_at(p):
        out = functional_call(model, p, (b,))
        return (out["pred"] - y).pow(2).mean() + out["aux_loss"]

    grads = torch.autograd.grad(loss_at(params), list(params.values()), create_graph=True)
    fast = {k: v - 0.1 * g for (k, v), g in zip(params.items(), grads)}
    meta = torch.autograd.grad(loss_at(fast), list(params.values()))
    detached = {k: v.detach().requires_grad_() for k, v in fast.items()}
    first_order = torch.autograd.grad(loss_at(detached), list(detached.values()))
    assert all(torch.isfinite(g).all() for g in meta)
    # second-order terms are present: the meta-gradient is not the first-order approximation
    w = list(params).index("transformer.layers.0.attn.qkv.weight")
    assert not torch.allclose(meta[w], first_order[w])


def test_runs_under_vmap_with_a_functional_lstm():
    # the meta-learner maps the model over tasks with torch.func.vmap; nn.LSTM needs its functional LSTM there
    from torch.func import vmap

    model = quick(dropout=0.0).eval()
    tasks = [batch_for(model, T=6, B=1, seed=s) for s in (1, 2)]
    tasks[1]["mask"][0, 4:] = False
    stacked = {k: torch.stack([t[k] for t in tasks]) for k in tasks[0]}
    params, buffers = dict(model.named_parameters()), dict(model.named_buffers())
    with vmap_ready(model):
        preds = vmap(lambda b: functional_call(model, (params, buffers), (b,))["pred"])(stacked)
    for i, t in enumerate(tasks):
        torch.testing.assert_close(preds[i], predict(model, t)["pred"], atol=1e-5, rtol=1e-4)


def test_meta_learner_batched_and_loop_paths_agree_on_dsaml():
    # grad inside vmap (the meta-learner's batched inner loop) must run through the model too
    model = quick(dropout=0.0, n_layers=1, global_dim=8).train()  # small: the batched path is slow on CPU
    tasks = []
    for s in (1, 2):
        support, query = batch_for(model, T=4, B=1, seed=s), batch_for(model, T=4, B=1, seed=s + 10)
        support["y"], query["y"] = torch.randn(1, 4, 2), torch.randn(1, 4, 2)
        tasks.append((support, query))
    cfg = MetaConfig(inner_steps=1, first_order=True)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    loop = meta_loss_loop(model, tasks, cfg)
    g_loop = torch.autograd.grad(loop, list(model.parameters()))
    model.load_state_dict(state)
    batched = meta_loss_batched(model, tasks, cfg)
    g_batched = torch.autograd.grad(batched, list(model.parameters()))
    assert batched.item() == pytest.approx(loop.item(), rel=1e-5)
    for a, b in zip(g_loop, g_batched):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-3)


# ------------------------------------------------------------------ model-summary


def test_model_summary_paper_shows_the_papers_sizes(capsys):
    parser = argparse.ArgumentParser()
    cli_models.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["model-summary", "--preset", "paper"])
    assert args.func(args) == 0
    text = capsys.readouterr().out
    for piece in ("D=1024", "layers=3", "heads=16", "n_l=5", "n_g=30", "alpha=0.5", "beta=0.05", "transformer",
                  "adapter", "1x60x2"):
        assert piece in text, piece
    assert "(x2 calls)" in text  # the shared transformer ran twice
    assert cli_models in cli.COMMAND_GROUPS


def test_summarize_and_example_batch_for_a_baseline():
    model = build_model("dnn", "quick")
    batch = example_batch(model, steps=4, batch_size=2)
    assert set(batch) == {"wave", "mask"} and batch["wave"].shape == (2, 4, 8000)
    lines = summarize(model, steps=4)
    assert lines[-2].startswith("total") and "1x4x2" in lines[-2]


def test_normalize_global_makes_the_model_blind_to_the_embedding_scale():
    model = quick(global_dim=40, normalize_global=True)
    batch = batch_for(model)
    scaled = dict(batch, **{"global": batch["global"] * 25.0 + 3.0})
    torch.testing.assert_close(predict(model, batch)["pred"], predict(model, scaled)["pred"], atol=1e-5, rtol=1e-4)
    plain = quick(global_dim=40)
    assert not torch.allclose(predict(plain, batch)["pred"], predict(plain, scaled)["pred"], atol=1e-3)


# ------------------------------------------------------------------ the adapter's cheaper order


def module_by_module(adapter: Adapter, mel: torch.Tensor) -> torch.Tensor:
    """The adapter as its modules are listed: conv -> norm -> ReLU -> pool, twice, then reduce and proj."""
    return adapter.proj(adapter.reduce(adapter.block2(adapter.block1(mel[:, None]))).flatten(1))


@pytest.mark.parametrize("norm", ["batch", "group"])
@pytest.mark.parametrize("train", [True, False])
def test_adapter_forward_equals_its_modules_in_order(norm, train):
    torch.manual_seed(0)
    cfg = DSAMLConfig.quick(n_frames=13, n_mels=24, norm=norm)
    fast = Adapter(cfg)
    with torch.no_grad():  # negative and positive norm scales, and running statistics away from 0 / 1
        for block in (fast.block1, fast.block2):
            block[1].weight.uniform_(-1.5, 1.5)
            block[1].bias.uniform_(-1, 1)
            if norm == "batch":
                block[1].running_mean.uniform_(-3, 3)
                block[1].running_var.uniform_(0.5, 4)
    slow = copy.deepcopy(fast)
    fast.train(train), slow.train(train)
    mel = torch.randn(40, 13, 24) * 4 - 30  # log-mel: a large mean against the spread
    out_fast, out_slow = fast(mel), module_by_module(slow, mel)
    torch.testing.assert_close(out_fast, out_slow, rtol=1e-4, atol=1e-5)
    up = torch.randn_like(out_fast)
    out_fast.backward(up), out_slow.backward(up)
    scale = max(p.grad.abs().max() for p in slow.parameters())
    for (name, p), q in zip(fast.named_parameters(), slow.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-3, atol=1e-4 * scale, msg=name)
    for (name, b), c in zip(fast.named_buffers(), slow.buffers()):  # running statistics updated alike
        torch.testing.assert_close(b, c, rtol=1e-5, atol=1e-6, msg=name)


@pytest.mark.parametrize("size", [(12, 25), (51, 128), (2, 3)])
@pytest.mark.parametrize("train", [True, False])
def test_fused_first_block_equals_its_modules_at_every_size_parity(size, train):
    """The four-phase convolution-and-pool handles the pool's padding for odd and even map sizes."""
    torch.manual_seed(1)
    fast = Adapter(DSAMLConfig.quick(n_frames=size[0], n_mels=size[1]))
    slow = copy.deepcopy(fast)
    fast.train(train), slow.train(train)
    mel = torch.randn(5, *size)
    out_fast, out_slow = fast(mel), module_by_module(slow, mel)
    torch.testing.assert_close(out_fast, out_slow, rtol=1e-4, atol=1e-5)
    out_fast.square().sum().backward(), out_slow.square().sum().backward()
    scale = max(p.grad.abs().max() for p in slow.parameters())  # (in train mode the conv bias's is ~0)
    for (name, p), q in zip(fast.named_parameters(), slow.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-3, atol=1e-5 * scale, msg=name)


def test_pool_ties_go_to_the_first_pixel_as_in_max_pool():
    """Constant stretches of log-mel (silence at the floor) tie inside pooling windows: the weight gradient
    is the module's, which gives each window's gradient to its first maximal pixel."""
    torch.manual_seed(2)
    fast = Adapter(DSAMLConfig.quick(n_frames=13, n_mels=24)).eval()
    slow = copy.deepcopy(fast)
    mel = torch.randn(4, 13, 24)
    mel[:2] = -80.0  # two silent slices: every window of their maps ties
    mel[2, :, :12] = -80.0
    out_fast, out_slow = fast(mel), module_by_module(slow, mel)
    torch.testing.assert_close(out_fast, out_slow, rtol=1e-4, atol=1e-5)
    up = torch.randn_like(out_fast)
    out_fast.backward(up), out_slow.backward(up)
    torch.testing.assert_close(fast.block1[0].weight.grad, slow.block1[0].weight.grad, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(fast.block1[0].bias.grad, slow.block1[0].bias.grad, rtol=1e-4, atol=1e-5)


def test_adapter_gives_the_input_its_gradient_when_asked():
    torch.manual_seed(3)
    fast = Adapter(DSAMLConfig.quick(n_frames=13, n_mels=24))
    slow = copy.deepcopy(fast)
    grads = []
    for f in (fast, lambda m: module_by_module(slow, m)):
        mel = torch.randn(6, 13, 24, generator=torch.Generator().manual_seed(4)).requires_grad_()
        f(mel).square().sum().backward()
        grads.append(mel.grad)
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-4, atol=1e-5)


def test_adapter_second_order_gradient_equals_its_modules_in_order():
    torch.manual_seed(0)
    fast = Adapter(DSAMLConfig.quick(n_frames=13, n_mels=24))
    slow = copy.deepcopy(fast)
    mel = torch.randn(6, 13, 24)
    hess = []
    for model, f in ((fast, fast), (slow, lambda m: module_by_module(slow, m))):
        w = model.block1[0].weight
        g, = torch.autograd.grad(f(mel).square().sum(), w, create_graph=True)
        hess.append(torch.autograd.grad(g.square().sum(), w)[0])
    torch.testing.assert_close(hess[0], hess[1], rtol=1e-3, atol=1e-3 * hess[1].abs().max())


def test_song_prediction_with_local_features_once_equals_window_by_window():
    model = quick()
    model.train()
    for _ in range(2):  # move the BatchNorm running statistics off their initial values
        model(batch_for(model, T=20, B=3))
    T = 97
    gen = torch.Generator().manual_seed(5)
    sd = SongData("s", np.arange(T) * 0.5, {"mel": torch.randn(T, model.cfg.n_frames, N_MELS, generator=gen).numpy(),
                                           "global": torch.randn(model.cfg.global_dim, generator=gen).numpy()},
                  {MEAN: np.zeros((T, 2), np.float32)})
    params = {k: v.detach() + 0.05 * torch.randn_like(v) for k, v in model.named_parameters()}
    once = [predict_song(model, sd, 30, 10), predict_song(model, sd, 30, 10, params)]
    assert not np.allclose(once[0], once[1])  # the parameters matter
    model.local_features = None  # not callable: predict_song runs the adapter window by window
    windowed = [predict_song(model, sd, 30, 10), predict_song(model, sd, 30, 10, params)]
    for a, b in zip(once, windowed):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("rel_pos", ["key", "bias"])
@pytest.mark.parametrize("band", [0, 3, 30])
def test_attention_scores_only_the_distances_its_band_allows_with_the_same_result(rel_pos, band):
    """Transformer(x, allowed, band) scores relative distances up to the band only: pairs farther apart are
    masked anyway, so outputs, maps and gradients equal the unbanded call's."""
    from dsaml_utils.models.dsaml import Transformer
    torch.manual_seed(11)
    cfg = DSAMLConfig.quick(rel_pos=rel_pos, dropout=0.0, max_rel_distance=20)
    net = Transformer(cfg)
    if rel_pos == "bias":
        torch.nn.init.normal_(net.layers[0].attn.rel)
    x = torch.randn(3, 25, cfg.d_model)
    mask = torch.ones(3, 25, dtype=torch.bool)
    mask[2, 18:] = False
    allowed = (mask[:, None, :] | torch.eye(25, dtype=torch.bool)) & band_mask(25, band)
    outs = []
    for b in (band, None):
        net.zero_grad()
        h, probs = net(x, allowed, b)
        (h.square().sum() + probs.square().sum()).backward()
        outs.append((h, probs, [p.grad.clone() for p in net.parameters()]))
    torch.testing.assert_close(outs[0][0], outs[1][0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(outs[0][1], outs[1][1], rtol=1e-5, atol=1e-6)
    scale = max(h.abs().max().item() for h in outs[1][2])
    for g, h in zip(outs[0][2], outs[1][2]):
        torch.testing.assert_close(g, h, rtol=1e-4, atol=1e-6 * scale)
