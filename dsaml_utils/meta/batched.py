"""The batched meta-step: every task of a meta-batch adapted at once under torch.func.vmap.

Two implementations give the same meta-gradient:
- `meta_loss_loop`: the reference, one task after the other, "clone and adapt" as learn2learn's MAML
  does (the adapted parameters are differentiable functions of the meta-parameters).
- `meta_loss_batched`: the tasks of a meta-batch at once. The model's forward runs under
  torch.func.vmap over a task axis, with parameters [n, ...] (one copy per task), and plain autograd
  differentiates through it: the gradient of the summed task losses with respect to the per-task
  parameters is each task's own gradient. Linear layers and attention then run as batched matmuls over
  all tasks; recurrent layers (no vmap batching rule) and convolution blocks (which vmap would turn into
  slow grouped convolutions) are called once per task inside the vmap (`per_task_modules`), except GRUs
  and (second order) LSTMs, whose recurrence then runs once for all tasks (`meta.task_rnn`).
  (torch.func.grad inside vmap, the textbook alternative, gave wrong second-order gradients through the
  fused BatchNorm / LayerNorm kernels with torch 2.13: off by ~1e-3 against the loop; plain autograd
  through vmap has no such problem.)

First order (the authors' setting) treats the inner gradients as constants: the meta-gradient is the
query gradient at the adapted parameters. Second order differentiates through the inner loop
(create_graph); it runs attention with the MATH SDPA kernel (the fused CPU kernel has no double
backward) and with cuDNN off (cuDNN's LSTM has none either).

BatchNorm running statistics: in train mode every inner and query forward normalises with the batch's
own statistics, as usual. Each task updates its own copy of the running statistics (as a learn2learn
clone would, had its buffers been cloned); after the meta-batch the model's running statistics become
the mean over tasks of those copies. Both implementations do exactly this, so they also agree on the
buffers. (learn2learn itself shares the buffers, so there they drift through every task in turn: that is
`share_stats`, the authors' protocol; the batched path then chains the per-task copies, `_write_back_chained`.)
"""

from __future__ import annotations

import contextlib
import functools
from typing import Callable, Iterator, Sequence

import torch
import torch.nn as nn
from torch.func import functional_call, vmap
from torch.utils._pytree import tree_flatten, tree_unflatten

from dsaml_utils.meta import task_rnn
from dsaml_utils.meta.maml import (
    TIME_KEYS,
    Batch,
    LossFn,
    MetaConfig,
    Task,
    _meta_context,
    _stat_buffer_names,
    _write_back_chained,
    _write_back_mean,
    adapted_names,
    default_loss,
    frozen_front_end,
    meta_loss_loop,
    trainable_params,
)
from dsaml_utils.models.calibration import compose, fit_affine

_CONTAINERS = (nn.Sequential, nn.ModuleList, nn.ModuleDict)


def per_task_modules(model: nn.Module) -> list[str]:
    """Names of the submodules that the batched path runs once per task instead of vmapping them.

    Recurrent layers (no vmap batching rule; their fused kernels beat a step-by-step vmap) and convolution
    blocks: for each convolution, its nearest enclosing module that is not a plain container (vmap turns a
    per-task convolution into a slow grouped one and shuffles BatchNorm layouts; per task, each runs its
    own kernels on an already large batch of slices); a convolution that sits (maybe in containers)
    directly in the model is taken with its outermost container. Only the outermost of nested choices is kept.
    """
    modules = dict(model.named_modules())
    picked = set()
    for name, mod in modules.items():
        if isinstance(mod, nn.RNNBase):
            picked.add(name)
        elif isinstance(mod, nn.modules.conv._ConvNd):
            # climb out of containers, but never up to the whole model
            while "." in name and isinstance(modules[name], (nn.modules.conv._ConvNd, *_CONTAINERS)):
                name = name.rpartition(".")[0]
            picked.add(name)
    return sorted(n for n in picked if not any(n.startswith(q + ".") for q in picked))


class _PerTask(torch.autograd.Function):
    """Calls a module once per task under vmap; plain autograd records each call's own kernels."""

    @staticmethod
    def forward(module, names, n_tensors, second_order, *args):
        raise RuntimeError("per-task modules run only under torch.func.vmap")

    @staticmethod
    def setup_context(ctx, inputs, output):
        pass

    @staticmethod
    def backward(ctx, *grads):
        raise RuntimeError("per-task modules are differentiated by plain autograd, outside vmap")

    @staticmethod
    def vmap(info, in_dims, module, names, n_tensors, second_order, *args):
        dims = in_dims[4:]
        if task_rnn.supported(module, len(args) - n_tensors, second_order):  # every task in one recurrence
            n = info.batch_size
            own = [a.unsqueeze(0).expand(n, *a.shape) if d is None else a.movedim(d, 0) for a, d in zip(args, dims)]
            out = task_rnn.run(module, dict(zip(names, own[:n_tensors])), own[n_tensors])
            leaves, spec = tree_flatten(out)
            return out, tree_unflatten([0] * len(leaves), spec)
        outs = []
        for i in range(info.batch_size):
            own = [a if d is None else a.select(d, i) for a, d in zip(args, dims)]
            state, inputs = dict(zip(names, own[:n_tensors])), tuple(own[n_tensors:])
            if _plain_lstm(module, inputs):
                outs.append(_lstm_call(module, state, inputs[0]))
                continue
            with _unpatched(module):
                outs.append(functional_call(module, state, inputs))
        leaves, spec = tree_flatten(outs[0])
        columns = zip(*(tree_flatten(o)[0] for o in outs))
        stacked = [torch.stack(c) if torch.is_tensor(c[0]) else c[0] for c in columns]
        dims = [0 if torch.is_tensor(x) else None for x in leaves]
        return tree_unflatten(stacked, spec), tree_unflatten(dims, spec)


def _plain_lstm(module: nn.Module, inputs: tuple) -> bool:
    """An nn.LSTM called on a batched [B, T, E] input alone, without projections: `_lstm_call` runs it."""
    return (type(module) is nn.LSTM and len(inputs) == 1 and module.batch_first and not module.proj_size
            and inputs[0].dim() == 3)


def _lstm_call(module: nn.LSTM, state: dict, x: torch.Tensor):
    """What module(x) returns, with the weights in `state`: torch.lstm directly, without reparametrizing the module
    (functional_call swaps every tensor in and out, which costs more than these small LSTMs' kernels)."""
    layers = module.num_layers * (2 if module.bidirectional else 1)
    h0 = x.new_zeros(layers, x.shape[0], module.hidden_size)
    weights = [state[n] for n in module._flat_weights_names]
    out, h, c = torch.lstm(x, (h0, h0), weights, module.bias, module.num_layers, float(module.dropout),
                           module.training, module.bidirectional, True)
    return out, (h, c)


@contextlib.contextmanager
def _unpatched(module: nn.Module) -> Iterator[None]:
    patched = module.__dict__.pop("forward")
    try:
        yield
    finally:
        module.forward = patched


def _per_task_forward(module: nn.Module, second_order: bool, *args, **kwargs):
    if kwargs:
        raise TypeError(f"{type(module).__name__} is run per task in the batched meta-step: pass its inputs "
                        f"positionally, not as {sorted(kwargs)}")
    state = [*module.named_parameters(), *module.named_buffers()]
    tensors = [a for a in [*args, *dict(state).values()] if torch.is_tensor(a)]
    if not any(torch._C._functorch.is_batchedtensor(t) for t in tensors):
        with _unpatched(module):  # not under vmap over tasks: an ordinary call
            return module(*args)
    return _PerTask.apply(module, [k for k, _ in state], len(state), second_order, *[v for _, v in state], *args)


@contextlib.contextmanager
def vmap_ready(model: nn.Module, second_order: bool = False) -> Iterator[nn.Module]:
    """Make the model's forward work under torch.func.vmap over tasks, differentiated by plain autograd.

    Each module of `per_task_modules` is called once per task (see there) while the rest of the model
    runs batched; nn.LSTM / nn.GRU have no batching rule, so this is also what makes them run at all.
    Supports vmap with plain autograd outside it (not torch.func.grad inside vmap). Recurrent layers that
    `task_rnn` supports run for all tasks at once instead (LSTMs only with `second_order`, see there).
    """
    names = set(per_task_modules(model))
    patched = [m for name, m in model.named_modules() if name in names]
    for m in patched:
        m.forward = functools.partial(_per_task_forward, m, second_order)
    try:
        yield model
    finally:
        for m in patched:
            del m.forward


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


class _Attach(torch.autograd.Function):
    """Per-task values [n, ...] (no graph) re-attached to a meta-parameter with an identity Jacobian."""

    @staticmethod
    def forward(ctx, fast: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
        return fast.view_as(fast)

    @staticmethod
    def backward(ctx, g: torch.Tensor):
        return None, _sum_tasks(g)


def _sum_tasks(g: torch.Tensor) -> torch.Tensor:
    """g.sum(0), reduced in g's memory order (a transposed weight gradient is slow to sum otherwise)."""
    order = sorted(range(1, g.dim()), key=lambda d: -g.stride(d))
    inverse = [order.index(d) for d in range(1, g.dim())]
    return g.permute(0, *order).sum(0).permute(*inverse)


def _copies_like(theta: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """g.shape[0] copies of theta in g's memory layout, built with streaming copies."""
    order = sorted(range(1, g.dim()), key=lambda d: -g.stride(d))
    inverse = [0] + [order.index(d) + 1 for d in range(1, g.dim())]
    one = theta.permute(*[d - 1 for d in order]).contiguous()
    out = one.unsqueeze(0).repeat(g.shape[0], *[1] * one.dim()).permute(*inverse)
    return out if out.stride() == g.stride() else torch.empty_like(g).copy_(out)


def _task_losses(model: nn.Module, loss_fn: LossFn, shared: dict) -> Callable:
    """vmap over tasks of (params, running stats, batch) -> loss; every argument has a leading task axis."""
    def one(p, st, batch):
        return loss_fn(functional_call(model, (p, shared, st), (batch,)), batch)

    return vmap(one, in_dims=(0, 0, 0), randomness="different")


def _adapt_batched(losses: Callable, params: dict[str, torch.Tensor], stats: dict, support: Batch, n: int,
                   cfg: MetaConfig, frozen: Sequence[str] | None = None) -> dict[str, torch.Tensor]:
    """Adapted parameters [n, ...] of n tasks, differentiable in `params` (to second order if asked)."""
    names = adapted_names(params, cfg, frozen)
    if not cfg.first_order:
        fast = {k: v.unsqueeze(0).expand(n, *v.shape) for k, v in params.items()}
        for _ in range(cfg.inner_steps):
            grads = torch.autograd.grad(losses(fast, stats, support).sum(), [fast[k] for k in names],
                                        create_graph=True, allow_unused=True)
            fast = dict(fast, **{k: torch.add(fast[k], g, alpha=-cfg.inner_lr)
                                 for k, g in zip(names, grads) if g is not None})
        return fast
    # First order: the inner loop runs without an outer graph, updating one buffer per parameter in
    # place (laid out like its gradient, so the update streams through memory); the result is then
    # re-attached to the meta-parameters with an identity Jacobian.
    fast = {k: v.detach().unsqueeze(0).expand(n, *v.shape) for k, v in params.items()}
    for _ in range(cfg.inner_steps):
        leaves = {k: v.requires_grad_(True) if v.is_leaf and k in names else v for k, v in fast.items()}
        grads = torch.autograd.grad(losses(leaves, stats, support).sum(), [leaves[k] for k in names],
                                    allow_unused=True)
        with torch.no_grad():
            for k, g in zip(names, grads):
                if g is None:
                    continue
                if fast[k].stride() != g.stride() or fast[k].data_ptr() == params[k].data_ptr():
                    # first step (expanded, or with one task the parameter itself) or a layout change
                    fast[k] = _copies_like(params[k].detach(), g)
                fast[k].add_(g, alpha=-cfg.inner_lr)
    return {k: _Attach.apply(fast[k].detach(), params[k]) for k in params}


def _with_local_batched(model: nn.Module, shared: dict, params: dict, stats: dict, support: Batch,
                        cfg: MetaConfig) -> Batch:
    """`meta.maml.with_local` for every task at once: the meta-parameters' front end on each task's support."""
    def local(st, batch):
        return functional_call(model, (params, shared, st), (batch,), {"local_only": True})["local"]

    with torch.set_grad_enabled(not cfg.first_order):
        return dict(support, local=vmap(local, in_dims=(0, 0), randomness="different")(stats, support))


def _calibrated_batched(model: nn.Module, shared: dict, fast: dict, stats: dict, support: Batch,
                        cfg: MetaConfig) -> dict[str, torch.Tensor]:
    """`meta.maml.calibrated` for every task at once: the output affine [n, 2] fitted to each support."""
    def pred(p, st, batch):
        return functional_call(model, (p, shared, st), (batch,))["pred"]

    with torch.set_grad_enabled(not cfg.first_order):
        copies = {k: v.clone() for k, v in stats.items()}  # the running statistics stay as the inner steps left them
        p = vmap(pred, in_dims=(0, 0, 0), randomness="different")(fast, copies, support)
        a, b = fit_affine(p, support["y"], support.get("mask"), cfg.calibrate, cfg.calibrate_dims)
    return compose(fast, a, b)


def meta_loss_batched(model: nn.Module, tasks: Sequence[Task], cfg: MetaConfig = MetaConfig(),
                      loss_fn: LossFn = default_loss, share_stats: bool = False) -> torch.Tensor:
    """Mean query loss over tasks, with every task of a chunk adapted at once under vmap.

    The model's forward runs under torch.func.vmap over a task axis (parameters [n, ...] per task), and
    plain autograd differentiates through it: the gradient of the sum of the task losses with respect to
    the per-task parameters is every task's own gradient. share_stats: the running statistics end as one copy
    shared by the tasks in turn would (learn2learn), else as the mean of the per-task copies.
    """
    if not tasks:
        raise ValueError("meta-batch has no tasks")
    params = trainable_params(model)
    stat_names = _stat_buffer_names(model)
    shared = {k: v for k, v in model.named_buffers() if k not in stat_names}
    stats = {k: v.unsqueeze(0).repeat(len(tasks), *[1] * v.dim()) for k, v in model.named_buffers()
             if k in stat_names}
    losses = _task_losses(model, loss_fn, shared)
    frozen = frozen_front_end(model, params, cfg)
    chunk = cfg.task_chunk or len(tasks)
    out = []
    with vmap_ready(model, not cfg.first_order), _meta_context(not cfg.first_order):
        for i in range(0, len(tasks), chunk):
            part = tasks[i:i + chunk]
            support = stack_batches([s for s, _ in part])
            query = stack_batches([q for _, q in part])
            st = {k: v[i:i + chunk] for k, v in stats.items()}  # views: updates land in `stats`
            if frozen:  # the front end's features of each support, once (per task: its own batch statistics)
                support = _with_local_batched(model, shared, params, st, support, cfg)
            fast = _adapt_batched(losses, params, st, support, len(part), cfg, frozen)
            if cfg.calibrate is not None:
                fast = _calibrated_batched(model, shared, fast, st, support, cfg)
            out.append(losses(fast, st, query))
    if stat_names and share_stats:
        # train-mode forwards of the front end per task: the support's (each inner step, or once), then the query's
        _write_back_chained(model, stats, (1 if frozen else cfg.inner_steps) + 1)
    elif stat_names:
        _write_back_mean(model, stats)
    return torch.cat(out).mean()


def meta_step(model: nn.Module, optimizer: torch.optim.Optimizer, tasks: Sequence[Task],
              cfg: MetaConfig = MetaConfig(), batched: bool = True,
              loss_fn: LossFn = default_loss, share_stats: bool = False) -> float:
    """One outer update on a meta-batch of tasks; returns the meta-loss (mean query loss)."""
    optimizer.zero_grad(set_to_none=True)
    fn = meta_loss_batched if batched else meta_loss_loop
    loss = fn(model, tasks, cfg, loss_fn, share_stats=share_stats)
    loss.backward()
    optimizer.step()
    return float(loss.detach())


def meta_optimizer(model: nn.Module, lr: float = 5e-5) -> torch.optim.Optimizer:
    """The outer optimizer: Adam at `lr` (a run's train.lr; paper 5e-5) over the trainable parameters."""
    return torch.optim.Adam(trainable_params(model).values(), lr=lr)
