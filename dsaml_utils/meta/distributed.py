"""Meta-training scaled out over processes with torch.distributed: each rank adapts a shard of the meta-batch.

Launch with torchrun: one process per GPU (backend nccl, device cuda:LOCAL_RANK), or several CPU processes
(backend gloo). Every rank builds the whole meta-batch (task sampling is seeded by (seed, step), so all ranks
draw the same tasks) and computes the meta-loss of its own shard only (`shard`: contiguous blocks whose sizes
differ by at most one), with the batched (vmap) or the loop path of `dsaml_utils.meta.batched`.

Why the sum over ranks is the one-process result. One process minimises L = (1/N) sum_i l_i over the N tasks.
Rank r, holding n_r tasks, backpropagates (n_r / N) * (mean of its shard's l_i) = (1/N) sum over its shard,
so the SUM all-reduce of the gradients is dL/dtheta exactly (up to float rounding); the loss is all-reduced
the same way. BatchNorm running statistics: after its shard, a rank's buffers hold the mean over its tasks of
the per-task copies (as in `meta.batched`); weighted by n_r / N and summed over ranks they become the mean over
all N tasks, as in one process (the integer batch counters, equal on every rank that computed a task, take
the MAX). Then every rank takes the same optimizer step on the same gradients from the same state, so the
weights stay identical on every rank without being broadcast. A rank with no task (N < world size)
contributes zeros and still takes part in every collective.

Exactness needs a forward without randomness (model dropout 0). With dropout, rank 0 draws its masks from
the step's random stream as one process would, the other ranks from streams of their own (the step's seed
offset by the rank, so no two ranks repeat each other's masks): same distribution, not the same numbers.

Not initialised, or world size 1: `meta_step` is `dsaml_utils.meta.batched.meta_step` itself.
"""

from __future__ import annotations

import contextlib
import os
from typing import Any, Iterator, Sequence, TypeVar

import torch
import torch.distributed as dist
import torch.nn as nn

from dsaml_utils.meta import batched as meta_batched
from dsaml_utils.meta.maml import (
    LossFn,
    MetaConfig,
    Task,
    _stat_buffer_names,
    default_loss,
    meta_loss_loop,
    trainable_params,
)

T = TypeVar("T")

_STREAM_STRIDE = 0x9E3779B97F4A7C15
"""Seed offset per rank for the random streams of ranks > 0 (an odd 64-bit constant)."""


# ---- the process group


def env_ranks() -> tuple[int, int, int]:
    """(RANK, WORLD_SIZE, LOCAL_RANK) from torchrun's environment; (0, 1, 0) outside torchrun."""
    return (int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1")),
            int(os.environ.get("LOCAL_RANK", "0")))


def init_from_env(device: str = "auto") -> bool:
    """Join torchrun's process group when WORLD_SIZE > 1: nccl on cuda:LOCAL_RANK, gloo on CPU; True if joined.

    `device` is a run's train.device ("auto", "cpu", "cuda"): auto means CUDA when available.
    """
    rank, world, local = env_ranks()
    if world <= 1 or dist.is_initialized():
        return False
    if device.startswith("cuda") or (device == "auto" and torch.cuda.is_available()):
        torch.cuda.set_device(local)
        dist.init_process_group("nccl", rank=rank, world_size=world, device_id=torch.device("cuda", local))
    else:
        dist.init_process_group("gloo", rank=rank, world_size=world)
    return True


def destroy() -> None:
    """Leave the process group (nothing when none is initialised)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def world_size() -> int:
    """Processes in the initialised process group; 1 when none is."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    """This process's rank in the initialised process group; 0 when none is."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def local_device(device: torch.device) -> torch.device:
    """This rank's device: cuda:LOCAL_RANK for a CUDA run in a process group, else `device` unchanged."""
    if device.type != "cuda" or world_size() <= 1:
        return device
    return torch.device("cuda", env_ranks()[2])


def broadcast_object(obj: T) -> T:
    """Rank 0's `obj` on every rank (picklable); `obj` itself without a process group."""
    if world_size() <= 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


# ---- sharding and reductions


def shard(tasks: Sequence[T], rank: int, world: int) -> list[T]:
    """The tasks rank `rank` of `world` computes: a contiguous block; the first len % world ranks get one more."""
    if not 0 <= rank < world:
        raise ValueError(f"rank {rank} is not in a world of {world}")
    size, extra = divmod(len(tasks), world)
    start = rank * size + min(rank, extra)
    return list(tasks[start:start + size + (rank < extra)])


def _all_reduce_flat(tensors: Sequence[torch.Tensor], op: Any = dist.ReduceOp.SUM) -> None:
    """All-reduce the tensors in place: one flat buffer and one collective per dtype."""
    groups: dict[torch.dtype, list[torch.Tensor]] = {}
    for t in tensors:
        groups.setdefault(t.dtype, []).append(t)
    for group in groups.values():
        flat = torch.cat([t.reshape(-1) for t in group])
        dist.all_reduce(flat, op=op)
        for t, v in zip(group, flat.split([t.numel() for t in group])):
            t.copy_(v.view(t.shape))


def _all_reduce_grads(params: Sequence[torch.Tensor]) -> None:
    """Sum the gradients over ranks; a missing one counts as zeros and stays None only if missing everywhere."""
    device = params[0].device
    present = torch.tensor([p.grad is not None for p in params], dtype=torch.int32, device=device)
    dist.all_reduce(present, op=dist.ReduceOp.MAX)
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    _all_reduce_flat(grads)
    for p, g, keep in zip(params, grads, present.tolist()):
        p.grad = g if keep else None


@torch.no_grad()
def _all_reduce_stats(model: nn.Module, names: Sequence[str], weight: float) -> None:
    """BatchNorm running statistics: weighted sum over ranks (float buffers), MAX (integer counters)."""
    own = dict(model.named_buffers())
    floats = [own[k] for k in names if own[k].is_floating_point()]
    for b in floats:
        b.mul_(weight)
    _all_reduce_flat(floats)
    _all_reduce_flat([own[k] for k in names if not own[k].is_floating_point()], dist.ReduceOp.MAX)


@contextlib.contextmanager
def _own_stream(rank: int, device: torch.device) -> Iterator[None]:
    """Random draws (dropout) of a rank > 0 from a stream of its own; the caller's RNG state is restored after."""
    if rank == 0:
        yield
        return
    cuda = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda):
        seed = (torch.initial_seed() + rank * _STREAM_STRIDE) % 2**63
        torch.default_generator.manual_seed(seed)
        if cuda:
            torch.cuda.manual_seed(seed)
        yield


# ---- the distributed meta-step


def meta_backward(model: nn.Module, tasks: Sequence[Task], cfg: MetaConfig = MetaConfig(), batched: bool = True,
                  loss_fn: LossFn = default_loss) -> float:
    """The whole meta-batch's meta-gradient in .grad on every rank (zero the grads first); returns the meta-loss.

    Also sets the BatchNorm running statistics to the mean over all tasks (see the module docstring).
    """
    if not tasks:
        raise ValueError("meta-batch has no tasks")
    me, world = rank(), world_size()
    own = shard(tasks, me, world)
    weight = len(own) / len(tasks)
    params = list(trainable_params(model).values())
    stat_names = _stat_buffer_names(model)  # before the forward: the train-mode BatchNorm buffers
    loss = torch.zeros((), dtype=torch.float64, device=params[0].device)
    if own:
        fn = meta_batched.meta_loss_batched if batched else meta_loss_loop
        with _own_stream(me, params[0].device):
            shard_loss = fn(model, own, cfg, loss_fn) * weight  # (1/N) * sum of this shard's task losses
        shard_loss.backward()
        loss += shard_loss.detach()
    if world > 1:
        _all_reduce_grads(params)
        _all_reduce_stats(model, stat_names, weight)
        dist.all_reduce(loss)
    return float(loss)


def meta_step(model: nn.Module, optimizer: torch.optim.Optimizer, tasks: Sequence[Task],
              cfg: MetaConfig = MetaConfig(), batched: bool = True, loss_fn: LossFn = default_loss) -> float:
    """One outer update on the whole meta-batch, its tasks sharded over the ranks; returns the meta-loss.

    Without a process group (or with one process) this is `dsaml_utils.meta.batched.meta_step`.
    """
    if world_size() <= 1:
        return meta_batched.meta_step(model, optimizer, tasks, cfg, batched=batched, loss_fn=loss_fn)
    optimizer.zero_grad(set_to_none=True)
    loss = meta_backward(model, tasks, cfg, batched, loss_fn)
    optimizer.step()
    return loss
