"""The output affine that MAML's inner loop fits in closed form (meta.calibrate, the quick preset)."""

import copy

import pytest
import torch
from fixtures import one_thread  # noqa: F401 (an autouse fixture)
from test_meta import MLP, dsaml_tasks, make_tasks

from dsaml_utils.meta.batched import meta_loss_batched
from dsaml_utils.meta.maml import MetaConfig, meta_loss_loop, personalize
from dsaml_utils.metrics import dsaml_loss
from dsaml_utils.models.calibration import SCALE, SHIFT, add_output_affine, compose, fit_affine
from dsaml_utils.models.dsaml import DSAML, DSAMLConfig
from dsaml_utils.models.inference import predict_with
from dsaml_utils.errors import UserError
from dsaml_utils.training.config import apply_overrides, deviations, preset
from dsaml_utils.training.runs import build_run_model


def test_fit_affine_is_the_least_squares_line_and_ridge_pulls_the_gain_to_one():
    g = torch.Generator().manual_seed(0)
    pred = torch.randn(2, 30, 2, generator=g, dtype=torch.float64)
    y = torch.stack([0.5 * pred[..., 0] - 0.2, -2.0 * pred[..., 1] + 0.3], -1)
    a, b = fit_affine(pred, y, None, ridge=0.0)
    torch.testing.assert_close(a, torch.tensor([0.5, -2.0], dtype=torch.float64))
    torch.testing.assert_close(b, torch.tensor([-0.2, 0.3], dtype=torch.float64))
    # the same as numpy-free least squares by hand on the masked steps only
    mask = torch.ones(2, 30, dtype=torch.bool)
    mask[1, 20:] = False
    noisy = y + 0.1 * torch.randn(y.shape, generator=g, dtype=torch.float64)
    noisy[1, 20:] = 99.0  # masked steps must not count
    a, b = fit_affine(pred, noisy, mask, ridge=0.0)
    for d in range(2):
        p, t = pred[..., d][mask], noisy[..., d][mask]
        X = torch.stack([p, torch.ones_like(p)], 1)
        sol = torch.linalg.lstsq(X, t[:, None]).solution[:, 0]
        torch.testing.assert_close(torch.stack([a[d], b[d]]), sol)
    flat = torch.zeros(1, 10, 2, dtype=torch.float64)
    a, b = fit_affine(flat, torch.ones(1, 10, 2, dtype=torch.float64), None, ridge=0.05)
    torch.testing.assert_close(a, torch.ones(2, dtype=torch.float64))  # no spread: gain stays 1, shift = offset
    torch.testing.assert_close(b, torch.ones(2, dtype=torch.float64))
    # leading task axes
    a3, _ = fit_affine(torch.stack([pred, 2 * pred]), torch.stack([y, y]), None, ridge=0.0)
    torch.testing.assert_close(a3[1], a3[0] / 2)
    # one dimension only: the other keeps gain 1 and shift 0 (metrics.DIMENSIONS: arousal, valence)
    a, b = fit_affine(torch.stack([pred, pred]), torch.stack([y, y]), None, ridge=0.0, dims=("valence",))
    torch.testing.assert_close(a, torch.tensor([[1.0, -2.0]] * 2, dtype=torch.float64))
    torch.testing.assert_close(b, torch.tensor([[0.0, 0.3]] * 2, dtype=torch.float64))
    a, b = fit_affine(pred, y, None, ridge=0.0, dims=("arousal",))
    torch.testing.assert_close(torch.stack([a, b]), torch.tensor([[0.5, 1.0], [-0.2, 0.0]], dtype=torch.float64))


def test_output_affine_scales_the_prediction_and_composes():
    torch.manual_seed(0)
    model = add_output_affine(MLP().double())
    assert add_output_affine(model) is model and {SCALE, SHIFT} <= set(model.state_dict())
    (support, _), = make_tasks(n=1)
    raw = MLP.forward(model, support)["pred"]
    params = dict(model.named_parameters())
    params = compose(params, torch.tensor([2.0, -1.0], dtype=torch.float64),
                     torch.tensor([0.5, 0.0], dtype=torch.float64))
    out = predict_with(model, params, support)["pred"]
    gain, shift = torch.tensor([2.0, -1.0], dtype=torch.float64), torch.tensor([0.5, 0.0], dtype=torch.float64)
    torch.testing.assert_close(out, raw.detach() * gain + shift)
    torch.testing.assert_close(model(support)["pred"], raw)  # scale 1, shift 0 at the start


@pytest.mark.parametrize("second_order", [False, True])
def test_meta_gradient_with_calibration_matches_the_loop_written_out(second_order):
    torch.manual_seed(1)
    model = add_output_affine(MLP().double())
    tasks = make_tasks()
    cfg = MetaConfig(inner_steps=2, inner_lr=0.3, first_order=not second_order, calibrate=0.01)
    names = ["l1.weight", "l1.bias", "l2.weight", "l2.bias", SCALE, SHIFT]
    theta = [dict(model.named_parameters())[n] for n in names]

    def pred(w, batch):
        return (torch.tanh(batch["frames"] @ w[0].T + w[1]) @ w[2].T + w[3]) * w[4] + w[5]

    total = 0.0
    for support, query in tasks:
        w = [t.clone() for t in theta]
        for _ in range(cfg.inner_steps):
            g = torch.autograd.grad(dsaml_loss(pred(w, support), support["y"], support["mask"]), w,
                                    create_graph=second_order)
            w = [wi - cfg.inner_lr * (gi if second_order else gi.detach()) for wi, gi in zip(w, g)]
        p = pred(w, support) if second_order else pred(w, support).detach()
        keep = support["mask"]
        a, b = [], []
        for d in range(2):  # least squares with the ridge towards gain 1, written out
            x, t = p[..., d][keep], support["y"][..., d][keep]
            cov, var = ((x - x.mean()) * (t - t.mean())).mean(), ((x - x.mean()) ** 2).mean()
            a.append((cov + cfg.calibrate) / (var + cfg.calibrate))
            b.append(t.mean() - a[-1] * x.mean())
        a, b = torch.stack(a), torch.stack(b)
        w[4], w[5] = a * w[4], a * w[5] + b
        total = total + dsaml_loss(pred(w, query), query["y"], query["mask"])
    want = dict(zip(names, torch.autograd.grad(total / len(tasks), theta)))
    for fn in (meta_loss_loop, meta_loss_batched):
        twin = copy.deepcopy(model)
        twin.zero_grad(set_to_none=True)
        fn(twin, tasks, cfg).backward()
        for n in names:
            torch.testing.assert_close(dict(twin.named_parameters())[n].grad, want[n], atol=1e-6, rtol=0,
                                       msg=lambda m: f"{fn.__name__} {n}: {m}")
    # without calibration the affine is an ordinary adapted layer, and the meta-gradient another one
    twin = copy.deepcopy(model)
    twin.zero_grad(set_to_none=True)
    meta_loss_loop(twin, tasks, MetaConfig(inner_steps=2, inner_lr=0.3, first_order=not second_order)).backward()
    assert not torch.allclose(twin.l1.weight.grad, want["l1.weight"])


@pytest.mark.parametrize("dims", [(), ("valence",)])
def test_batched_equals_loop_with_calibration_on_dsaml_quick(dims):
    torch.manual_seed(5)
    model = add_output_affine(DSAML(DSAMLConfig.quick(dropout=0.0, global_dim=16, n_frames=11, n_mels=24)).double())
    tasks = dsaml_tasks(model)
    cfg = MetaConfig(inner_steps=2, inner_lr=0.05, calibrate=0.05, calibrate_dims=dims)
    twin = copy.deepcopy(model)
    for m in (model, twin):
        m.zero_grad(set_to_none=True)
    meta_loss_batched(model, tasks, cfg).backward()
    meta_loss_loop(twin, tasks, cfg).backward()
    for (name, a), b in zip(model.named_parameters(), twin.parameters()):
        torch.testing.assert_close(a.grad, b.grad, atol=1e-6, rtol=0, msg=lambda m: f"{name}: {m}")
    for (name, a), b in zip(model.named_buffers(), twin.buffers()):  # the extra forward leaves the statistics alone
        torch.testing.assert_close(a, b, atol=1e-9, rtol=0, msg=name)


def test_personalize_fits_the_support_and_needs_an_output_affine():
    torch.manual_seed(2)
    model = add_output_affine(MLP().double())
    (support, _), = make_tasks(n=1)
    support["y"] = 0.1 * support["y"] + 0.6  # a listener far above the model's predictions
    cfg = MetaConfig(inner_steps=1, inner_lr=0.01, calibrate=0.01)
    fast = personalize(model, support, cfg)
    sgd = personalize(model, support, MetaConfig(inner_steps=1, inner_lr=0.01))
    mask = support["mask"][..., None]
    err = lambda p: float(((predict_with(model, p, support)["pred"] - support["y"]).abs() * mask).sum())
    assert err(fast) < 0.5 * err(sgd)
    assert all(not v.requires_grad for v in fast.values())
    with pytest.raises(ValueError, match="output affine"):
        personalize(MLP().double(), support, cfg)


def test_the_quick_preset_calibrates_valence_the_paper_preset_nothing_and_both_say_so():
    assert preset("paper").meta.calibrate is None and preset("paper", protocol="authors").meta.calibrate is None
    quick = preset("quick")
    assert quick.meta.calibrate == 0.05 and quick.meta.calibrate_dims == ("valence",)
    lines = [d for d in deviations(quick) if d.startswith("meta.calibrate")]
    assert len(lines) == 2 and "not the paper" in lines[0] and "valence" in lines[1]
    assert not [d for d in deviations(preset("paper")) if "calibrate" in d]
    with pytest.raises(UserError, match="meta.calibrate"):
        apply_overrides(preset("quick"), ["meta.calibrate=-1"])
    with pytest.raises(UserError, match="meta.calibrate_dims 'tension': choose one of 'arousal', 'valence'"):
        apply_overrides(preset("quick"), ['meta.calibrate_dims=["valence", "tension"]'])
    both = apply_overrides(preset("quick"), ["meta.calibrate_dims=[]"])
    assert both.meta.calibrate_dims == ()


def test_a_calibrated_run_builds_its_output_affine():
    assert {SCALE, SHIFT} <= set(build_run_model(preset("smoke")).state_dict())
    cfg = apply_overrides(preset("smoke"), ["meta.calibrate=null"])
    assert SCALE not in build_run_model(cfg).state_dict()
