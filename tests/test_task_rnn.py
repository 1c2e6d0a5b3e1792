"""meta.task_rnn: every task's recurrent layer in one loop equals calling the module once per task."""

import copy

import pytest
import torch
import torch.nn as nn
from torch.func import functional_call

from dsaml_utils.meta import task_rnn
from dsaml_utils.meta.batched import meta_loss_batched
from dsaml_utils.meta.maml import MetaConfig, meta_loss_loop


def per_task_weights(module: nn.Module, n: int, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {k: (v.detach().unsqueeze(0) + 0.3 * torch.randn(n, *v.shape, generator=g, dtype=v.dtype)).requires_grad_()
            for k, v in module.named_parameters()}


@pytest.mark.parametrize("cell", [nn.GRU, nn.LSTM])
def test_run_equals_the_module_called_per_task_to_second_order(cell):
    torch.manual_seed(0)
    module = cell(5, 4, batch_first=True).double()
    n = 3
    w = per_task_weights(module, n, seed=1)
    x = torch.randn(n, 2, 7, 5, dtype=torch.float64, requires_grad=True)
    got = task_rnn.run(module, w, x)
    want = [functional_call(module, {k: v[i] for k, v in w.items()}, (x[i],)) for i in range(n)]
    torch.testing.assert_close(got[0], torch.stack([o[0] for o in want]))
    if cell is nn.LSTM:
        torch.testing.assert_close(got[1][0], torch.stack([o[1][0] for o in want]))
        torch.testing.assert_close(got[1][1], torch.stack([o[1][1] for o in want]))
    else:
        torch.testing.assert_close(got[1], torch.stack([o[1] for o in want]))

    # first and second derivatives (a MAML inner step differentiated again) agree too
    def twice(out):
        loss = (out ** 2).sum()
        g = torch.autograd.grad(loss, [w["weight_hh_l0"], x], create_graph=True)
        return torch.autograd.grad(sum((t ** 2).sum() for t in g), [w["weight_ih_l0"], w["bias_hh_l0"], x])

    mine, ref = twice(got[0]), twice(torch.stack([o[0] for o in want]))
    for a, b in zip(mine, ref):
        torch.testing.assert_close(a, b)
        assert b.abs().max() > 0


def test_supported_takes_plain_grus_and_second_order_lstms_only():
    assert task_rnn.supported(nn.GRU(3, 2, batch_first=True), 1)
    assert not task_rnn.supported(nn.LSTM(3, 2, batch_first=True), 1)  # the fused kernel per task is faster
    assert task_rnn.supported(nn.LSTM(3, 2, batch_first=True), 1, second_order=True)
    for other in (nn.GRU(3, 2), nn.GRU(3, 2, batch_first=True, bidirectional=True),
                  nn.GRU(3, 2, num_layers=2, batch_first=True), nn.GRU(3, 2, bias=False, batch_first=True),
                  nn.LSTM(3, 4, proj_size=2, batch_first=True), nn.RNN(3, 2, batch_first=True)):
        assert not task_rnn.supported(other, 1, second_order=True)
    assert not task_rnn.supported(nn.GRU(3, 2, batch_first=True), 2)  # called with an initial state


@pytest.mark.parametrize("first_order", [True, False])
def test_the_batched_meta_step_runs_grus_in_one_loop_and_equals_the_task_loop(first_order, monkeypatch):
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.gru = nn.GRU(3, 4, batch_first=True)
            self.lstm = nn.LSTM(4, 2, batch_first=True)

        def forward(self, batch):
            return {"pred": self.lstm(self.gru(batch["x"])[0])[0], "aux_loss": batch["x"].new_zeros(())}

    def loss(out, batch):
        return ((out["pred"] - batch["y"]) ** 2).mean()

    calls = []
    real = task_rnn.run
    monkeypatch.setattr(task_rnn, "run", lambda m, w, x: calls.append(type(m)) or real(m, w, x))
    torch.manual_seed(3)
    model = Net().double()
    g = torch.Generator().manual_seed(4)

    def batch():
        return {"x": torch.randn(2, 5, 3, generator=g, dtype=torch.float64),
                "y": torch.randn(2, 5, 2, generator=g, dtype=torch.float64)}

    tasks = [(batch(), batch()) for _ in range(3)]
    cfg = MetaConfig(inner_steps=2, inner_lr=0.3, first_order=first_order)
    twin = copy.deepcopy(model)
    grads = []
    for m, fn in ((model, meta_loss_batched), (twin, meta_loss_loop)):
        fn(m, tasks, cfg, loss).backward()
        grads.append({k: p.grad for k, p in m.named_parameters()})
    for k in grads[0]:
        torch.testing.assert_close(grads[0][k], grads[1][k])
    # the GRU always, the LSTM only when differentiating twice
    assert set(calls) == ({nn.GRU} if first_order else {nn.GRU, nn.LSTM})
