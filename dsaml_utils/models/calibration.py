"""A per-dimension output affine (scale, shift) that the MAML inner loop can set in closed form.

Listeners mostly differ from the average listener by an offset, a gain and sometimes a sign per dimension
(`data.synthetic`'s traits; docs/performance.md, "The valence bar"). SGD steps on the curve loss find that
map poorly from one song, least squares finds it at once. With `meta.calibrate` set (the quick preset sets
it, on valence only; the paper preset does not: it is not the paper's method), every model gets two
parameters `out_affine.scale` and `out_affine.shift` ([2] each, 1 and 0 at the start) applied to its
prediction, pred' = scale * pred + shift, and the inner loop ends by fitting them to the support song
(`meta.maml.calibrated`) on the dimensions of `meta.calibrate_dims`, as differentiable closed-form solvers
do in meta-learning (Bertinetto et al., ICLR 2019). Meta-training learns a model whose predictions such a
recalibration serves, and the outer loop learns the affine's starting values. Measured on the quick preset
(docs/performance.md): on valence it lifts the listeners' valence, on arousal it costs arousal.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn

from ..metrics import DIMENSIONS

SCALE, SHIFT = "out_affine.scale", "out_affine.shift"
"""Parameter names of the output affine in a model's state dict."""


class OutputAffine(nn.Module):
    """scale * pred + shift, per output dimension."""

    def __init__(self, dims: int = 2):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(dims))
        self.shift = nn.Parameter(torch.zeros(dims))


def _apply(module: nn.Module, args, out):
    if isinstance(out, dict) and "pred" in out:
        aff = module.out_affine
        return {**out, "pred": out["pred"] * aff.scale + aff.shift}
    return out


def add_output_affine(model: nn.Module) -> nn.Module:
    """Give `model` an output affine (module `out_affine`, applied to out["pred"] by a forward hook)."""
    if hasattr(model, "out_affine"):
        return model
    model.out_affine = OutputAffine()
    model.register_forward_hook(_apply)
    return model


def fit_affine(pred: torch.Tensor, y: torch.Tensor, mask: torch.Tensor | None, ridge: float,
               dims: Sequence[str] = ()) -> tuple[torch.Tensor, torch.Tensor]:
    """(a, b) [..., 2] minimising sum (a pred + b - y)^2 + ridge * n (a - 1)^2 over the masked steps.

    pred and y are [..., B, T, 2] (leading task axes allowed); the ridge term pulls the gain towards 1 (no
    change) when the support's predictions hardly vary: a = (cov + ridge) / (var + ridge), b = mean_y - a mean_p.
    `dims`: the dimensions ("arousal", "valence") to fit; the others keep a = 1, b = 0. () = both.
    """
    w = torch.ones_like(pred[..., :1]) if mask is None else mask[..., None].to(pred.dtype)
    n = w.sum((-3, -2)).clamp(min=1.0)
    mp, my = (pred * w).sum((-3, -2)) / n, (y * w).sum((-3, -2)) / n
    dp, dy = pred - mp[..., None, None, :], y - my[..., None, None, :]
    var, cov = (dp * dp * w).sum((-3, -2)) / n, (dp * dy * w).sum((-3, -2)) / n
    a = (cov + ridge) / (var + ridge)
    b = my - a * mp
    if dims:
        fit = torch.tensor([d in dims for d in DIMENSIONS], device=pred.device)
        a, b = torch.where(fit, a, torch.ones_like(a)), torch.where(fit, b, torch.zeros_like(b))
    return a, b


def compose(params: dict, a: torch.Tensor, b: torch.Tensor) -> dict:
    """params with the output affine followed by a * (.) + b: scale' = a scale, shift' = a shift + b."""
    if SCALE not in params or SHIFT not in params:
        raise ValueError("meta.calibrate needs a model with an output affine (models.calibration.add_output_affine)")
    return dict(params, **{SCALE: a * params[SCALE], SHIFT: a * params[SHIFT] + b})
