"""Tests for dsaml_utils.models.baselines: shared helpers, every baseline's forward/backward, padding, sizes."""

from __future__ import annotations

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from dsaml_utils.errors import UserError
from dsaml_utils.meta.batched import vmap_ready
from dsaml_utils.models.baselines import BASELINES, CRNNConfig, FrameBiLSTMConfig
from dsaml_utils.models.layers import (
    BiRNN,
    count_parameters,
    per_step,
    require,
    reverse_padded,
    step_mask,
)
from dsaml_utils.models.registry import build_model, example_batch

SMALL_MEL = {"crnn": {"n_mels": 32}, "damff": {"n_mels": 32}}  # keeps the 2-D conv baselines cheap in tests


def quick(name: str):
    torch.manual_seed(0)
    return build_model(name, "quick", **SMALL_MEL.get(name, {}))


# ------------------------------------------------------------------ helpers


def test_step_mask_defaults_and_checks():
    assert step_mask({}, 2, 3, torch.device("cpu")).all()
    m = torch.tensor([[1, 1, 0], [1, 1, 1]])
    assert step_mask({"mask": m}, 2, 3, torch.device("cpu")).dtype == torch.bool
    with pytest.raises(UserError, match="prefix"):
        step_mask({"mask": torch.tensor([[True, False, True]])}, 1, 3, torch.device("cpu"))
    with pytest.raises(UserError, match="prefix"):
        step_mask({"mask": torch.tensor([[False, False, False]])}, 1, 3, torch.device("cpu"))
    with pytest.raises(UserError, match="shape"):
        step_mask({"mask": torch.ones(1, 4, dtype=torch.bool)}, 1, 3, torch.device("cpu"))


def test_require_names_the_missing_key():
    assert require({"a": torch.ones(1)}, "a", "m", "x").shape == (1,)
    with pytest.raises(UserError, match="'wave'.*crnn|crnn.*'wave'"):
        require({"mel": 1}, "wave", "crnn", "[B, T, S]")


def test_per_step_applies_the_encoder_per_slice_and_zeroes_padding():
    x = torch.randn(2, 4, 3)
    mask = torch.tensor([[True, True, True, True], [True, True, False, False]])
    z = per_step(lambda v: v * 2 + 1, x, mask)
    assert torch.equal(z[mask], x[mask] * 2 + 1) and (z[~mask] == 0).all()


def test_reverse_padded_reverses_real_steps_only():
    x = torch.arange(8.0).view(2, 4, 1)
    mask = torch.tensor([[True, True, True, True], [True, True, True, False]])
    r = reverse_padded(x, mask)
    assert r[0, :, 0].tolist() == [3, 2, 1, 0] and r[1, :, 0].tolist() == [6, 5, 4, 7]
    assert torch.equal(reverse_padded(r, mask), x)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_birnn_equals_torch_bidirectional_rnn_on_packed_sequences(cell):
    torch.manual_seed(0)
    ours = BiRNN(5, 4, num_layers=2, cell=cell)
    ref = (torch.nn.LSTM if cell == "lstm" else torch.nn.GRU)(5, 4, num_layers=2, batch_first=True,
                                                              bidirectional=True)
    with torch.no_grad():
        for layer, pair in enumerate(ours.layers):
            for direction, suffix in (("fwd", ""), ("bwd", "_reverse")):
                for kind in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
                    getattr(pair[direction], f"{kind}_l0").copy_(getattr(ref, f"{kind}_l{layer}{suffix}"))
    x = torch.randn(3, 7, 5)
    mask = torch.arange(7)[None, :] < torch.tensor([7, 4, 1])[:, None]
    packed = pack_padded_sequence(x, mask.sum(1), batch_first=True, enforce_sorted=False)
    want = pad_packed_sequence(ref(packed)[0], batch_first=True, total_length=7)[0]
    got = ours(x, mask)
    torch.testing.assert_close(got[mask], want[mask], atol=1e-5, rtol=1e-4)
    with pytest.raises(UserError):
        BiRNN(5, 4, cell="rnn")


def test_preset_configs_and_unknown_fields():
    assert CRNNConfig.paper().rnn_hidden > CRNNConfig.quick().rnn_hidden
    assert CRNNConfig.quick(rnn_hidden=3).rnn_hidden == 3
    with pytest.raises(UserError, match="no field"):
        FrameBiLSTMConfig.quick(hiden=3)


def test_count_parameters_counts_trainable_separately():
    lin = torch.nn.Linear(3, 2)
    lin.bias.requires_grad_(False)
    assert count_parameters(lin) == 8 and count_parameters(lin, trainable_only=True) == 6


# ------------------------------------------------------------------ the baselines


@pytest.mark.parametrize("name", sorted(BASELINES))
def test_forward_backward_shapes_and_gradients(name):
    model = quick(name)
    model.train()
    batch = example_batch(model, steps=6, batch_size=2)
    assert set(batch) == set(model.inputs)
    out = model(batch)
    assert out["pred"].shape == (2, 6, 2) and out["aux_loss"].item() == 0
    out["pred"].pow(2).mean().backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, pname


@pytest.mark.parametrize("name", sorted(BASELINES))
def test_padding_does_not_change_a_shorter_song(name):
    model = quick(name).eval()
    short, long = example_batch(model, 5, 1, seed=1), example_batch(model, 9, 1, seed=2)
    pad = lambda x: torch.cat([x, torch.zeros(1, 4, *x.shape[2:], dtype=x.dtype)], 1)
    both = {k: torch.cat([pad(short[k]), long[k]]) for k in short}
    with torch.no_grad():
        alone, batched = model(short)["pred"], model(both)["pred"]
    torch.testing.assert_close(batched[0, :5], alone[0], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("name", sorted(BASELINES))
def test_missing_or_misshaped_input_is_a_clear_error(name):
    model = quick(name)
    batch = example_batch(model, 3, 1)
    key = next(k for k in model.inputs if k != "mask")
    with pytest.raises(UserError, match=key):
        model({"mask": batch["mask"]})
    with pytest.raises(UserError, match=key):
        model(dict(batch, **{key: batch[key][..., :-1]}))


def test_paper_sizes_are_a_comparable_budget():
    counts = {name: count_parameters(build_model(name)) for name in BASELINES}
    print("baseline parameters (paper preset):", counts)
    assert all(2e5 <= n <= 2e6 for n in counts.values()), counts
    assert max(counts.values()) / min(counts.values()) < 10


@pytest.mark.parametrize("name", ["crnn", "dnn"])
def test_gru_baselines_can_use_lstm_cells(name):
    torch.manual_seed(0)
    model = build_model(name, "quick", cell="lstm", **SMALL_MEL.get(name, {}))
    assert any(isinstance(m, torch.nn.LSTM) for m in model.modules())
    assert not any(isinstance(m, torch.nn.GRU) for m in model.modules())
    assert model(example_batch(model, 4, 1))["pred"].shape == (1, 4, 2)


@pytest.mark.parametrize("name", sorted(BASELINES))
def test_runs_under_vmap_over_padded_tasks(name):
    # the meta-learner maps models over tasks with torch.func.vmap (its vmap_ready swaps in plain-op RNNs)
    from torch.func import functional_call, vmap


    model = quick(name).eval()
    tasks = [example_batch(model, 5, 1, seed=s) for s in (1, 2)]
    tasks[1]["mask"][0, 3:] = False
    stacked = {k: torch.stack([t[k] for t in tasks]) for k in tasks[0]}
    params, buffers = dict(model.named_parameters()), dict(model.named_buffers())
    with vmap_ready(model):
        preds = vmap(lambda b: functional_call(model, (params, buffers), (b,))["pred"])(stacked)
    with torch.no_grad():
        for i, t in enumerate(tasks):
            torch.testing.assert_close(preds[i][t["mask"]], model(t)["pred"][t["mask"]], atol=1e-5, rtol=1e-4)
