"""Tests for seed 003's frame-feature models (models.frame_models, models.frame_attention)."""

from __future__ import annotations

import pytest
import torch

from dsaml_utils.errors import UserError
from dsaml_utils.meta.batched import meta_loss_batched
from dsaml_utils.meta.maml import MetaConfig, meta_loss_loop
from dsaml_utils.models.frame_attention import ATTENTION_MODELS, DSelfAttentionConfig
from dsaml_utils.models.frame_models import (
    FRAME_MODELS,
    SameConv1d,
    SpaceBranch,
    TimeBranch,
    same_max_pool,
)
from dsaml_utils.models.layers import count_parameters
from dsaml_utils.models.registry import MODELS, build_model, example_batch

FAMILY = sorted({**FRAME_MODELS, **ATTENTION_MODELS})
GATED = ["se_cnn_bilstm", "cbam_cnn_bilstm", "wsam_cnn_bilstm"]
TINY = {"frames_dim": 24}  # keeps the per-step convolutions cheap
NO_DROPOUT = {"dropout": 0.0, "conv_dropout": 0.0}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """One intra-op thread: these small models run faster so, and a busy 2-core machine does not make
    spinning worker threads multiply the time (measured: 14 s against over 120 s for this file)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny(name: str, **overrides):
    """A quick model on 24 features; the residual ones get two blocks so that the identity skip is covered."""
    torch.manual_seed(0)
    fields = set(MODELS[name][1].__dataclass_fields__)
    extra = {k: v for k, v in {**TINY, "blocks": 2, **overrides}.items() if k in fields}
    return build_model(name, "quick", **extra)


def frames_batch(model, B: int, T: int, seed: int) -> dict:
    gen = torch.Generator().manual_seed(seed)
    return {"frames": torch.randn(B, T, model.cfg.frames_dim, generator=gen),
            "mask": torch.ones(B, T, dtype=torch.bool)}


def test_family_is_registered_under_snake_case_names():
    want = {"frame_cnn", "bilstm", "cnn_bilstm", "cnn_bilstm_temporal", "cnn_bilstm_spatial", "rescnn_bilstm",
            "se_cnn_bilstm", "cbam_cnn_bilstm", "wsam_cnn_bilstm", "dselfattention"}
    assert set(FAMILY) == want and want <= set(MODELS)
    for name in FAMILY:
        model = build_model(name, "quick")
        assert model.inputs == ("frames", "mask") and model.name == name


@pytest.mark.parametrize("name", FAMILY)
def test_forward_shape_range_and_every_parameter_gets_a_gradient(name):
    model = tiny(name).train()
    batch = frames_batch(model, 2, 7, seed=1)
    out = model(batch)
    assert out["pred"].shape == (2, 7, 2) and out["aux_loss"].item() == 0
    assert out["pred"].abs().max() < 1  # tanh output (seed)
    out["pred"].pow(2).mean().backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, pname


@pytest.mark.parametrize("name", FAMILY)
def test_padded_steps_do_not_change_real_steps(name):
    model = tiny(name).eval()
    short, long = frames_batch(model, 1, 5, seed=2), frames_batch(model, 1, 9, seed=3)
    junk = 50 * torch.randn(1, 4, model.cfg.frames_dim)  # padding with large values, not zeros
    both = {"frames": torch.cat([torch.cat([short["frames"], junk], 1), long["frames"]]),
            "mask": torch.tensor([[True] * 5 + [False] * 4, [True] * 9])}
    with torch.no_grad():
        alone, batched = model(short)["pred"], model(both)["pred"]
    torch.testing.assert_close(batched[0, :5], alone[0], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("first_order", [True, False])
@pytest.mark.parametrize("name", FAMILY)
def test_batched_maml_equals_the_loop(name, first_order):
    model = tiny(name, **NO_DROPOUT).train()  # train mode: BatchNorm uses (and updates) batch statistics
    tasks = []
    for s in (1, 2):
        support, query = frames_batch(model, 2, 5, seed=s), frames_batch(model, 2, 5, seed=s + 10)
        support["mask"][1, 3:] = False  # one padded song per batch, the same in both paths
        support["y"], query["y"] = torch.rand(2, 5, 2) * 2 - 1, torch.rand(2, 5, 2) * 2 - 1
        tasks.append((support, query))
    cfg = MetaConfig(inner_steps=2, first_order=first_order)  # the authors' inner lr 5e-3
    state = {k: v.clone() for k, v in model.state_dict().items()}
    loop = meta_loss_loop(model, tasks, cfg)
    g_loop = torch.autograd.grad(loop, list(model.parameters()))
    after_loop = {k: v.clone() for k, v in model.state_dict().items()}
    model.load_state_dict(state)
    batched = meta_loss_batched(model, tasks, cfg)
    g_batched = torch.autograd.grad(batched, list(model.parameters()))
    assert batched.item() == pytest.approx(loop.item(), rel=1e-5, abs=1e-6)
    for (pname, _), a, b in zip(model.named_parameters(), g_loop, g_batched):
        torch.testing.assert_close(b, a, atol=1e-5, rtol=1e-3, msg=pname)
    for k, v in model.state_dict().items():  # BatchNorm running statistics agree too
        torch.testing.assert_close(v, after_loop[k], atol=1e-6, rtol=1e-5)


PAPER_BANDS = {
    # frame_cnn: branches ~2.7k + Linear(2C * K = 10,400 -> 2) ~20.8k
    "frame_cnn": (2.0e4, 3.0e4),
    # bilstm: BiLSTM(260 -> 50) 124.8k + BiLSTM(100 -> 50) 60.8k + head
    "bilstm": (1.7e5, 2.0e5),
    # every CNN-BiLSTM is dominated by the first BiLSTM reading the flattened 2C x K = 10,400 map per step
    "cnn_bilstm": (4.1e6, 4.4e6),
    "rescnn_bilstm": (4.1e6, 4.4e6),
    "se_cnn_bilstm": (4.1e6, 4.4e6),
    "cbam_cnn_bilstm": (4.1e6, 4.4e6),
    "wsam_cnn_bilstm": (4.1e6, 4.4e6),
    # one branch: C x K = 5,200 per step, half the first BiLSTM
    "cnn_bilstm_temporal": (2.0e6, 2.3e6),
    "cnn_bilstm_spatial": (2.0e6, 2.3e6),
    # 100 hidden units (DSelfAttention.m) double the first BiLSTM: 8.4M + 0.24M + attention 5k
    "dselfattention": (8.5e6, 8.9e6),
}


@pytest.mark.parametrize("name", FAMILY)
def test_paper_parameter_counts_are_in_their_band(name):
    lo, hi = PAPER_BANDS[name]
    n = count_parameters(build_model(name))
    assert lo <= n <= hi, f"{name}: {n:,} parameters, expected {lo:,.0f}..{hi:,.0f}"


def test_paper_presets_use_seed_003_sizes():
    cfg = DSelfAttentionConfig.paper()
    assert (cfg.channels, cfg.kernel1, cfg.kernel2, cfg.blocks, cfg.lstm_hidden) == (20, 10, 5, 3, 100)
    assert (cfg.attn_heads, cfg.attn_channels, cfg.dropout, cfg.conv_dropout) == (3, 6, 0.3, 0.01)
    assert build_model("cnn_bilstm").cfg.lstm_hidden == 50 and build_model("bilstm").cfg.lstm_layers == 2
    model = build_model("rescnn_bilstm")
    assert [b.space.conv.dilation[0] for b in model.blocks] == [1, 2, 4]
    assert [b.time.conv2.dilation[0] for b in model.blocks] == [1, 2, 4]
    assert isinstance(model.blocks[0].skip, torch.nn.Conv1d) and model.blocks[0].skip.out_channels == 40
    assert all(isinstance(b.skip, torch.nn.Identity) for b in model.blocks[1:])


def test_scale_variants_keep_one_branch():
    def branches(name):
        return {type(m) for m in build_model(name, "quick").modules() if isinstance(m, (SpaceBranch, TimeBranch))}

    assert branches("cnn_bilstm") == {SpaceBranch, TimeBranch}
    assert branches("cnn_bilstm_temporal") == {TimeBranch}
    assert branches("cnn_bilstm_spatial") == {SpaceBranch}
    time = build_model("cnn_bilstm").convs["time"]
    assert (time.conv1.dilation[0], time.conv2.dilation[0]) == (1, 2)  # CNNBiLSTM.m: dilation 2 in the second conv


def test_same_padding_follows_matlab_for_even_kernels():
    x = torch.tensor([[[1.0, 5.0, 2.0, 0.0]]])
    assert same_max_pool(x, 2).tolist() == [[[5.0, 5.0, 2.0, 0.0]]]  # extra pad on the right
    assert same_max_pool(x, 3).tolist() == [[[5.0, 5.0, 5.0, 2.0]]]
    conv = SameConv1d(1, 1, 2, bias=False)
    with torch.no_grad():
        conv.weight.copy_(torch.tensor([[[1.0, 10.0]]]))
    assert conv(x).tolist() == [[[51.0, 25.0, 2.0, 0.0]]]  # y[i] = x[i] + 10 x[i + 1], zero beyond the end
    model = build_model("cnn_bilstm", "quick", kernel1=15, kernel2=6, **TINY)  # the seed's valence kernels
    assert model(frames_batch(model, 1, 3, seed=0))["pred"].shape == (1, 3, 2)


def _zero(module: torch.nn.Module) -> None:
    with torch.no_grad():
        for p in module.parameters():
            p.zero_()


@pytest.mark.parametrize("part", ["channel", "spatial"])
@pytest.mark.parametrize("name", GATED)
def test_each_attention_gate_changes_the_output(name, part):
    model = tiny(name).eval()
    batch = frames_batch(model, 1, 6, seed=4)
    with torch.no_grad():
        before = model(batch)["pred"]
        y = torch.randn(3, 2 * model.cfg.channels, model.cfg.feature_proj)
        w1, w2 = (getattr(model.blocks[0].gate, part)(v) for v in (y, y + torch.randn_like(y)))
        assert not torch.allclose(w1, w2)  # the gate depends on its input
        for block in model.blocks:
            _zero(getattr(block.gate, part))  # constant gates: sigmoid(0) (CBAM: 2 sigmoid(0))
        after = model(batch)["pred"]
    assert (after - before).abs().max() > 1e-3


def test_dselfattention_attends_over_real_steps_only_and_changes_the_output():
    model = tiny("dselfattention").eval()
    batch = frames_batch(model, 2, 6, seed=5)
    batch["mask"][1, 4:] = False
    attn = model.attn
    x, seen = torch.randn(2, 6, 2 * model.cfg.lstm_hidden), {}
    original = attn.weights

    def spy(q, k, mask):
        seen["w"] = original(q, k, mask)
        return seen["w"]

    attn.weights = spy
    with torch.no_grad():
        attn(x, batch["mask"])
        before = model(batch)["pred"]
        assert seen["w"].shape == (2, model.cfg.attn_heads, 6, 6)
        assert (seen["w"][1, :, :, 4:] == 0).all() and seen["w"][0, :, :, 4:].abs().sum() > 0
        torch.testing.assert_close(seen["w"].sum(-1), torch.ones(2, model.cfg.attn_heads, 6))
        attn.qkv.weight[: 2 * model.cfg.attn_channels] = 0  # zero queries and keys: uniform over real steps
        attn.qkv.bias[: 2 * model.cfg.attn_channels] = 0
        attn(x, batch["mask"])
        torch.testing.assert_close(seen["w"][1, :, :, :4], torch.full((model.cfg.attn_heads, 6, 4), 0.25))
        _zero(attn.out)  # no attention output: only the residual path is left
        after = model(batch)["pred"]
    assert (after - before)[batch["mask"]].abs().max() > 1e-3


def test_bad_input_and_config_are_clear_errors():
    model = tiny("rescnn_bilstm")
    with pytest.raises(UserError, match="frames"):
        model({"mask": torch.ones(1, 3, dtype=torch.bool)})
    with pytest.raises(UserError, match="frames"):
        model({"frames": torch.randn(1, 3, 23)})
    with pytest.raises(UserError, match="attn_channels"):
        build_model("dselfattention", "quick", attn_channels=7)
    with pytest.raises(UserError, match="no field"):
        build_model("cnn_bilstm", "quick", chanels=3)


def test_example_batch_and_paper_forward_of_the_main_model():
    model = build_model("dselfattention").eval()
    batch = example_batch(model, steps=3)
    assert batch["frames"].shape == (1, 3, 260)
    with torch.no_grad():
        assert model(batch)["pred"].shape == (1, 3, 2)
