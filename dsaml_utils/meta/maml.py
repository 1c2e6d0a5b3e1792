"""MAML for personalization (PDMER), in plain torch with torch.func.

A task is one listener: ``(support_batch, query_batch)``, two batches in the shared model-input format
("mel", "global", "mask", "y" [B, T, 2], ...). The inner loop adapts a copy of the parameters to the
support batch by plain SGD; the meta-loss is the query loss at the adapted parameters, averaged over the
tasks of a meta-batch; the outer optimizer (Adam) steps on its gradient.

The reference meta-loss here runs the tasks one after the other; `dsaml_utils.meta.batched` runs them at once.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import torch
import torch.nn as nn
from torch.func import functional_call
from torch.nn.attention import SDPBackend, sdpa_kernel

from dsaml_utils.metrics import dsaml_loss
from dsaml_utils.models.calibration import compose, fit_affine

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
    support_songs: int = 1  # songs a listener annotates for adaptation
    query_songs: int = 15  # songs per task on which the adapted model is scored
    task_chunk: int | None = None  # batched path: tasks per vmap chunk (None = all at once; less memory)
    inner_params: tuple[str, ...] = ()  # name prefixes of the parameters the inner loop adapts; () = all of
    calibrate: float | None = None  # after the inner steps, fit the output affine (models.calibration) to the
    # support in closed form, with this ridge towards gain 1; None: no output affine (the paper)
    calibrate_dims: tuple[str, ...] = ()  # the dimensions ("arousal", "valence") the affine is fitted on; () = both
    adapt_front_end: bool = True  # the inner loop adapts the model's front end too (the paper: every parameter);
    # False: a model that names one (`front_end`: DSAML its adapter, the baselines their slice encoders) keeps it
    # at the meta-parameters, so its features of the support are computed once per task (batch key "local")
    # instead of at every inner step


def inner_names(params: dict[str, torch.Tensor], prefixes: Sequence[str] = ()) -> list[str]:
    """The names in `params` that the inner loop adapts: all, or those starting with one of `prefixes`."""
    if not prefixes:
        return list(params)
    names = [k for k in params if any(k == p or k.startswith(p.rstrip(".") + ".") for p in prefixes)]
    if not names:
        raise ValueError(f"meta.inner_params {tuple(prefixes)} matches no parameter (names look like "
                         f"{next(iter(params), '?')!r})")
    return names


def frozen_front_end(model: nn.Module, params: dict[str, torch.Tensor], cfg: MetaConfig) -> tuple[str, ...] | None:
    """The module names of the model's front end that the inner loop leaves alone (MetaConfig.adapt_front_end,
    a model's `front_end`: a name or a tuple of names), or None."""
    names = getattr(model, "front_end", None)
    names = (names,) if isinstance(names, str) else tuple(names or ())
    if cfg.adapt_front_end or not any(_under(k, names) for k in params):
        return None
    return names


def _under(name: str, prefixes: Sequence[str]) -> bool:
    return any(name.startswith(p + ".") for p in prefixes)


def adapted_names(params: dict[str, torch.Tensor], cfg: MetaConfig, frozen: Sequence[str] | None = None) -> list[str]:
    """`inner_names` of cfg.inner_params, less the frozen front end's parameters."""
    names = [k for k in inner_names(params, cfg.inner_params) if not (frozen and _under(k, frozen))]
    if not names:
        raise ValueError(f"meta.inner_params {tuple(cfg.inner_params)} leaves nothing to adapt once the front end "
                         f"{frozen!r} is kept (meta.adapt_front_end false)")
    return names


def with_local(model: nn.Module, state: tuple, batch: Batch) -> Batch:
    """batch plus key "local": the front end's features of it under `state` (parameters, buffers)."""
    return dict(batch, local=functional_call(model, state, (batch,), {"local_only": True})["local"])


def default_loss(out: dict, batch: Batch) -> torch.Tensor:
    """The authors' loss: DSAML curve loss on out["pred"] vs batch["y"] plus the model's aux loss."""
    loss = dsaml_loss(out["pred"], batch["y"], batch.get("mask"))
    aux = out.get("aux_loss")
    return loss if aux is None else loss + aux


def trainable_params(model: nn.Module) -> dict[str, torch.Tensor]:
    """The parameters MAML adapts and meta-learns: every one that requires grad."""
    return {k: v for k, v in model.named_parameters() if v.requires_grad}


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


def _write_back_chained(model: nn.Module, per_task: dict[str, torch.Tensor], forwards: int) -> None:
    """Set the model's running statistics to what one copy shared by the tasks in turn would hold, from
    per-task copies [n, ...] that each started at the model's values and saw `forwards` train-mode forwards.

    A forward maps r -> (1 - m) r + m s with batch statistics s that do not depend on r, so a task's copy is
    a r0 + c_t with a = (1 - m) ** forwards; the shared copy after the tasks in order is a^n r0 + sum_t
    a^(n - t) c_t (exact up to float rounding); counters add up."""
    own, modules = dict(model.named_buffers()), dict(model.named_modules())
    with torch.no_grad():
        for k, v in per_task.items():
            r0 = own[k].clone()
            if not v.is_floating_point():
                own[k].copy_(r0 + (v - r0).sum(0))
                continue
            momentum = modules[k.rpartition(".")[0]].momentum
            if momentum is None:
                raise ValueError(f"{k}: shared running statistics need a BatchNorm momentum (not None) on the "
                                 "batched path; use the task loop (train.batched_meta false)")
            a = (1.0 - momentum) ** forwards
            r = r0
            for t in range(v.shape[0]):
                r = a * r + (v[t] - a * r0)
            own[k].copy_(r)


@contextlib.contextmanager
def _meta_context(second_order: bool) -> Iterator[None]:
    """MATH attention kernel and no cuDNN when differentiating twice; nothing otherwise."""
    if not second_order:
        yield
        return
    with sdpa_kernel(SDPBackend.MATH), torch.backends.cudnn.flags(enabled=False):
        yield


def adapt(model: nn.Module, params: dict[str, torch.Tensor], buffers: dict[str, torch.Tensor],
          support_batch: Batch, loss_fn: LossFn = default_loss, steps: int = 16, lr: float = 5e-3,
          create_graph: bool = False, only: Sequence[str] = (), calibrate: float | None = None,
          calibrate_dims: Sequence[str] = (), adapt_front_end: bool = True) -> dict[str, torch.Tensor]:
    """`steps` SGD steps on the support batch from `params`; returns the adapted parameters.

    With create_graph the result is differentiable to second order in `params`; without it the inner
    gradients are constants (first order), but the result still depends on `params` (identity Jacobian).
    `only`: name prefixes of the parameters to adapt (MetaConfig.inner_params); the rest pass through.
    `calibrate`: then the output affine fitted to the support (`calibrate`, its ridge) on `calibrate_dims`.
    `adapt_front_end` False: the model's front end is not adapted, and its features of the support are
    computed once (MetaConfig.adapt_front_end).
    """
    cfg = MetaConfig(inner_params=tuple(only), adapt_front_end=adapt_front_end)
    frozen = frozen_front_end(model, params, cfg)
    names = adapted_names(params, cfg, frozen)
    if frozen:
        with torch.set_grad_enabled(create_graph and torch.is_grad_enabled()):
            support_batch = with_local(model, (params, buffers), support_batch)
    for _ in range(steps):
        out = functional_call(model, (params, buffers), (support_batch,))
        loss = loss_fn(out, support_batch)
        grads = torch.autograd.grad(loss, [params[k] for k in names], create_graph=create_graph,
                                    allow_unused=True)
        params = dict(params, **{k: params[k] - lr * g for k, g in zip(names, grads) if g is not None})
    if calibrate is not None:
        params = calibrated(model, params, buffers, support_batch, calibrate, create_graph, calibrate_dims)
    return params


def calibrated(model: nn.Module, params: dict[str, torch.Tensor], buffers: dict[str, torch.Tensor],
               support_batch: Batch, ridge: float, create_graph: bool = False, dims: Sequence[str] = ()
               ) -> dict[str, torch.Tensor]:
    """params with the output affine refitted in closed form to the support's labels (models.calibration).

    One more forward on the support, on copies of the buffers (the running statistics are left as the inner
    steps left them). First order (no create_graph): the fitted gain and shift are constants.
    """
    with torch.set_grad_enabled(create_graph and torch.is_grad_enabled()):
        pred = functional_call(model, (params, {k: v.clone() for k, v in buffers.items()}), (support_batch,))["pred"]
        a, b = fit_affine(pred, support_batch["y"], support_batch.get("mask"), ridge, dims)
    return compose(params, a, b)


def meta_loss_loop(model: nn.Module, tasks: Sequence[Task], cfg: MetaConfig = MetaConfig(),
                   loss_fn: LossFn = default_loss, share_stats: bool = False) -> torch.Tensor:
    """Mean query loss over tasks after adapting to each support batch, one task at a time.

    share_stats: every task updates the model's own running statistics in turn, as a learn2learn clone does
    (its `clone_module` clones only buffers that require grad); otherwise each task has a copy, averaged after."""
    if not tasks:
        raise ValueError("meta-batch has no tasks")
    params = trainable_params(model)
    buffers = dict(model.named_buffers())
    stat_names = _stat_buffer_names(model)
    losses, stats = [], []
    with _meta_context(not cfg.first_order):
        for support, query in tasks:
            # each task gets its own copy of the running statistics (share_stats: the model's own)
            bufs = buffers if share_stats else dict(buffers, **{k: buffers[k].clone() for k in stat_names})
            fast = adapt(model, params, bufs, support, loss_fn, cfg.inner_steps, cfg.inner_lr,
                         create_graph=not cfg.first_order, only=cfg.inner_params, calibrate=cfg.calibrate,
                         calibrate_dims=cfg.calibrate_dims, adapt_front_end=cfg.adapt_front_end)
            losses.append(loss_fn(functional_call(model, (fast, bufs), (query,)), query))
            stats.append({k: bufs[k] for k in stat_names})
    if stat_names and not share_stats:
        _write_back_mean(model, {k: torch.stack([s[k] for s in stats]) for k in stat_names})
    return torch.stack(losses).mean()


def personalize(model: nn.Module, support_batch: Batch, cfg: MetaConfig = MetaConfig(),
                loss_fn: LossFn = default_loss) -> dict[str, torch.Tensor]:
    """Adapted parameters (detached) for one new listener from their annotated support songs."""
    params = {k: v.detach().requires_grad_(True) for k, v in trainable_params(model).items()}
    # copies, so that adapting in train mode leaves the model's running statistics alone
    buffers = {k: v.clone() for k, v in model.named_buffers()}
    fast = adapt(model, params, buffers, support_batch, loss_fn, cfg.inner_steps, cfg.inner_lr,
                 only=cfg.inner_params, calibrate=cfg.calibrate, calibrate_dims=cfg.calibrate_dims,
                 adapt_front_end=cfg.adapt_front_end)
    return {k: v.detach() for k, v in fast.items()}
