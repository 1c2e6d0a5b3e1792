"""One person from files (`dsaml personalize`).

DMER: every test song, predicted whole by sliding 60-step windows (hop `eval.hop`, overlapping
predictions averaged), scored against its MEAN curve.

PDMER: the held-out listeners, i.e. listeners with a curve on a test song and none on any training song
(`eval.unseen_listeners_only`; when a dataset has none, every test-song listener is used and metrics.json
says so). Near-flat curves are left out with the task filter's flat rule. For each k in `eval.kshots` and
each listener with more than k songs and each draw d < `eval.draws`: the listener's songs are put in a
seeded order rotated by d, the first k are the support songs (nested: the k = 1 support song is among the
k = 2 ones), the model is adapted on their first `eval.support_steps` labelled steps by MAML's inner
loop (`meta.personalize`, `meta.inner_steps` SGD steps at `meta.inner_lr`, train mode), and every other
song of that listener is predicted whole and scored against the listener's own curve. The same query
pairs are also scored without adaptation ("no_adaptation"), so the personalization gain is visible.
With `eval.same_song` the authors' full-song protocol is scored too ("same_song"): for every held-out
listener-song pair, adapt on the first `eval.support_steps` labelled steps of that song and score the rest
of the same song (adapted and not). Its gain mixes personalization with correcting the model's error on
that particular song, so compare it with a non-personalized model adapted the same way.

Metrics: CCC, PCC, RMSE, Kendall's tau and R^2 per song (PDMER: per listener-song pair), averaged with a
95% interval (`metrics.aggregate_songs`); several runs (seeds) give mean +- std (`combine_runs`).
Everything goes to <run>/metrics.json with the config, seed, data fingerprint and code version.
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
