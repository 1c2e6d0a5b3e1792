"""`dsaml personalize`: adapt a trained run to one person from one song they annotated, then predict theirs.

The curve file is a CSV with a header and the columns ``time,arousal,valence``: time in seconds on a 0.5 s grid (label i covers
audio [time_i, time_i + 0.5)), values on the training dataset's scale (DEAM/synthetic [-1, 1], PMEmo [0, 1]).
It saves the person's state as personal.pt: the difference (adapted - trained) of every parameter that
adaptation changed (MAML's inner loop updates all trainable parameters; BatchNorm statistics are not
changed), with the sha256 of the run's model.pt it applies to. Each predicted song gets <name>.csv
(same columns, from 0 s to the end of the audio) and <name>.png.

Inputs are checked before any adaptation or writing: the support curve may end at most
``SUPPORT_TOLERANCE`` s after its audio does, and its values must lie in the run's dataset range;
``--start`` must be >= 0; two songs to predict must not share a name (<name> is the file's stem,
compared case-insensitively); an output that already exists in the folder is refused unless
``overwrite`` is given (then it is replaced and reported as such).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from dsaml_utils.data import deam, pmemo
from dsaml_utils.data.files import AUDIO_TOLERANCE
from dsaml_utils.data.types import HOP_SECONDS, MEAN, Curve, MusicDataset, Song
from dsaml_utils.errors import DataError, UserError
from dsaml_utils.evaluation.curves import read_curve_csv, write_curve_csv
from dsaml_utils.features.audio import load_audio
from dsaml_utils.features.cache import FeatureCache
from dsaml_utils.features.songs import SongData
from dsaml_utils.io.atomic import load_checkpoint, save_checkpoint
from dsaml_utils.io.provenance import file_digest
from dsaml_utils.meta.listener import adapt_to_listener, support_items
from dsaml_utils.models.inference import predict_song, resolve_device
from dsaml_utils.plots.results import plot_curve_png
from dsaml_utils.seeding import ADAPT_PERSONAL, torch_seed
from dsaml_utils.training.config import RunConfig
from dsaml_utils.training.runs import load_run_model
from dsaml_utils.training.store import build_store

SUPPORT_TOLERANCE = AUDIO_TOLERANCE
"""Seconds a support curve may end after its audio: the loaders' tolerance for MP3 frame padding (0.1 s)."""

VALUE_RANGES = {"deam": deam.VALUE_RANGE, "synthetic": deam.VALUE_RANGE, "pmemo": pmemo.VALUE_RANGE}
"""Label range of each dataset a run can be trained on (the loaders' VALUE_RANGE)."""


def dataset_value_range(name: str) -> tuple[float, float]:
    """The label range of the dataset called `name`."""
    if name not in VALUE_RANGES:
        raise UserError(f"unknown dataset {name!r}; expected one of {', '.join(VALUE_RANGES)}")
    return VALUE_RANGES[name]


def check_support(audio: Path, curve_path: Path, curve: Curve, value_range: tuple[float, float]) -> None:
    """Refuse a support curve that outlasts its audio (beyond SUPPORT_TOLERANCE) or leaves the value range."""
    lo, hi = value_range
    vals = curve.values()
    bad = np.flatnonzero(((vals < lo) | (vals > hi)).any(axis=1))
    if len(bad):
        i = int(bad[0])
        d = 0 if not lo <= vals[i, 0] <= hi else 1
        raise UserError(f"{curve_path}: line {i + 2} (time {curve.times[i]:g} s): {('arousal', 'valence')[d]} "
                        f"{vals[i, d]:g} is outside the trained run's dataset range [{lo:g}, {hi:g}]")
    wave, sr = load_audio(audio)
    duration, end = len(wave) / sr, float(curve.times[-1]) + HOP_SECONDS
    if end > duration + SUPPORT_TOLERANCE:
        raise UserError(f"{curve_path}: the curve runs to {end:g} s but the support audio {audio} lasts "
                        f"{duration:.2f} s (more than {SUPPORT_TOLERANCE} s short); give the curve of this audio")


def _output_names(predict: list[Path]) -> list[str]:
    """The <name> of each song's outputs (its stem); two songs that would write the same files are refused."""
    seen: dict[str, Path] = {}
    for p in predict:
        other = seen.setdefault(p.stem.casefold(), p)
        if other is not p:
            raise UserError(f"{other} and {p} would both write {p.stem}.csv and {p.stem}.png; "
                            "predict them in calls with different --out folders (or rename one)")
    return [p.stem for p in predict]


def _audio_times(path: Path, start: float) -> np.ndarray:
    wave, sr = load_audio(path)
    n = math.floor((len(wave) / sr - start) / HOP_SECONDS + 1e-9)
    if n < 1:
        raise DataError(f"{path}: audio is shorter than {start + HOP_SECONDS} s")
    return start + HOP_SECONDS * np.arange(n)


def personalize_files(run: str | Path, out: str | Path, predict: list[str | Path],
                      support: tuple[str | Path, str | Path] | None = None, personal: str | Path | None = None,
                      start: float = 0.0, progress: bool = True, overwrite: bool = False) -> dict:
    """Adapt a trained run to one person (support audio + curve CSV) or load their personal.pt, then write
    <name>.csv and <name>.png for each song in `predict`; returns {"personal", "predictions", "written", "replaced"}."""
    run, out, predict = Path(run), Path(out), [Path(p) for p in predict]
    if (support is None) == (personal is None):
        raise UserError("give either --support AUDIO CURVE_CSV or --personal FILE")
    if not (math.isfinite(start) and start >= 0):
        raise UserError(f"--start {start}: the first predicted time must be a number of seconds >= 0")
    names = _output_names(predict)
    outputs = ([out / "personal.pt"] if support is not None else []) + [
        out / f"{n}{ext}" for n in names for ext in (".csv", ".png")]
    existing = [p for p in outputs if p.exists()]
    if existing and not overwrite:
        raise UserError(f"{existing[0]}: exists from an earlier call ({len(existing)} of the outputs do) and is not "
                        "overwritten; use another --out, delete them, or pass --overwrite")
    device = resolve_device(RunConfig.load(run / "config.json").train.device)
    cfg, model = load_run_model(run, device)
    value_range = dataset_value_range(cfg.dataset)
    if support is not None:
        audio, curve_path = Path(support[0]), Path(support[1])
        curve = read_curve_csv(curve_path)
        check_support(audio, curve_path, curve, value_range)
    times = [_audio_times(p, start) for p in predict]
    base = {k: v.detach() for k, v in model.named_parameters() if v.requires_grad}
    digest = file_digest(run / "model.pt")
    cache = FeatureCache(cfg.cache_dir)
    out.mkdir(parents=True, exist_ok=True)

    def store_for(songs: list[Song]) -> dict[str, SongData]:
        ds = MusicDataset("personal", out, {s.song_id: s for s in songs}, [], [], value_range)
        store = build_store(ds, [s.song_id for s in songs], cfg, model, cache, progress=False)
        if len(store) != len(songs):
            raise DataError("; ".join(ds.problems) or "could not read the audio")
        return store

    written = []
    if support is not None:
        song = Song("support", audio, {MEAN: curve, "you": curve})
        store = store_for([song])
        params = adapt_to_listener(model, store, support_items(store, ["support"], "you", cfg.train.window,
                                                             cfg.eval.support_steps),
                                   cfg.meta, cfg.train.window, seed=torch_seed(cfg.train.seed, ADAPT_PERSONAL), device=device)
        delta = {k: (params[k] - base[k]).cpu() for k in params if not torch.equal(params[k], base[k])}
        state = {"run": str(run), "model_digest": digest, "delta": delta,
                 "support": json.dumps({"audio": str(audio), "curve": str(curve_path), "steps": len(curve)})}
        personal_path = out / "personal.pt"
        save_checkpoint(personal_path, state)
        written.append(str(personal_path))
    else:
        personal_path = Path(personal)
        state = load_checkpoint(personal_path)
        if state.get("model_digest") != digest:
            raise UserError(f"{personal_path}: made for another model (model.pt digest differs from {run})")
        unknown = set(state["delta"]) - set(base)
        if unknown:
            raise UserError(f"{personal_path}: parameters {sorted(unknown)[:3]} are not in the run's model")
        params = {k: base[k] + state["delta"][k].to(device) if k in state["delta"] else base[k] for k in base}
    predictions = []
    for path, name, t in tqdm(list(zip(predict, names, times)), desc="predict", unit="song", disable=not progress):
        song = Song(name, path, {MEAN: Curve(t, np.zeros(len(t)), np.zeros(len(t)))})
        sd = store_for([song])[name]
        pred = predict_song(model, sd, cfg.train.window, cfg.eval.hop, params, device)
        csv, png = out / f"{name}.csv", out / f"{name}.png"
        write_curve_csv(csv, sd.times, pred)
        plot_curve_png(png, sd.times, pred, f"{path.name}: personalized prediction ({cfg.model}, {run.name})",
                       value_range)
        predictions.append({"audio": str(path), "csv": str(csv), "png": str(png)})
        written += [str(csv), str(png)]
    return {"personal": str(personal_path), "predictions": predictions, "written": written,
            "replaced": [str(p) for p in existing]}
