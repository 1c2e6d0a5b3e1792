"""What every model shares: the forward interface, step masks, a padding-aware BiRNN, small conv blocks."""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import torch
import torch.nn as nn

from dsaml_utils.errors import UserError


class PresetConfig:
    """Mixin for model config dataclasses: ``paper()`` is the full-size default, ``quick()`` a CPU size."""

    QUICK: ClassVar[dict] = {}  # field overrides that make the quick preset

    @classmethod
    def paper(cls, **overrides):
        """The full-size configuration, with optional field overrides."""
        return _make_config(cls, overrides)

    @classmethod
    def quick(cls, **overrides):
        """A small configuration that trains in minutes on 2 CPU cores, with optional overrides."""
        return _make_config(cls, {**cls.QUICK, **overrides})


def _make_config(cls, overrides: dict):
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(overrides) - names)
    if unknown:
        raise UserError(f"{cls.__name__} has no field(s) {unknown}; fields are {sorted(names)}")
    return cls(**overrides)


def require(batch: dict, key: str, model: str, hint: str) -> torch.Tensor:
    """``batch[key]``, or a UserError naming the model, the key and the expected shape."""
    if key not in batch or batch[key] is None:
        raise UserError(f"{model} needs batch key '{key}' ({hint}); got keys {sorted(batch)}")
    return batch[key]


def _under_functorch(t: torch.Tensor) -> bool:
    """True for a tensor wrapped by torch.func (vmap, grad): under vmap its values cannot steer control flow."""
    return bool(getattr(torch._C._functorch, "is_functorch_wrapped_tensor", lambda _: False)(t))


def step_mask(batch: dict, B: int, T: int, device: torch.device) -> torch.Tensor:
    """The batch's [B, T] step mask (all True when absent), checked to be a non-empty prefix per row.

    The value check is skipped under torch.func transforms (the meta-learner's vmap path), where it cannot run.
    """
    mask = batch.get("mask")
    if mask is None:
        return torch.ones(B, T, dtype=torch.bool, device=device)
    mask = mask.to(device=device, dtype=torch.bool)
    if mask.shape != (B, T):
        raise UserError(f"batch 'mask' has shape {tuple(mask.shape)}, expected {(B, T)}")
    if not _under_functorch(mask):
        lengths = mask.sum(1)
        prefix = torch.arange(T, device=device)[None, :] < lengths[:, None]
        if bool((lengths == 0).any()) or not bool((mask == prefix).all()):
            raise UserError("batch 'mask' must mark a non-empty prefix of each row (padding only at the end)")
    return mask


def per_step(encoder: nn.Module, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Apply ``encoder`` to every slice of ``x`` [B, T, ...]; returns [B, T, E] with padded steps zeroed.

    Padded slices go through the encoder too (no data-dependent shapes, so vmap works): in train mode
    they enter BatchNorm statistics, so equal-length batches are the exact case there.
    """
    B, T = x.shape[:2]
    z = encoder(x.reshape(B * T, *x.shape[2:])).reshape(B, T, -1)
    return z * mask[..., None].to(z.dtype)


def reverse_padded(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Reverse the real steps of each row of ``x`` [B, T, E], leaving padding in place (an involution)."""
    T = x.shape[1]
    t = torch.arange(T, device=x.device)[None, :]
    lengths = mask.sum(1, keepdim=True)
    idx = torch.where(t < lengths, lengths - 1 - t, t)
    return x.gather(1, idx[..., None].expand(-1, -1, x.shape[-1]))


class BiRNN(nn.Module):
    """Bidirectional multi-layer LSTM or GRU that reads only the real steps of padded sequences.

    Same maths as ``nn.LSTM/nn.GRU(bidirectional=True)`` run on packed sequences, but each direction
    is its own unidirectional module and the backward one reads each row reversed within its length,
    so padding never reaches a real step. Plain tensors only: works under functional_call, double
    backward and (with the meta-learner's functional LSTM) vmap.
    """

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, cell: str = "lstm",
                 dropout: float = 0.0):
        super().__init__()
        if cell not in ("lstm", "gru"):
            raise UserError(f"BiRNN cell {cell!r}; choose 'lstm' or 'gru'")
        rnn = nn.LSTM if cell == "lstm" else nn.GRU
        self.hidden_size = hidden_size
        self.layers = nn.ModuleList(
            nn.ModuleDict({"fwd": rnn(input_size if i == 0 else 2 * hidden_size, hidden_size, batch_first=True),
                           "bwd": rnn(input_size if i == 0 else 2 * hidden_size, hidden_size, batch_first=True)})
            for i in range(num_layers))
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """[B, T, E] -> [B, T, 2 * hidden] (forward then backward direction)."""
        for i, layer in enumerate(self.layers):
            if i:
                x = self.drop(x)
            ahead = layer["fwd"](x)[0]  # causal: padding at the end cannot reach real steps
            back = reverse_padded(layer["bwd"](reverse_padded(x, mask))[0], mask)
            x = torch.cat([ahead, back], -1)
        return x


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of (trainable) parameters in ``model``."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def _check_shape(x: torch.Tensor, key: str, model: str, tail: tuple[int, ...]) -> None:
    if x.dim() != 2 + len(tail) or tuple(x.shape[2:]) != tail:
        want = "[B, T, " + ", ".join(map(str, tail)) + "]"
        raise UserError(f"{model}: batch '{key}' has shape {tuple(x.shape)}, expected {want}")


def _conv2d_block(cin: int, cout: int, kernel, padding, pool) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, kernel, padding=padding), nn.BatchNorm2d(cout), nn.ReLU(),
                         nn.MaxPool2d(pool))


def _conv1d_block(cin: int, cout: int, kernel: int, stride: int, pool: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv1d(cin, cout, kernel, stride=stride, padding=kernel // 2),
                         nn.BatchNorm1d(cout), nn.ReLU(), nn.MaxPool1d(pool))


def _output(pred: torch.Tensor) -> dict:
    return {"pred": pred, "aux_loss": pred.new_zeros(())}
