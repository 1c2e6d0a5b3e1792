"""`dsaml personalize`: adapt a trained run to one person from one song they annotated, then predict theirs.

The curve file is a CSV with a header and the columns ``time,arousal,valence``: time in seconds on a 0.5 s grid (label i covers
audio [time_i, time_i + 0.5)), values on the training dataset's scale (DEAM/synthetic [-1, 1], PMEmo [0, 1]).
It saves the person's state as personal.pt: the difference (adapted - trained) of every parameter that
adaptation changed (MAML's inner loop updates all trainable parameters; BatchNorm statistics are not
changed), with the sha256 of the run's model.pt it applies to. Each predicted song gets <name>.csv
(same columns, from 0 s to the end of the audio) and <name>.png.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

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


def _audio_times(path: Path, start: float) -> np.ndarray:
    wave, sr = load_audio(path)
    n = int(math.floor((len(wave) / sr - start) / HOP_SECONDS + 1e-9))
    if n < 1:
        raise DataError(f"{path}: audio is shorter than {start + HOP_SECONDS} s")
    return start + HOP_SECONDS * np.arange(n)


def personalize_files(run: str | Path, out: str | Path, predict: list[str | Path],
                      support: tuple[str | Path, str | Path] | None = None, personal: str | Path | None = None,
                      start: float = 0.0, progress: bool = True) -> dict:
    """Adapt a trained run to one person (support audio + curve CSV) or load their personal.pt, then write
    <name>.csv and <name>.png for each song in `predict`; returns {"personal": path, "predictions": [...]}."""
    run, out = Path(run), Path(out)
    if (support is None) == (personal is None):
        raise UserError("give either --support AUDIO CURVE_CSV or --personal FILE")
    device = resolve_device(RunConfig.load(run / "config.json").train.device)
    cfg, model = load_run_model(run, device)
    base = {k: v.detach() for k, v in model.named_parameters() if v.requires_grad}
    digest = file_digest(run / "model.pt")
    value_range = (-1.0, 1.0) if cfg.dataset != "pmemo" else (0.0, 1.0)
    cache = FeatureCache(cfg.cache_dir)
    out.mkdir(parents=True, exist_ok=True)

    def store_for(songs: list[Song]) -> dict[str, SongData]:
        ds = MusicDataset("personal", out, {s.song_id: s for s in songs}, [], [], value_range)
        store = build_store(ds, [s.song_id for s in songs], cfg, model, cache, progress=False)
        if len(store) != len(songs):
            raise DataError("; ".join(ds.problems) or "could not read the audio")
        return store

    if support is not None:
        audio, curve_path = Path(support[0]), Path(support[1])
        curve = read_curve_csv(curve_path)
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
    else:
        personal_path = Path(personal)
        state = load_checkpoint(personal_path)
        if state.get("model_digest") != digest:
            raise UserError(f"{personal_path}: made for another model (model.pt digest differs from {run})")
        unknown = set(state["delta"]) - set(base)
        if unknown:
            raise UserError(f"{personal_path}: parameters {sorted(unknown)[:3]} are not in the run's model")
        params = {k: base[k] + state["delta"][k].to(device) if k in state["delta"] else base[k] for k in base}
    written = []
    for path in tqdm([Path(p) for p in predict], desc="predict", unit="song", disable=not progress):
        times = _audio_times(path, start)
        song = Song(path.stem, path, {MEAN: Curve(times, np.zeros(len(times)), np.zeros(len(times)))})
        sd = store_for([song])[path.stem]
        pred = predict_song(model, sd, cfg.train.window, cfg.eval.hop, params, device)
        csv, png = out / f"{path.stem}.csv", out / f"{path.stem}.png"
        write_curve_csv(csv, sd.times, pred)
        plot_curve_png(png, sd.times, pred, f"{path.name}: personalized prediction ({cfg.model}, {run.name})",
                       value_range)
        written.append({"audio": str(path), "csv": str(csv), "png": str(png)})
    return {"personal": str(personal_path), "predictions": written}
