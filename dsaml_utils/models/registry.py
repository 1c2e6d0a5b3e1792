"""Every model by name (`MODELS`, `build_model`), and a summary of its layers' sizes and shapes."""

from __future__ import annotations

import torch
import torch.nn as nn

from dsaml_utils.errors import UserError
from dsaml_utils.models.baselines import BASELINES
from dsaml_utils.models.dsaml import DSAML, DSAMLConfig
from dsaml_utils.models.frame_attention import ATTENTION_MODELS
from dsaml_utils.models.frame_models import FRAME_MODELS
from dsaml_utils.models.layers import count_parameters

MODELS: dict[str, tuple[type[nn.Module], type]] = {"dsaml": (DSAML, DSAMLConfig), **BASELINES, **FRAME_MODELS,
                                                   **ATTENTION_MODELS}
"""Model name -> (model class, config class); every config class has ``paper()`` and ``quick()``."""


def build_model(name: str, preset: str = "paper", **overrides) -> nn.Module:
    """Build model ``name`` from its ``preset`` ("paper" or "quick") config with field overrides."""
    if name not in MODELS:
        raise UserError(f"unknown model {name!r}; choose one of {sorted(MODELS)}")
    if preset not in ("paper", "quick"):
        raise UserError(f"unknown preset {preset!r}; choose 'paper' or 'quick'")
    model_cls, cfg_cls = MODELS[name]
    return model_cls(getattr(cfg_cls, preset)(**overrides))


def example_batch(model: nn.Module, steps: int = 60, batch_size: int = 1, seed: int = 0) -> dict:
    """A random batch with every key ``model.inputs`` names, for ``steps`` 0.5 s steps."""
    gen = torch.Generator().manual_seed(seed)
    cfg = model.cfg
    shapes = {"mel": (getattr(cfg, "n_frames", 51), getattr(cfg, "n_mels", 128)),
              "frames": (getattr(cfg, "frames_dim", 260),), "wave": (getattr(cfg, "sample_rate", 16000) // 2,)}
    batch = {"mask": torch.ones(batch_size, steps, dtype=torch.bool)}
    for key in model.inputs:
        if key == "global":
            batch[key] = torch.randn(batch_size, cfg.global_dim, generator=gen)
        elif key in shapes:
            batch[key] = torch.randn(batch_size, steps, *shapes[key], generator=gen)
    return batch


def _shapes(x) -> str:
    if isinstance(x, torch.Tensor):
        return "x".join(map(str, x.shape)) or "scalar"
    if isinstance(x, (tuple, list)):
        return "(" + ", ".join(_shapes(v) for v in x) + ")"
    if isinstance(x, dict):
        return "{" + ", ".join(f"{k}: {_shapes(v)}" for k, v in x.items()) + "}"
    return type(x).__name__


def summarize(model: nn.Module, steps: int = 60, depth: int = 2) -> list[str]:
    """Lines: per-module parameter counts and output shapes for one forward pass of ``steps`` steps."""
    modules = dict(model.named_modules())
    containers = (nn.ModuleList, nn.ModuleDict)

    def level(name: str) -> int:  # nesting depth, not counting ModuleList / ModuleDict containers
        parts = name.split(".")
        return sum(not isinstance(modules[".".join(parts[:k])], containers) for k in range(1, len(parts) + 1))

    shown = [n for n, m in modules.items() if n and not isinstance(m, containers) and level(n) <= depth]
    seen: dict[str, list[str]] = {}
    handles = [modules[n].register_forward_hook(lambda m, i, o, n=n: seen.setdefault(n, []).append(_shapes(o)))
               for n in shown]
    model.eval()
    try:
        with torch.no_grad():
            out = model(example_batch(model, steps))
    finally:
        for h in handles:
            h.remove()
    lines = [f"{'module':<40} {'params':>12}  output shape(s) for 1 song x {steps} steps"]
    for name in shown:
        if name not in seen and count_parameters(modules[name]) == 0:
            continue  # e.g. a dropout that this configuration never uses
        calls = seen.get(name, ["(not called)"])
        shapes = calls[0] if len(set(calls)) == 1 else " | ".join(calls)
        times = f" (x{len(calls)} calls)" if len(calls) > 1 else ""
        indent = "  " * (level(name) - 1)
        lines.append(f"{indent + name:<40} {count_parameters(modules[name]):>12,}  {shapes}{times}")
    lines.append(f"{'total':<40} {count_parameters(model):>12,}  {_shapes(out)}")
    lines.append(f"{'trainable':<40} {count_parameters(model, trainable_only=True):>12,}")
    return lines
