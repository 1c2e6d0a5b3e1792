"""A run folder: its config, its trained model, and whether a folder holds the same run on the same data."""

from __future__ import annotations

from pathlib import Path

import torch

from dsaml_utils.data.registry import data_fingerprint
from dsaml_utils.errors import RunConflict, UserError
from dsaml_utils.features.frame_inputs import FrameNorm
from dsaml_utils.io.atomic import load_checkpoint
from dsaml_utils.models.calibration import add_output_affine
from dsaml_utils.models.registry import build_model
from dsaml_utils.training.config import RunConfig


def build_run_model(cfg: RunConfig):
    """The run's model with fresh weights: its preset and overrides, and the output affine with meta.calibrate."""
    model = build_model(cfg.model, cfg.model_size, **cfg.model_overrides())
    return model if cfg.meta.calibrate is None else add_output_affine(model)


def load_run_model(run: str | Path, device: str | torch.device = "cpu", which: str = "model"):
    """(RunConfig, model in eval mode) of a trained run; which = "model" (model.pt), "best" or "checkpoint"."""
    run = Path(run)
    cfg = RunConfig.load(run / "config.json")
    model = build_run_model(cfg)
    state = load_checkpoint(run / f"{which}.pt", device)
    try:
        model.load_state_dict(state["model"])
    except (RuntimeError, KeyError) as exc:
        raise UserError(f"{run / f'{which}.pt'}: weights do not fit model {cfg.model!r} ({exc})") from None
    if "frames" in getattr(model, "inputs", ()):
        if "frame_norm" not in state:
            raise UserError(f"{run / f'{which}.pt'}: a model on frame features without its normalisation statistics")
        model.frame_norm = FrameNorm.from_dict(state["frame_norm"])
    return cfg, model.to(device).eval()


def reads_frames(cfg: RunConfig) -> bool:
    """Whether the run's model reads frame features (built on the meta device: no weights are made)."""
    with torch.device("meta"):
        return "frames" in getattr(build_run_model(cfg), "inputs", ())


def run_fingerprint(ds, cfg: RunConfig) -> str:
    """data_fingerprint of what the run reads: with the frame feature files when its model reads frames."""
    return data_fingerprint(ds, frames=reads_frames(cfg))


def check_same_run(folder: Path, cfg: RunConfig) -> None:
    """Raise RunConflict when `folder` holds a run whose settings differ from cfg's."""
    path = Path(folder) / "config.json"
    if not path.is_file():
        return
    old = RunConfig.load(path).settings()
    new = cfg.settings()
    if old != new:
        finished = "a finished" if (Path(folder) / "model.pt").is_file() else "an unfinished"
        raise RunConflict(f"{folder}: holds {finished} run with other settings ({_dict_diff(old, new)}); use another "
                          "--out, or the same settings to resume or reuse it")


def check_same_data(path: Path, state: dict, fingerprint: str, root: str) -> None:
    """Raise RunConflict when checkpoint `state` (read from `path`) records other data than `fingerprint`.

    A checkpoint written before fingerprints were recorded has none and is not checked."""
    old = state.get("data_fingerprint")
    if old is None or old == fingerprint:
        return
    raise RunConflict(f"{path}: was trained on other data (fingerprint {old[:16]} of {state.get('data_root')}; the "
                      f"data now: {fingerprint[:16]} of {root}); restore that data, or use another --out")


def _sort_key(sid: str):
    return (0, int(sid), sid) if sid.isdigit() else (1, 0, sid)


def _dict_diff(a: dict, b: dict, prefix: str = "") -> str:
    """The first few differing keys of two nested dicts, as 'key: old -> new'."""
    diffs = []
    for k in sorted(set(a) | set(b)):
        x, y = a.get(k), b.get(k)
        if isinstance(x, dict) and isinstance(y, dict):
            sub = _dict_diff(x, y, f"{prefix}{k}.")
            if sub:
                diffs.append(sub)
        elif x != y:
            diffs.append(f"{prefix}{k}: {x!r} -> {y!r}")
    return "; ".join(diffs[:4])
