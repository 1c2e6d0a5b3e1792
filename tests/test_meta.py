import copy

import pytest
import torch
import torch.nn as nn
from fixtures import one_thread  # noqa: F401 (an autouse fixture)

from dsaml_utils.meta.batched import (
    meta_loss_batched,
    meta_optimizer,
    meta_step,
    per_task_modules,
    stack_batches,
    vmap_ready,
)
from dsaml_utils.meta.maml import (
    MetaConfig,
    inner_names,
    meta_loss_loop,
    personalize,
    trainable_params,
)
from dsaml_utils.metrics import dsaml_loss
from dsaml_utils.models.dsaml import DSAML, DSAMLConfig
from dsaml_utils.models.inference import predict_with
from dsaml_utils.models.registry import example_batch

K = 5  # input features per step



class MLP(nn.Module):
    """Two-layer per-step MLP: frames [B, T, K] -> pred [B, T, 2]."""

    inputs = ("frames",)

    def __init__(self):
        super().__init__()
        self.l1 = nn.Linear(K, 8)
        self.l2 = nn.Linear(8, 2)

    def forward(self, batch):
        return {"pred": self.l2(torch.tanh(self.l1(batch["frames"]))),
                "aux_loss": batch["frames"].new_zeros(())}


class Recurrent(nn.Module):
    """Linear -> BatchNorm -> bidirectional 2-layer LSTM -> LayerNorm -> Linear, plus an auxiliary loss."""

    inputs = ("frames",)

    def __init__(self):
        super().__init__()
        self.inp = nn.Linear(K, 6)
        self.bn = nn.BatchNorm1d(6)
        self.lstm = nn.LSTM(6, 4, num_layers=2, batch_first=True, bidirectional=True)
        self.ln = nn.LayerNorm(8)
        self.out = nn.Linear(8, 2)

    def forward(self, batch):
        x = self.inp(batch["frames"])
        x = self.bn(x.transpose(1, 2)).transpose(1, 2)
        h, _ = self.lstm(torch.relu(x))
        pred = self.out(self.ln(h))
        return {"pred": pred, "aux_loss": 0.1 * pred.pow(2).mean()}


def make_batch(g, songs, steps=7, pad_last=0):
    mask = torch.ones(songs, steps, dtype=torch.bool)
    if pad_last:
        mask[-1, steps - pad_last:] = False
    return {"frames": torch.randn(songs, steps, K, generator=g, dtype=torch.float64),
            "y": torch.rand(songs, steps, 2, generator=g, dtype=torch.float64) * 2 - 1,
            "mask": mask}


def make_tasks(n=3, seed=0, query=3):
    g = torch.Generator().manual_seed(seed)
    return [(make_batch(g, 1), make_batch(g, query, pad_last=2)) for _ in range(n)]


def grads_of(model):
    return {k: p.grad.detach().clone() for k, p in model.named_parameters()}


def meta_grad(model, tasks, cfg, batched):
    model.zero_grad(set_to_none=True)
    fn = meta_loss_batched if batched else meta_loss_loop
    fn(model, tasks, cfg).backward()
    return grads_of(model)


def hand_meta_grad(model, tasks, steps, lr, second_order, adapt=(0, 1, 2, 3)):
    """MAML written out: SGD unrolled on cloned weights of the MLP, plain autograd, no meta.py.

    adapt: indices into (l1.weight, l1.bias, l2.weight, l2.bias) of the weights the inner loop updates.
    """
    theta = [model.l1.weight, model.l1.bias, model.l2.weight, model.l2.bias]

    def f(w, batch):
        pred = torch.tanh(batch["frames"] @ w[0].T + w[1]) @ w[2].T + w[3]
        return dsaml_loss(pred, batch["y"], batch["mask"])

    total = 0.0
    for support, query in tasks:
        w = [t.clone() for t in theta]
        for _ in range(steps):
            g = torch.autograd.grad(f(w, support), [w[i] for i in adapt], create_graph=second_order)
            if not second_order:
                g = [x.detach() for x in g]
            for i, gi in zip(adapt, g):
                w[i] = w[i] - lr * gi
        total = total + f(w, query)
    grads = torch.autograd.grad(total / len(tasks), theta)
    return dict(zip(["l1.weight", "l1.bias", "l2.weight", "l2.bias"], grads))


def dsaml_tasks(model, n=2):
    """n float64 tasks for a small DSAML: 1 support and 2 query windows of 8 steps, random labels."""
    def batch(songs, seed):
        b = example_batch(model, steps=8, batch_size=songs, seed=seed)
        b = {k: v.double() if v.is_floating_point() else v for k, v in b.items()}
        b["y"] = torch.rand(songs, 8, 2, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
        return b

    return [(batch(1, 10 * i), batch(2, 10 * i + 1)) for i in range(n)]


def assert_close(a, b, atol=1e-6):
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=atol, rtol=0, msg=lambda m: f"{k}: {m}")


@pytest.mark.parametrize("steps", [1, 3])
@pytest.mark.parametrize("second_order", [False, True])
def test_meta_gradient_matches_hand_unrolled_maml(steps, second_order):
    torch.manual_seed(0)
    model = MLP().double()
    tasks = make_tasks()
    cfg = MetaConfig(inner_steps=steps, inner_lr=0.3, first_order=not second_order)
    want = hand_meta_grad(model, tasks, steps, 0.3, second_order)
    assert_close(meta_grad(model, tasks, cfg, batched=False), want)
    assert_close(meta_grad(model, tasks, cfg, batched=True), want)


@pytest.mark.parametrize("second_order", [False, True])
def test_inner_params_adapts_only_named_layers_and_meta_learns_all(second_order):
    """ANIL-style inner loop (meta.inner_params): the meta-gradient still matches the hand-unrolled one."""
    torch.manual_seed(0)
    model = MLP().double()
    tasks = make_tasks()
    cfg = MetaConfig(inner_steps=3, inner_lr=0.3, first_order=not second_order, inner_params=("l2",))
    want = hand_meta_grad(model, tasks, 3, 0.3, second_order, adapt=(2, 3))
    assert_close(meta_grad(model, tasks, cfg, batched=False), want)
    assert_close(meta_grad(model, tasks, cfg, batched=True), want)
    everything = hand_meta_grad(model, tasks, 3, 0.3, second_order)
    assert (want["l1.weight"] - everything["l1.weight"]).abs().max() > 1e-6  # the subset matters
    fast = personalize(model, tasks[0][0], cfg)
    assert torch.equal(fast["l1.weight"], model.l1.weight) and not torch.equal(fast["l2.weight"], model.l2.weight)


def test_inner_params_that_match_nothing_is_an_error():
    model = MLP().double()
    with pytest.raises(ValueError, match="matches no parameter"):
        personalize(model, make_tasks()[0][0], MetaConfig(inner_params=("head",)))
    assert inner_names({"l2.weight": 1, "l20.bias": 2}, ("l2",)) == ["l2.weight"]


def test_second_order_differs_from_first_order():
    torch.manual_seed(0)
    model = MLP().double()
    tasks = make_tasks()
    fo = meta_grad(model, tasks, MetaConfig(inner_steps=3, inner_lr=0.3, first_order=True), True)
    so = meta_grad(model, tasks, MetaConfig(inner_steps=3, inner_lr=0.3, first_order=False), True)
    assert max((fo[k] - so[k]).abs().max().item() for k in fo) > 1e-4


@pytest.mark.parametrize("first_order", [True, False])
def test_batched_equals_loop_with_lstm_batchnorm_and_aux_loss(first_order):
    torch.manual_seed(1)
    model = Recurrent().double()
    model.bn.running_mean.uniform_(-0.5, 0.5)
    tasks = make_tasks(n=3, seed=1)
    cfg = MetaConfig(inner_steps=2, inner_lr=0.2, first_order=first_order, task_chunk=2)
    twin = copy.deepcopy(model)
    assert_close(meta_grad(model, tasks, cfg, batched=True), meta_grad(twin, tasks, cfg, batched=False))
    # both update the running statistics to the same mean over tasks, and they did change
    torch.testing.assert_close(model.bn.running_mean, twin.bn.running_mean, atol=1e-9, rtol=0)
    torch.testing.assert_close(model.bn.running_var, twin.bn.running_var, atol=1e-9, rtol=0)
    assert not torch.allclose(model.bn.running_var, torch.ones(6, dtype=torch.float64))
    assert model.bn.num_batches_tracked.item() == cfg.inner_steps + 1


class ConvNet(nn.Module):
    """A conv block in a container, a bare conv in the root, and recurrent layers."""

    def __init__(self):
        super().__init__()
        self.block = nn.Sequential(nn.Conv1d(K, 4, 3, padding=1), nn.BatchNorm1d(4), nn.ReLU())
        self.conv = nn.Conv1d(4, 4, 1)
        self.gru = nn.GRU(4, 3, batch_first=True)
        self.lstm = nn.LSTM(3, 2, batch_first=True)

    def forward(self, batch):
        x = self.conv(self.block(batch["frames"].transpose(1, 2))).transpose(1, 2)
        return {"pred": self.lstm(self.gru(x)[0])[0], "aux_loss": x.new_zeros(())}


def test_per_task_modules_picks_recurrent_layers_and_conv_blocks():
    assert per_task_modules(ConvNet()) == ["block", "conv", "gru", "lstm"]
    assert per_task_modules(Recurrent()) == ["lstm"]
    assert per_task_modules(MLP()) == []


def test_vmap_ready_runs_per_task_modules_under_vmap():
    from torch.func import functional_call, vmap

    torch.manual_seed(2)
    model = ConvNet().double()
    g = torch.Generator().manual_seed(0)
    batches = [make_batch(g, 2) for _ in range(3)]
    # per-task parameters: every task has its own copy, perturbed
    params = {k: torch.stack([v.detach() + 0.1 * i for i in range(3)]) for k, v in model.named_parameters()}
    stats = {k: v.unsqueeze(0).repeat(3, *[1] * v.dim()) for k, v in model.named_buffers()}
    start = {k: v.clone() for k, v in stats.items()}
    stacked = stack_batches(batches)
    with vmap_ready(model):
        got = vmap(lambda p, s, b: functional_call(model, (p, s), (b,))["pred"])(params, stats, stacked)
        plain = model(batches[0])["pred"]  # outside vmap the patched modules behave as usual
    assert not any("forward" in vars(m) for m in model.modules())  # the patches are undone
    torch.testing.assert_close(plain, model(batches[0])["pred"])
    for i, b in enumerate(batches):
        own = ({k: v[i] for k, v in params.items()}, {k: v[i].clone() for k, v in start.items()})
        torch.testing.assert_close(got[i], functional_call(model, own, (b,))["pred"])
        for k in stats:  # each task's running statistics were updated in its own slot
            torch.testing.assert_close(stats[k][i], own[1][k])


def test_stack_batches_pads_time_and_rejects_mismatch():
    g = torch.Generator().manual_seed(0)
    a, b = make_batch(g, 2, steps=4), make_batch(g, 2, steps=6)
    s = stack_batches([a, b])
    assert s["frames"].shape == (2, 2, 6, K) and s["mask"].shape == (2, 2, 6)
    assert not s["mask"][0, :, 4:].any() and s["mask"][1].all()
    with pytest.raises(ValueError, match="different shapes"):
        stack_batches([a, make_batch(g, 3, steps=4)])
    with pytest.raises(ValueError):
        meta_loss_batched(MLP().double(), [])


def test_meta_step_personalize_and_predict():
    torch.manual_seed(3)
    model = MLP().double()
    tasks = make_tasks(n=2)
    cfg = MetaConfig(inner_steps=2, inner_lr=0.1)
    opt = meta_optimizer(model, lr=1e-2)
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    loss = meta_step(model, opt, tasks, cfg, batched=True)
    assert isinstance(loss, float) and loss == loss
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items())

    support, query = tasks[0]
    fast = personalize(model, support, MetaConfig(inner_steps=5, inner_lr=0.5))
    assert all(not v.requires_grad for v in fast.values())
    base = predict_with(model, trainable_params(model), support)["pred"]
    adapted = predict_with(model, fast, support)["pred"]
    # adapting on the support song lowers the loss on it
    y, m = support["y"], support["mask"]
    assert dsaml_loss(adapted, y, m) < dsaml_loss(base, y, m)
    assert predict_with(model, fast, query)["pred"].shape == query["y"].shape


@pytest.mark.parametrize("first_order", [True, False])
def test_batched_equals_loop_on_dsaml_quick(first_order):

    torch.manual_seed(5)
    # the quick preset, with smaller spectrogram slices and no dropout (loop and vmap draw masks differently)
    model = DSAML(DSAMLConfig.quick(dropout=0.0, global_dim=16, n_frames=11, n_mels=24)).double()
    tasks = dsaml_tasks(model)
    cfg = MetaConfig(inner_steps=2, inner_lr=0.05, first_order=first_order)
    twin = copy.deepcopy(model)
    got, want = meta_grad(model, tasks, cfg, batched=True), meta_grad(twin, tasks, cfg, batched=False)
    assert_close(got, want)
    assert max(v.abs().max().item() for v in want.values()) > 0
    for (name, a), b in zip(model.named_buffers(), twin.buffers()):
        torch.testing.assert_close(a, b, atol=1e-9, rtol=0, msg=name)


@pytest.mark.parametrize("n_tasks,chunk", [(1, None), (3, 2)])
def test_batched_first_order_never_changes_the_model_weights_in_place(n_tasks, chunk):
    # a vmap chunk of one task once adapted the model's own parameters in place (expand(1) keeps their strides)
    torch.manual_seed(6)
    model = DSAML(DSAMLConfig.quick(dropout=0.0, global_dim=16, n_frames=11, n_mels=24))
    before = {k: v.detach().clone() for k, v in model.named_parameters()}
    tasks = [(example_batch(model, steps=8, batch_size=1, seed=10 * i),
              example_batch(model, steps=8, batch_size=2, seed=10 * i + 1)) for i in range(n_tasks)]
    for s, q in tasks:
        for b in (s, q):
            b["y"] = torch.rand(b["mask"].shape[0], 8, 2)
    twin = copy.deepcopy(model)
    cfg = MetaConfig(inner_steps=2, inner_lr=0.05, task_chunk=chunk)
    got, want = meta_grad(model, tasks, cfg, batched=True), meta_grad(twin, tasks, cfg, batched=False)
    for k, p in model.named_parameters():
        torch.testing.assert_close(p.detach(), before[k], rtol=0, atol=0, msg=k)
    assert_close(got, want, atol=1e-5)


# ------------------------------------------------------------------ a front end kept at the meta-parameters

NOT_ADAPTER = ("fusion", "transformer", "predictor", "global_proj")


@pytest.mark.parametrize("first_order", [True, False])
def test_frozen_front_end_is_inner_params_without_it_with_the_support_features_once(first_order):
    """meta.adapt_front_end false: the meta-gradient is that of adapting every other parameter (the adapter's
    features of the support do not change over the inner steps), the loop and the batched path agree, and the
    adapter runs once per task on the support instead of at every inner step."""
    torch.manual_seed(7)
    model = DSAML(DSAMLConfig.quick(dropout=0.0, global_dim=16, n_frames=11, n_mels=24)).double()
    tasks = dsaml_tasks(model)
    base = dict(inner_steps=3, inner_lr=0.05, first_order=first_order)
    frozen = MetaConfig(**base, adapt_front_end=False)
    listed = MetaConfig(**base, inner_params=NOT_ADAPTER)
    twin, calls = copy.deepcopy(model), []
    twin.adapter.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
    batched = meta_grad(model, tasks, frozen, batched=True)
    loop = meta_grad(twin, tasks, frozen, batched=False)
    want = meta_grad(copy.deepcopy(model), tasks, listed, batched=False)
    assert_close(batched, loop)
    assert_close(loop, want)
    assert max(v.abs().max().item() for k, v in want.items() if k.startswith("adapter.")) > 0  # meta-learnt
    support, query = 8, 16  # slices per task: 1 support and 2 query windows of 8 steps
    assert sorted(calls) == sorted([support] * len(tasks) + [query] * len(tasks))


def test_frozen_front_end_personalizes_everything_but_the_adapter():
    torch.manual_seed(8)
    model = DSAML(DSAMLConfig.quick(dropout=0.0, global_dim=16, n_frames=11, n_mels=24))
    support, _ = dsaml_tasks(model.double(), n=1)[0]
    fast = personalize(model, support, MetaConfig(inner_steps=2, inner_lr=0.05, adapt_front_end=False))
    moved = {k for k, v in trainable_params(model).items() if not torch.equal(fast[k], v.detach())}
    assert moved and not any(k.startswith("adapter.") for k in moved)
    assert {k.split(".")[0] for k in moved} == {"global_proj", "fusion", "transformer", "predictor"}


def test_a_model_without_a_front_end_ignores_the_setting():
    torch.manual_seed(9)
    model = MLP().double()
    tasks = make_tasks()
    cfg = MetaConfig(inner_steps=2, inner_lr=0.1)
    assert_close(meta_grad(model, tasks, MetaConfig(inner_steps=2, inner_lr=0.1, adapt_front_end=False), True),
                 meta_grad(copy.deepcopy(model), tasks, cfg, True))


@pytest.mark.parametrize("name", ["crnn", "dnn", "mcrnn", "damff"])
def test_baselines_keep_their_slice_encoder_as_dsaml_its_adapter(name):
    """Every baseline names its per-slice encoder: its features, given as batch "local", give the same outputs,
    and with meta.adapt_front_end false the meta-gradient is that of adapting every other layer."""
    from dsaml_utils.models.registry import build_model
    torch.manual_seed(12)
    model = build_model(name, "quick", dropout=0.0).double()
    prefixes = model.front_end
    assert any(k.startswith(prefixes) for k, _ in model.named_parameters())

    def batch(songs, seed):
        b = {k: v.double() if v.is_floating_point() else v
             for k, v in example_batch(model, steps=6, batch_size=songs, seed=seed).items()}
        b["y"] = torch.rand(songs, 6, 2, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
        return b

    tasks = [(batch(1, 20 * i), batch(2, 20 * i + 1)) for i in range(2)]
    model.eval()
    plain = model(tasks[0][1])["pred"]
    local = model(tasks[0][1], local_only=True)["local"]
    torch.testing.assert_close(model(dict(tasks[0][1], local=local))["pred"], plain)
    model.train()
    others = tuple(sorted({k.split(".")[0] for k, _ in model.named_parameters()} - set(prefixes)))
    frozen = MetaConfig(inner_steps=2, inner_lr=0.05, adapt_front_end=False)
    listed = MetaConfig(inner_steps=2, inner_lr=0.05, inner_params=others)
    got = meta_grad(copy.deepcopy(model), tasks, frozen, batched=True)
    assert_close(got, meta_grad(copy.deepcopy(model), tasks, frozen, batched=False))
    assert_close(got, meta_grad(copy.deepcopy(model), tasks, listed, batched=False))
