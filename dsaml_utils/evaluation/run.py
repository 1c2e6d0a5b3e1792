"""Evaluating a trained run folder: DMER and PDMER, written to <run>/metrics.json with provenance.

A run is scored under its own protocol (config.json) into metrics.json, or under the other one
(`protocol=`, `dsaml evaluate --protocol`) into metrics-<protocol>.json, so neither file replaces the other.
The test songs' inputs follow the protocol scored (`training.authors_store`: under "authors" with the
imagebind encoder, their 44.1 kHz ImageBind input and one global embedding per step).

`Scoring` narrows PDMER to what a table reads (the k of eval.kshots it shows, the same-song protocol or
not): an experiment scores only that, and metrics.json says so in its PDMER notes. A stored file is reused
when it covers what is asked; otherwise the run is scored for both. `dsaml evaluate` scores everything.
"""

from __future__ import annotations

import copy
import dataclasses
import datetime as _dt
import json
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from dsaml_utils.data.registry import load_dataset
from dsaml_utils.data.types import MusicDataset
from dsaml_utils.errors import UserError
from dsaml_utils.evaluation.protocols import evaluate_dmer, evaluate_pdmer
from dsaml_utils.evaluation.results import (
    DataInfo,
    RunMetrics,
    json_data,
    read_metrics,
    write_metrics,
)
from dsaml_utils.features.cache import FeatureCache
from dsaml_utils.io.provenance import code_version, file_digest
from dsaml_utils.models.inference import resolve_device
from dsaml_utils.runtime import keep_freed_memory
from dsaml_utils.training.authors_store import protocol_store
from dsaml_utils.training.config import RunConfig
from dsaml_utils.training.protocol import rules, warn_leakage
from dsaml_utils.training.runs import load_run_model, run_fingerprint


@dataclass(frozen=True)
class Scoring:
    """Which PDMER parts to score: the k of eval.kshots (None: all) and the same-song protocol (None: as
    eval.same_song says). DMER on the test songs is always scored."""

    kshots: tuple[int, ...] | None = None
    same_song: bool | None = None

    def union(self, other: "Scoring") -> "Scoring":
        """What either asks for (None, i.e. all, wins)."""
        ks = None if None in (self.kshots, other.kshots) else tuple(sorted(set(self.kshots) | set(other.kshots)))
        same = None if None in (self.same_song, other.same_song) else (self.same_song or other.same_song)
        return Scoring(ks, same)

    def eval_config(self, cfg: RunConfig):
        """cfg.eval narrowed to these parts (k outside eval.kshots are not scored)."""
        ks = tuple(k for k in cfg.eval.kshots if self.kshots is None or k in self.kshots)
        same = cfg.eval.same_song and (self.same_song is None or self.same_song)
        return dataclasses.replace(cfg.eval, kshots=ks, same_song=same)


FULL = Scoring()
"""Every part the run's config names."""


def covers(m: RunMetrics, ev) -> bool:
    """True when metrics m scored every part that eval config `ev` (`Scoring.eval_config`) asks for."""
    if m.pdmer.skipped is not None:
        return True
    return set(ev.kshots) <= set(m.pdmer.kshot) and (not ev.same_song or m.pdmer.same_song is not None)


def stored_scoring(m: RunMetrics) -> Scoring:
    """The parts metrics m holds."""
    return Scoring(tuple(m.pdmer.kshot), m.pdmer.same_song is not None)


def metrics_name(cfg: RunConfig, protocol: str | None = None) -> str:
    """metrics.json for the run's own protocol, metrics-<protocol>.json for the other."""
    return "metrics.json" if protocol in (None, cfg.protocol) else f"metrics-{protocol}.json"


def evaluate_run(run: str | Path, *, ds: MusicDataset | None = None, cache: FeatureCache | None = None,
                 progress: bool = True, write: bool = True, reuse: bool = False,
                 protocol: str | None = None, scoring: Scoring = FULL) -> RunMetrics:
    """Evaluate a trained run (DMER and PDMER) and write <run>/metrics.json; returns its RunMetrics.

    protocol: score under this protocol (None: the run's own) into `metrics_name`.
    reuse: return an existing metrics file when it was made from the current model.pt, config and data
    and covers `scoring` (one that is damaged or incomplete is recomputed, for its parts and scoring's).
    scoring: the PDMER parts to score (default: all the config names).
    """
    run = Path(run)
    if not (run / "model.pt").is_file():
        raise UserError(f"{run}: no model.pt (training has not finished; rerun `dsaml train` with the same "
                        "options to resume it)")
    cfg = RunConfig.load(run / "config.json")
    protocol = protocol or cfg.protocol
    rules(protocol)  # a bad name is refused before anything is computed
    path = run / metrics_name(cfg, protocol)
    model_digest = file_digest(run / "model.pt")
    old = _stored(path) if reuse else None
    if (old is not None and old.model_digest == model_digest and _stored_settings(old) == cfg.settings()
            and old.protocol_name == protocol):
        ds = ds if ds is not None else load_dataset(cfg.dataset, cfg.root)
        if old.data.fingerprint == run_fingerprint(ds, cfg):
            if covers(old, scoring.eval_config(cfg)):
                return old
            scoring = scoring.union(stored_scoring(old))  # score what the file held too
    keep_freed_memory()  # see dsaml_utils.runtime
    t0 = time.perf_counter()
    device = resolve_device(cfg.train.device)
    cfg, model = load_run_model(run, device)
    ds = ds if ds is not None else load_dataset(cfg.dataset, cfg.root)
    test = set(ds.test_ids)
    train_ids = [s for s in ds.train_ids if s not in test]
    store = protocol_store(ds, list(ds.test_ids), cfg, model, cache, protocol, ds.test_ids, progress)
    torch.manual_seed(cfg.train.seed)
    data = DataInfo(cfg.dataset, str(cfg.root), run_fingerprint(ds, cfg), len(train_ids), len(ds.test_ids), len(store))
    version = code_version()
    created = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    train_summary = json_data(_read_json(run / "train_summary.json"))
    leaked = bool(train_summary.get("selected_on_test", False))
    if leaked:
        warn_leakage()
    dmer = evaluate_dmer(model, store, list(ds.test_ids), cfg, device, protocol)
    ev = scoring.eval_config(cfg)
    scored = copy.copy(cfg)  # not dataclasses.replace: its check() refuses the empty kshots of a DMER-only table
    scored.eval = ev
    pdmer = evaluate_pdmer(model, ds, store, train_ids, list(ds.test_ids), scored, device, progress, protocol)
    note = _narrowed(cfg.eval, ev)
    if note and pdmer.skipped is None:
        pdmer = dataclasses.replace(pdmer, notes=[*pdmer.notes, note])
    metrics = RunMetrics(run=str(run), seed=cfg.train.seed, preset=cfg.preset, mode=cfg.mode, strategy=cfg.strategy,
                         model=cfg.model, config=json_data(cfg.to_dict()), data=data, code_version=version,
                         model_digest=model_digest, created=created, train=train_summary, dmer=dmer, pdmer=pdmer,
                         eval_wall_seconds=round(time.perf_counter() - t0, 2), protocol=protocol,
                         selected_on_test=leaked)
    if write:
        write_metrics(path, metrics)
    return metrics


def _narrowed(full, ev) -> str:
    """The PDMER note of a run scored for part of its eval config ("" when scored for all of it)."""
    left = [f"k = {k}" for k in full.kshots if k not in ev.kshots]
    if full.same_song and not ev.same_song:
        left.append("the same-song protocol")
    if not left:
        return ""
    return (f"scored for what its tables show: not {', '.join(left)} (`dsaml evaluate RUN` scores every part "
            "of the config)")


def _stored(path: Path) -> RunMetrics | None:
    """The metrics.json at path, or None when there is none or it cannot be read (it is then recomputed)."""
    if not path.is_file():
        return None
    try:
        return read_metrics(path)
    except UserError:
        return None


def _stored_settings(m: RunMetrics) -> dict | None:
    """settings() of the config a metrics.json was made with (its "deviations" dropped); None when that config
    no longer loads (then the run is re-evaluated)."""
    try:
        return RunConfig.from_dict(m.config).settings()
    except UserError:
        return None


def _read_json(path: Path) -> dict:
    """A JSON file's content ({} when it does not exist)."""
    return json.loads(path.read_text()) if path.is_file() else {}
