"""MAML for personalization (PDMER), in plain torch with torch.func.

A task is one listener: ``(support_batch, query_batch)``, two batches in the shared model-input format
("mel", "global", "mask", "y" [B, T, 2], ...). The inner loop adapts a copy of the parameters to the
support batch by plain SGD; the meta-loss is the query loss at the adapted parameters, averaged over the
tasks of a meta-batch; the outer optimizer (Adam) steps on its gradient.

Two implementations give the same meta-gradient:
- `meta_loss_loop`: the reference, one task after the other, "clone and adapt" as learn2learn's MAML
  does (the adapted parameters are differentiable functions of the meta-parameters).
- `meta_loss_batched`: all tasks of a meta-batch at once with torch.func.vmap over tasks; the inner
  gradient is taken by torch.func.grad inside the vmapped function. nn.LSTM has no vmap batching rule,
  so inside the batched path every nn.LSTM / nn.GRU runs through `functional_rnn` (same maths,
plain ops).

First order (the authors' setting) treats the inner gradients as constants: the meta-gradient is the
query gradient at the adapted parameters. Second order differentiates through the inner loop
(create_graph); it runs attention with the MATH SDPA kernel (the fused CPU kernel has no double
backward) and with cuDNN off (cuDNN's LSTM has none either).

BatchNorm running statistics: in train mode every inner and query forward normalises with the batch's
own statistics, as usual. Each task updates its own copy of the running statistics (as a learn2learn
clone would, had its buffers been cloned); after the meta-batch the model's running statistics become
the mean over tasks of those copies. Both implementations do exactly this, so they also agree on the
buffers. (learn2learn itself shares the buffers, so there they drift through every task in turn.)
"""

from __future__ import annotations

import contextlib
import functools
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.func import functional_call, grad, vmap
from torch.nn.attention import SDPBackend, sdpa_kernel

from dsaml_utils.metrics import dsaml_loss

Batch = dict[str, torch.Tensor]
Task = tuple[Batch, Batch]
LossFn = Callable[[dict, Batch], torch.Tensor]  # (model output, batch) -> scalar loss

TIME_KEYS = ("mel", "wave", "frames", "mask", "y")
"""Batch keys with a time axis (dim 1); tasks of unequal length are padded along it when stacked."""


@dataclass
class MetaConfig:
    """MAML hyper-parameters (defaults: the authors' code and the paper)."""

    inner_lr: float = 5e-3  # SGD step size of the inner (adaptation) loop
    inner_steps: int = 16  # SGD steps on the support batch per task
    tasks_per_step: int = 16  # tasks (listeners) per meta-step
    first_order: bool = True  # authors: first-order MAML; False differentiates through the inner loop
    outer_lr: float = 5e-5  # Adam learning rate of the meta-update
    meta_steps: int = 2000  # meta-updates (paper: 2000 episodes)
    support_songs: int = 1  # songs a listener annotates for adaptation
    query_songs: int = 15  # songs per task on which the adapted model is scored
    task_chunk: int | None = None  # batched path: tasks per vmap chunk (None = all at once; less memory)


def default_loss(out: dict, batch: Batch) -> torch.Tensor:
    """The authors' loss: DSAML curve loss on out["pred"] vs batch["y"] plus the model's aux loss."""
    loss = dsaml_loss(out["pred"], batch["y"], batch.get("mask"))
    aux = out.get("aux_loss")
    return loss if aux is None else loss + aux


def trainable_params(model: nn.Module) -> dict[str, torch.Tensor]:
    """The parameters MAML adapts and meta-learns: every one that requires grad."""
    return {k: v for k, v in model.named_parameters() if v.requires_grad}


# --------------------------------------------------------------------------------------------------
# contexts


def _stat_buffer_names(model: nn.Module) -> list[str]:
    """Names of the BatchNorm running-statistic buffers that a train-mode forward updates in place."""
    names = []
    for prefix, mod in model.named_modules():
        if isinstance(mod, nn.modules.batchnorm._BatchNorm) and mod.training and mod.track_running_stats:
            for b in ("running_mean", "running_var", "num_batches_tracked"):
                if getattr(mod, b, None) is not None:
                    names.append(f"{prefix}.{b}" if prefix else b)
    return names


def _write_back_mean(model: nn.Module, per_task: dict[str, torch.Tensor]) -> None:
    """Set the model's running statistics to the mean over tasks (dim 0) of the per-task copies."""
    own = dict(model.named_buffers())
    with torch.no_grad():
        for k, v in per_task.items():
            own[k].copy_(v.mean(0) if v.is_floating_point() else v[0])


@contextlib.contextmanager
def _meta_context(second_order: bool) -> Iterator[None]:
    """MATH attention kernel and no cuDNN when differentiating twice; nothing otherwise."""
    if not second_order:
        yield
        return
    with sdpa_kernel(SDPBackend.MATH), torch.backends.cudnn.flags(enabled=False):
        yield


def _lstm_cell(gx: torch.Tensor, h: torch.Tensor, state: torch.Tensor, w_hh, b_hh):
    g = gx + F.linear(h, w_hh, b_hh)
    i, f, gg, o = g.chunk(4, dim=-1)  # PyTorch's gate order
    c = torch.sigmoid(f) * state + torch.sigmoid(i) * torch.tanh(gg)
    return torch.sigmoid(o) * torch.tanh(c), c


def _gru_cell(gx: torch.Tensor, h: torch.Tensor, state: torch.Tensor, w_hh, b_hh):
    xr, xz, xn = gx.chunk(3, dim=-1)  # PyTorch's gate order: reset, update, new
    hr, hz, hn = F.linear(h, w_hh, b_hh).chunk(3, dim=-1)
    r, z = torch.sigmoid(xr + hr), torch.sigmoid(xz + hz)
    h = (1 - z) * torch.tanh(xn + r * hn) + z * h
    return h, h


def functional_rnn(rnn: nn.LSTM | nn.GRU, x: torch.Tensor, hx=None):
    """nn.LSTM's / nn.GRU's forward written with plain tensor ops, so that vmap and double backward work."""
    if isinstance(x, nn.utils.rnn.PackedSequence):
        raise TypeError("functional_rnn does not take a PackedSequence; pass padded input and a mask")
    lstm = isinstance(rnn, nn.LSTM)
    if lstm and rnn.proj_size:
        raise NotImplementedError("functional_rnn does not support proj_size > 0")
    cell = _lstm_cell if lstm else _gru_cell
    unbatched = x.dim() == 2
    if unbatched:
        x = x.unsqueeze(0 if rnn.batch_first else 1)
    if not rnn.batch_first:
        x = x.transpose(0, 1)  # -> [B, T, F]
    n_dir = 2 if rnn.bidirectional else 1
    size = (rnn.num_layers * n_dir, x.shape[0], rnn.hidden_size)
    if hx is None:
        h0 = c0 = x.new_zeros(size)
    else:
        h0, c0 = hx if lstm else (hx, hx)
        if unbatched:
            h0, c0 = h0.unsqueeze(1), c0.unsqueeze(1)
    steps = x.shape[1]
    layer_in, h_last, c_last = x, [], []
    for layer in range(rnn.num_layers):
        outs = []
        for d in range(n_dir):
            sfx = f"_l{layer}" + ("_reverse" if d else "")
            w_ih, w_hh = getattr(rnn, "weight_ih" + sfx), getattr(rnn, "weight_hh" + sfx)
            b_ih = getattr(rnn, "bias_ih" + sfx) if rnn.bias else None
            b_hh = getattr(rnn, "bias_hh" + sfx) if rnn.bias else None
            gates_x = F.linear(layer_in, w_ih, b_ih)  # the input projection of every step at once
            h, state = h0[layer * n_dir + d], c0[layer * n_dir + d]
            seq: list[torch.Tensor] = [x] * steps  # placeholders, overwritten below
            for t in (range(steps - 1, -1, -1) if d else range(steps)):
                h, state = cell(gates_x[:, t], h, state, w_hh, b_hh)
                seq[t] = h
            outs.append(torch.stack(seq, dim=1))
            h_last.append(h)
            c_last.append(state)
        layer_in = torch.cat(outs, dim=-1) if n_dir == 2 else outs[0]
        if rnn.dropout and rnn.training and layer < rnn.num_layers - 1:
            layer_in = F.dropout(layer_in, rnn.dropout, training=True)
    y, h_n, c_n = layer_in, torch.stack(h_last), torch.stack(c_last)
    if not rnn.batch_first:
        y = y.transpose(0, 1)
    if unbatched:
        y, h_n, c_n = y.squeeze(0 if rnn.batch_first else 1), h_n.squeeze(1), c_n.squeeze(1)
    return (y, (h_n, c_n)) if lstm else (y, h_n)


def functional_batch_norm(bn: nn.modules.batchnorm._BatchNorm, x: torch.Tensor) -> torch.Tensor:
    """BatchNorm's forward (any dimension, train or eval) with plain tensor ops, same statistics updates."""
    shape = [1, -1] + [1] * (x.dim() - 2)
    dims = [0] + list(range(2, x.dim()))
    use_batch = bn.training or bn.running_mean is None
    if use_batch:
        mean = x.mean(dims)
        var = ((x - mean.view(shape)) ** 2).mean(dims)
        if bn.training and bn.track_running_stats and bn.running_mean is not None:
            with torch.no_grad():
                bn.num_batches_tracked.add_(1)
                m = 1.0 / bn.num_batches_tracked.to(x.dtype) if bn.momentum is None else bn.momentum
                n = x.numel() // x.shape[1]
                unbiased = var.detach() * (n / max(n - 1, 1))
                bn.running_mean.mul_(1 - m).add_(m * mean.detach())
                bn.running_var.mul_(1 - m).add_(m * unbiased)
    else:
        mean, var = bn.running_mean, bn.running_var
    y = (x - mean.view(shape)) * torch.rsqrt(var.view(shape) + bn.eps)
    if bn.affine:
        y = y * bn.weight.view(shape) + bn.bias.view(shape)
    return y


def functional_layer_norm(ln: nn.LayerNorm, x: torch.Tensor) -> torch.Tensor:
    """LayerNorm's forward with plain tensor ops."""
    dims = tuple(range(-len(ln.normalized_shape), 0))
    mean = x.mean(dims, keepdim=True)
    var = ((x - mean) ** 2).mean(dims, keepdim=True)
    y = (x - mean) * torch.rsqrt(var + ln.eps)
    if ln.weight is not None:
        y = y * ln.weight
    if ln.bias is not None:
        y = y + ln.bias
    return y


@contextlib.contextmanager
def vmap_ready(model: nn.Module, norms: bool = False) -> Iterator[nn.Module]:
    """Temporarily route every nn.LSTM/nn.GRU (with norms, BatchNorm/LayerNorm too) through plain-op versions.

    nn.LSTM and nn.GRU have no vmap batching rule. The fused batch_norm / layer_norm kernels do run under vmap,
    but their second-order gradients through vmap(grad(...)) come out wrong (measured with torch 2.13:
    off by ~1e-3 against the loop), so second-order MAML uses the plain-op norms.
    """
    swaps = {nn.LSTM: functional_rnn, nn.GRU: functional_rnn}
    if norms:
        swaps.update({nn.modules.batchnorm._BatchNorm: functional_batch_norm, nn.LayerNorm: functional_layer_norm})
    patched = []
    for m in model.modules():
        for cls, fn in swaps.items():
            if isinstance(m, cls):
                m.forward = functools.partial(fn, m)
                patched.append(m)
                break
    try:
        yield model
    finally:
        for m in patched:
            del m.forward


# --------------------------------------------------------------------------------------------------
# adaptation and the two meta-losses


def adapt(model: nn.Module, params: dict[str, torch.Tensor], buffers: dict[str, torch.Tensor],
          support_batch: Batch, loss_fn: LossFn = default_loss, steps: int = 16, lr: float = 5e-3,
          create_graph: bool = False) -> dict[str, torch.Tensor]:
    """`steps` SGD steps on the support batch from `params`; returns the adapted parameters.

    With create_graph the result is differentiable to second order in `params`; without it the inner
    gradients are constants (first order), but the result still depends on `params` (identity Jacobian).
    """
    names = list(params)
    for _ in range(steps):
        out = functional_call(model, (params, buffers), (support_batch,))
        loss = loss_fn(out, support_batch)
        grads = torch.autograd.grad(loss, [params[k] for k in names], create_graph=create_graph,
                                    allow_unused=True)
        params = {k: p if g is None else p - lr * g for (k, p), g in zip(params.items(), grads)}
    return params


def meta_loss_loop(model: nn.Module, tasks: Sequence[Task], cfg: MetaConfig = MetaConfig(),
                   loss_fn: LossFn = default_loss) -> torch.Tensor:
    """Mean query loss over tasks after adapting to each support batch, one task at a time."""
    if not tasks:
        raise ValueError("meta-batch has no tasks")
    params = trainable_params(model)
    buffers = dict(model.named_buffers())
    stat_names = _stat_buffer_names(model)
    losses, stats = [], []
    with _meta_context(not cfg.first_order):
        for support, query in tasks:
            # each task gets its own copy of the running statistics
            bufs = dict(buffers, **{k: buffers[k].clone() for k in stat_names})
            fast = adapt(model, params, bufs, support, loss_fn, cfg.inner_steps, cfg.inner_lr,
                         create_graph=not cfg.first_order)
            losses.append(loss_fn(functional_call(model, (fast, bufs), (query,)), query))
            stats.append({k: bufs[k] for k in stat_names})
    if stat_names:
        _write_back_mean(model, {k: torch.stack([s[k] for s in stats]) for k in stat_names})
    return torch.stack(losses).mean()


def _pad_time(x: torch.Tensor, length: int) -> torch.Tensor:
    if x.shape[1] == length:
        return x
    pad = x.new_zeros((x.shape[0], length - x.shape[1], *x.shape[2:]))
    return torch.cat([x, pad], dim=1)


def stack_batches(batches: Sequence[Batch]) -> Batch:
    """Stack same-shaped batches along a new leading task axis; time keys are padded to the longest.

    Padded steps get mask False. Non-tensor entries are dropped. (A model whose BatchNorm sees padded
    steps normalises over them too, so equal-length tasks are the exact case.)
    """
    keys = [k for k, v in batches[0].items() if torch.is_tensor(v)]
    for b in batches[1:]:
        if [k for k, v in b.items() if torch.is_tensor(v)] != keys:
            raise ValueError("tasks in a meta-batch must carry the same batch keys")
    length = max(b[k].shape[1] for b in batches for k in keys if k in TIME_KEYS)
    out = {}
    for k in keys:
        vals = [_pad_time(b[k], length) if k in TIME_KEYS else b[k] for b in batches]
        if len({tuple(v.shape) for v in vals}) != 1:
            raise ValueError(f"batch key {k!r} has different shapes across tasks: "
                             f"{sorted({tuple(v.shape) for v in vals})} (use the same songs per task)")
        out[k] = torch.stack(vals)
    return out


def meta_loss_batched(model: nn.Module, tasks: Sequence[Task], cfg: MetaConfig = MetaConfig(),
                      loss_fn: LossFn = default_loss) -> torch.Tensor:
    """Mean query loss over tasks, every task's inner loop and query run at once under vmap."""
    if not tasks:
        raise ValueError("meta-batch has no tasks")
    n = len(tasks)
    support = stack_batches([s for s, _ in tasks])
    query = stack_batches([q for _, q in tasks])
    params = trainable_params(model)
    stat_names = _stat_buffer_names(model)
    shared = {k: v for k, v in model.named_buffers() if k not in stat_names}
    stats = {k: v.unsqueeze(0).repeat(n, *[1] * v.dim()) for k, v in model.named_buffers() if k in stat_names}

    def call(p, st, batch):
        return functional_call(model, (p, shared, st), (batch,))

    def query_loss(p, st, qry):
        return loss_fn(call(p, st, qry), qry)

    def inner(p, st, sup):
        # The running statistics are an argument (grad refuses in-place updates of captured tensors);
        # the batch is captured, so the model sees it as a plain vmapped tensor, not a grad wrapper.
        def support_loss(q, st_):
            return loss_fn(call(q, st_, sup), sup)

        for _ in range(cfg.inner_steps):
            g = grad(support_loss)(p, st)
            p = {k: p[k] - cfg.inner_lr * g[k] for k in p}
        return p

    def task_loss(p, st, sup, qry):  # second order: one differentiable function of p
        return query_loss(inner(p, st, sup), st, qry)

    mapped = functools.partial(vmap, randomness="different", chunk_size=cfg.task_chunk)
    with vmap_ready(model, norms=not cfg.first_order), _meta_context(not cfg.first_order):
        if cfg.first_order:
            # The inner loop needs no outer graph: run it without one, then re-attach the adapted
            # parameters to the meta-parameters with an identity Jacobian (theta + constant).
            with torch.no_grad():
                adapted = mapped(inner, in_dims=(None, 0, 0))(params, stats, support)
            fast = {k: params[k] + (adapted[k] - params[k].detach()) for k in params}
            losses = mapped(query_loss, in_dims=(0, 0, 0))(fast, stats, query)
        else:
            losses = mapped(task_loss, in_dims=(None, 0, 0, 0))(params, stats, support, query)
    if stat_names:
        _write_back_mean(model, stats)
    return losses.mean()


def meta_step(model: nn.Module, optimizer: torch.optim.Optimizer, tasks: Sequence[Task],
              cfg: MetaConfig = MetaConfig(), batched: bool = True,
              loss_fn: LossFn = default_loss) -> float:
    """One outer update on a meta-batch of tasks; returns the meta-loss (mean query loss)."""
    optimizer.zero_grad(set_to_none=True)
    fn = meta_loss_batched if batched else meta_loss_loop
    loss = fn(model, tasks, cfg, loss_fn)
    loss.backward()
    optimizer.step()
    return float(loss.detach())


def meta_optimizer(model: nn.Module, cfg: MetaConfig = MetaConfig()) -> torch.optim.Optimizer:
    """The outer optimizer: Adam at cfg.outer_lr over the trainable parameters."""
    return torch.optim.Adam(trainable_params(model).values(), lr=cfg.outer_lr)


# --------------------------------------------------------------------------------------------------
# personalization of a trained model


def personalize(model: nn.Module, support_batch: Batch, cfg: MetaConfig = MetaConfig(),
                loss_fn: LossFn = default_loss) -> dict[str, torch.Tensor]:
    """Adapted parameters (detached) for one new listener from their annotated support songs."""
    params = {k: v.detach().requires_grad_(True) for k, v in trainable_params(model).items()}
    # copies, so that adapting in train mode leaves the model's running statistics alone
    buffers = {k: v.clone() for k, v in model.named_buffers()}
    fast = adapt(model, params, buffers, support_batch, loss_fn, cfg.inner_steps, cfg.inner_lr)
    return {k: v.detach() for k, v in fast.items()}


@torch.no_grad()
def predict_with(model: nn.Module, params: dict[str, torch.Tensor], batch: Batch) -> dict:
    """The model's output on a batch with the given (e.g. personalized) parameters."""
    return functional_call(model, params, (batch,))
