"""The DMER and PDMER evaluation protocols of a trained model, returned as evaluation.results records.

Under protocol "authors" (`training.protocol`; `protocol=` here, else the run's own) the same records are
scored the authors' way: stride-1 windows stitched, in train mode (points 8, 9), PDMER on every test rater
with enough non-flat test curves, seen in training or not, plus the mean curve (points 5-7), and the
same-song rest predicted on its own; with the imagebind encoder the test songs' store (evaluation.run,
`training.authors_store`) holds their per-step global embeddings (point 4), which every window, support
window and same-song rest takes step by step. Below, the paper protocol.

DMER: every test song, predicted whole by sliding 60-step windows (hop `eval.hop`, overlapping
predictions averaged), scored against its MEAN curve.

PDMER: the held-out listeners, i.e. listeners with a curve on a test song and none on any training song
(`eval.unseen_listeners_only`; when a dataset has none, every test-song listener is used and metrics.json
says so). Near-flat curves are left out with the task filter's flat rule. For each k in `eval.kshots` and
each listener with more than k songs and each draw d < `eval.draws`: the listener's songs are put in a
seeded order rotated by d, the first k are the support songs (nested: the k = 1 support song is among the
k = 2 ones), the model is adapted on their first `eval.support_steps` labelled steps by MAML's inner
loop (`meta.maml.personalize`, `meta.inner_steps` SGD steps at `meta.inner_lr`, train mode), and every other
song of that listener is predicted whole and scored against the listener's own curve. The same query
pairs are also scored without adaptation ("no_adaptation"), so the personalization gain is visible.
With `eval.same_song` the authors' full-song protocol is scored too ("same_song"): for every held-out
listener-song pair, adapt on the first `eval.support_steps` labelled steps of that song and score the rest
of the same song (adapted and not). Its gain mixes personalization with correcting the model's error on
that particular song, so compare it with a non-personalized model adapted the same way.

Metrics: CCC, PCC, RMSE, Kendall's tau and R^2 per song (PDMER: per listener-song pair), averaged with a
95% interval (`metrics.aggregate_songs`); several runs (seeds) give mean +- std
(`evaluation.results.combine_runs`).
Everything goes to <run>/metrics.json with the config, seed, data fingerprint and code version.
"""

from __future__ import annotations

import numpy as np
import torch
from tqdm.auto import tqdm

from dsaml_utils.data.types import MEAN, MusicDataset
from dsaml_utils.evaluation.results import (
    DMERResult,
    KShot,
    PDMERResult,
    SameSong,
    Scores,
    stats,
)
from dsaml_utils.features.songs import Item, SongData, scorable_curves, score_listener_song
from dsaml_utils.meta.listener import adapt_to_listener, support_items
from dsaml_utils.metrics import aggregate_songs, score_song
from dsaml_utils.seeding import (
    ADAPT_KSHOT,
    ADAPT_SAME_SONG,
    EVAL_ORDER,
    generator,
    torch_seed,
)
from dsaml_utils.training.config import RunConfig
from dsaml_utils.training.protocol import predict, rules, song_part, test_listeners


def evaluate_dmer(model, store: dict[str, SongData], song_ids: list[str], cfg: RunConfig,
                  device: str | torch.device = "cpu", protocol: str | None = None) -> DMERResult:
    """Per-song scores against the MEAN curve and their aggregate, for the songs in the store."""
    rows = []
    for sid in song_ids:
        if sid not in store:
            continue
        sd = store[sid]
        pred = predict(model, sd, cfg.train.window, cfg.eval.hop, None, device, protocol or cfg.protocol)
        rows.append({"song_id": sid, "steps": len(sd.times), **score_listener_song(pred, sd, MEAN)})
    if not rows:
        return DMERResult(skipped="no test song with audio and labels")
    return DMERResult(_scored(rows, cfg))


def held_out_listeners(ds: MusicDataset, store: dict[str, SongData], train_ids: list[str],
                       test_ids: list[str], cfg: RunConfig,
                       protocol: str | None = None) -> tuple[dict[str, list[str]], list[str]]:
    """(listener -> their test songs, notes): listeners never seen in training, non-flat curves only
    (authors: `training.protocol.test_listeners`)."""
    protocol = protocol or cfg.protocol
    if rules(protocol).all_test_raters:
        note = (f"protocol authors: every test rater with at least {cfg.tasks.min_songs} non-flat test curves "
                "(seen in training or not) and the mean curve")
        return test_listeners(ds, store, test_ids, cfg.tasks, protocol), [note]
    seen = {lst for sid in train_ids if sid in ds.songs for lst in ds.songs[sid].listeners}
    songs = scorable_curves(ds, store, test_ids, cfg.tasks)
    notes = []
    unseen = {k: v for k, v in songs.items() if k not in seen}
    if cfg.eval.unseen_listeners_only:
        if unseen or not songs:
            songs = unseen
        else:
            notes.append("no test-song listener is absent from the training songs: PDMER uses every test-song "
                         "listener (they were seen in training)")
    return dict(sorted(songs.items())), notes


def evaluate_pdmer(model, ds: MusicDataset, store: dict[str, SongData], train_ids: list[str],
                   test_ids: list[str], cfg: RunConfig, device: str | torch.device = "cpu",
                   progress: bool = True, protocol: str | None = None) -> PDMERResult:
    """k-shot personalization on held-out listeners: adapted and no-adaptation scores per query pair."""
    protocol = protocol or cfg.protocol
    listeners, notes = held_out_listeners(ds, store, train_ids, test_ids, cfg, protocol)
    if not listeners:
        why = (f"no test rater has {cfg.tasks.min_songs} or more non-flat test curves (the authors' rule)"
               if rules(protocol).all_test_raters and ds.listeners() else
               "no listener curves on the test songs (the dataset has no rater identities)")
        return PDMERResult(notes=notes, skipped=why)
    W, hop, seed = cfg.train.window, cfg.eval.hop, cfg.train.seed
    plain_pred = {}  # song -> prediction without adaptation (the same for every listener)

    def pred(sd: SongData, params: dict | None):
        return predict(model, sd, W, hop, params, device, protocol)

    jobs = [(k, i, lst, d) for k in cfg.eval.kshots for i, lst in enumerate(listeners)
            for d in range(min(cfg.eval.draws, len(listeners[lst]))) if len(listeners[lst]) > k]
    rows: dict[int, dict[str, list]] = {k: {"adapted": [], "no_adaptation": []} for k in cfg.eval.kshots}
    for k, i, lst, d in tqdm(jobs, desc="personalize", unit="listener", disable=not progress, leave=False):
        songs = listeners[lst]
        # one seeded order per listener; draw d rolls it by d, so draws use different support songs
        perm = np.roll(generator(seed, EVAL_ORDER, i).permutation(len(songs)), -d)
        order = [songs[j] for j in perm]
        support, query = order[:k], order[k:]
        windows = support_items(store, support, lst, W, cfg.eval.support_steps)
        params = adapt_to_listener(model, store, windows, cfg.meta, W, seed=torch_seed(seed, ADAPT_KSHOT, i, d),
                                   device=device)
        for sid in query:
            sd = store[sid]
            if sid not in plain_pred:
                plain_pred[sid] = pred(sd, None)
            base = {"listener": lst, "song_id": sid, "draw": d, "support": support}
            rows[k]["adapted"].append({**base, **score_listener_song(pred(sd, params), sd, lst)})
            rows[k]["no_adaptation"].append({**base, **score_listener_song(plain_pred[sid], sd, lst)})
    kshot = {}
    for k in cfg.eval.kshots:
        if not rows[k]["adapted"]:
            kshot[k] = KShot(k, skipped=f"no held-out listener has more than {k} song(s)")
            continue
        kshot[k] = KShot(k, listeners=len({r["listener"] for r in rows[k]["adapted"]}), pairs=len(rows[k]["adapted"]),
                         adapted=_scored(rows[k]["adapted"], cfg), no_adaptation=_scored(rows[k]["no_adaptation"], cfg))
    same = _same_song(model, store, listeners, cfg, plain_pred, device, progress, protocol) if cfg.eval.same_song \
        else None
    return PDMERResult(listeners=len(listeners), songs_per_listener={k: len(v) for k, v in listeners.items()},
                       notes=notes, kshot=kshot, same_song=same)


def _same_song(model, store: dict[str, SongData], listeners: dict[str, list[str]], cfg: RunConfig,
               plain_pred: dict, device, progress: bool, protocol: str) -> SameSong:
    """The authors' full-song protocol: adapt on the first support steps of a song, score the rest of it
    (protocol authors: the rest predicted on its own, as their validation does)."""
    W, hop, seed = cfg.train.window, cfg.eval.hop, cfg.train.seed
    alone = rules(protocol).stitched
    n_sup = min(cfg.eval.support_steps or W, W)
    rows = {"adapted": [], "no_adaptation": []}
    jobs = [(i, lst, sid) for i, lst in enumerate(listeners) for sid in listeners[lst]]
    for i, lst, sid in tqdm(jobs, desc="same-song", unit="pair", disable=not progress, leave=False):
        sd = store[sid]
        start, stop = sd.span(lst)
        if stop - start < n_sup + 2:  # nothing left to score
            continue
        params = adapt_to_listener(model, store, [Item(sid, lst, start, n_sup)], cfg.meta, W,
                                   seed=torch_seed(seed, ADAPT_SAME_SONG, i), device=device)
        rest = slice(start + n_sup, stop)
        base = {"listener": lst, "song_id": sid, "scored_steps": stop - start - n_sup}
        y = sd.labels[lst][rest]
        if alone:
            part = song_part(sd, start + n_sup, stop)
            adapted, plain = (predict(model, part, W, hop, p, device, protocol) for p in (params, None))
        else:
            if sid not in plain_pred:
                plain_pred[sid] = predict(model, sd, W, hop, None, device, protocol)
            adapted = predict(model, sd, W, hop, params, device, protocol)[rest]
            plain = plain_pred[sid][rest]
        rows["adapted"].append({**base, **score_song(adapted, y)})
        rows["no_adaptation"].append({**base, **score_song(plain, y)})
    if not rows["adapted"]:
        return SameSong(skipped=f"no held-out listener curve is longer than {n_sup + 1} steps")
    return SameSong(pairs=len(rows["adapted"]), support_steps=n_sup,
                    adapted=_scored(rows["adapted"], cfg), no_adaptation=_scored(rows["no_adaptation"], cfg))


def _scored(rows: list[dict], cfg: RunConfig) -> Scores:
    """The rows with their per-metric summary (mean and 95% interval over the rows)."""
    scores = [{k: v for k, v in r.items() if isinstance(v, float)} for r in rows]
    return Scores(stats(aggregate_songs(scores, method=cfg.eval.interval, seed=cfg.train.seed)), rows)
