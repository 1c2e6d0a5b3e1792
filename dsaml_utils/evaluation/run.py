"""Evaluating a trained run folder: DMER and PDMER, written to <run>/metrics.json with provenance."""

from __future__ import annotations

import datetime as _dt
import json
import time
from pathlib import Path

import torch

from dsaml_utils.data.registry import data_fingerprint, load_dataset
from dsaml_utils.data.types import MusicDataset
from dsaml_utils.errors import UserError
from dsaml_utils.evaluation.protocols import evaluate_dmer, evaluate_pdmer
from dsaml_utils.evaluation.results import _finite, _read_json, headline
from dsaml_utils.features.cache import FeatureCache
from dsaml_utils.io.atomic import atomic_write_text
from dsaml_utils.io.provenance import code_version, file_digest
from dsaml_utils.models.inference import resolve_device
from dsaml_utils.training.config import RunConfig
from dsaml_utils.training.runs import load_run_model
from dsaml_utils.training.store import build_store


def evaluate_run(run: str | Path, *, ds: MusicDataset | None = None, cache: FeatureCache | None = None,
                 progress: bool = True, write: bool = True, reuse: bool = False) -> dict:
    """Evaluate a trained run (DMER and PDMER) and write <run>/metrics.json; returns the metrics dict.

    reuse: return an existing metrics.json when it was made from the current model.pt and config.
    """
    run = Path(run)
    if not (run / "model.pt").is_file():
        raise UserError(f"{run}: no model.pt (training has not finished; rerun `dsaml train` with the same "
                        "options to resume it)")
    cfg = RunConfig.load(run / "config.json")
    model_digest = file_digest(run / "model.pt")
    if reuse and (run / "metrics.json").is_file():
        old = json.loads((run / "metrics.json").read_text())
        stored = {k: v for k, v in old.get("config", {}).items() if k != "deviations"}
        if old.get("model_digest") == model_digest and stored == cfg.settings():
            ds = ds if ds is not None else load_dataset(cfg.dataset, cfg.root)
            if old.get("data", {}).get("fingerprint") == data_fingerprint(ds):
                return old
    t0 = time.perf_counter()
    device = resolve_device(cfg.train.device)
    cfg, model = load_run_model(run, device)
    ds = ds if ds is not None else load_dataset(cfg.dataset, cfg.root)
    test = set(ds.test_ids)
    train_ids = [s for s in ds.train_ids if s not in test]
    store = build_store(ds, list(ds.test_ids), cfg, model, cache, progress=progress)
    torch.manual_seed(cfg.train.seed)
    metrics = {
        "run": str(run),
        "seed": cfg.train.seed,
        "preset": cfg.preset,
        "mode": cfg.mode,
        "strategy": cfg.strategy,
        "model": cfg.model,
        "config": cfg.to_dict(),
        "data": {"dataset": cfg.dataset, "root": str(cfg.root), "fingerprint": data_fingerprint(ds),
                 "train_songs": len(train_ids), "test_songs": len(ds.test_ids), "test_songs_scored": len(store)},
        "code_version": code_version(),
        "model_digest": model_digest,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "train": _read_json(run / "train_summary.json"),
        "dmer": evaluate_dmer(model, store, list(ds.test_ids), cfg, device),
        "pdmer": evaluate_pdmer(model, ds, store, train_ids, list(ds.test_ids), cfg, device, progress),
    }
    metrics["headline"] = headline(metrics)
    metrics["eval_wall_seconds"] = round(time.perf_counter() - t0, 2)
    if write:
        atomic_write_text(run / "metrics.json", json.dumps(_finite(metrics), indent=1) + "\n")
    return metrics
