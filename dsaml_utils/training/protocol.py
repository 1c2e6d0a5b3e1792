"""The protocol of a run: "paper" (the paper's method, done cleanly; the default) or "authors" (what the
authors' public code, Littleor/Personalized-DMER, does around the same model).

`RunConfig.protocol` (`--protocol` on `dsaml train`, `dsaml evaluate` and `dsaml experiment`) chooses;
`rules(name)` says, point by point, what changes. The numbers are those of issue 11 ("Replication
fidelity"); each line names the authors' file that holds the rule.

 4 ImageBind    models/image_bind.py and script/dataset.py (`encoders.authors`; imagebind encoder only): the
                file's mono mix at 44.1 kHz goes to ImageBind unresampled, so its clips and Kaldi fbank run at
                44.1 kHz (sample_frequency 44100: 1102-sample frames at a 441-sample shift, 198 per 2 s clip,
                padded to 204; mel bins up to 22.05 kHz), clips spaced as pytorchvideo 0.1.5 does (their
                requirements.txt), each a cache entry of its own. A training song's global covers
                train.window / 2 s from its first label (15-45 s on DEAM), zero-padded; a test song's is one
                embedding per step, of a 30 s window centred on the step's start, the audio at an end repeated
                past it ([T, G], sliced with the step inputs). Built by `training.authors_store`; with encoder
                "none" (the quick preset) or musicnn / vibenet this point changes nothing.
 5 flat curves  utils/DEAM/dataset.py `loading_personalized_data` reads arousal and valence apart and drops a
                rater's curve of one dimension when the mean |x - mean(x)| of its first 60 values is below 0.01;
                `load_data` keeps a (song, rater) pair only when both dimensions survive: a pair goes when
                EITHER dimension is flat (paper: when both are; `data.types.is_flat`).
 6 mean task    `load_data` adds the song's averaged curve as one more rater, "all" (here the listener
                "mean"), to the personalized data of the training songs it trains on (songs above 1000, here:
                songs with identified raters) and of the test songs; it passes no flat filter.
 7 test raters  the test dataset (`is_train_data=False`) goes through the same filters: flat curves (5) and
                raters with 15 songs or fewer AMONG THE TEST SONGS dropped (`tasks.min_songs` = 16); every
                remaining (song, rater) pair is scored, raters seen in training included (paper: listeners
                without a curve on any training song only).
 8 full songs   utils/inference.py `slide_inference`: 60-step windows at stride 1, stitched without averaging
                (`models.inference.stitch_authors`). The same-song query (the rest of a song after its first
                60 steps, utils/dataset.py `split_batch_seq`) is predicted on its own (`song_part`).
 9 train mode   utils/train.py `validate_model`: `model.eval()` is commented out, so scoring the test split runs
                with dropout and BatchNorm batch statistics on (32 windows per forward); their reported numbers
                are these scores, so `dsaml evaluate` scores that way too under this protocol.
10 selection    train.py: after meta-steps 1, 11, 21, ... (`valid_every_epoch` 10; DMER: after every epoch) the
                test split is scored (PDMER: every test pair adapted on its first 60 steps, the rest scored;
                DMER: every test song against its mean curve) and the weights are kept when the score is >= the
                best so far, which starts at 0. The score is utils/train.py `get_average_score`: the mean of
                CCC, PCC and 1 - RMSE of both dimensions, each averaged over the pairs. This is TEST-SET
                LEAKAGE: the run prints `LEAKAGE`, and its train_summary.json, metrics files and tables say so.
11 DMER length  train.py `regular_train`: an epoch is one pass over a shuffled DataLoader at batch 15 (the last
                batch smaller), for 2000 epochs: `train.epochs` (mode dmer only; None = `train.steps` updates
                rounded up to whole epochs), with `AUTHORS_PAPER` setting batch 15 and 2000 epochs.
12 tasks, BN    utils/dataset.py `generate_task_from_dataset`: one permutation of the songs, supports from its
                head and queries from the rest, so no song appears twice in a meta-batch (paper: each task
                draws its songs on its own). learn2learn's `clone_module` clones only buffers that require
                grad, so every task's clone shares the model's BatchNorm running statistics, which drift
                through every forward of every task in turn (paper: per-task copies, averaged).
Validation-time adaptation keeps its own copy of the running statistics (learn2learn's would update the
model's, which only matters for eval-mode use of the saved weights).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

import numpy as np
import torch

from dsaml_utils.data.types import (
    MEAN,
    MusicDataset,
    TaskFilter,
    personalized_tasks,
)
from dsaml_utils.errors import UserError
from dsaml_utils.features.songs import Item, SongData, scorable_curves
from dsaml_utils.meta.listener import adapt_to_listener
from dsaml_utils.metrics import DIMENSIONS, mean_ccc, score_song
from dsaml_utils.models.inference import predict_song
from dsaml_utils.seeding import torch_seed

PROTOCOLS = ("paper", "authors")


@dataclass(frozen=True)
class Rules:
    """What each difference of the module docstring does under one protocol (True: the authors' way)."""

    imagebind_native_rate: bool  # 4: ImageBind fed the mono mix at 44.1 kHz (fbank at 44.1 kHz)
    imagebind_clip_spacing: str  # 4: features.kaldi.CLIP_SPACINGS ("pytorchvideo-0.1.5": theirs)
    window_excerpt: bool  # 4: a training song's global: train.window / 2 s from its first label, zero-padded
    per_step_test_global: bool  # 4: a test song's global: one embedding per step, 30 s centred on it
    flat_either: bool  # 5: a curve is flat when either dimension is
    mean_task: bool  # 6: the mean curve is one more listener, in training and in the test pairs
    all_test_raters: bool  # 7: test raters filtered like training raters, seen ones included
    stitched: bool  # 8: stride-1 windows stitched; the same-song rest predicted on its own
    train_mode: bool  # 9: test-split scoring with dropout and batch statistics on
    select_on_test: bool  # 10: validation on the test split on the authors' schedule and score
    dmer_epochs: bool  # 11: mode dmer counts epochs over the training samples
    disjoint_tasks: bool  # 12: traditional tasks of a meta-batch share no song
    shared_stats: bool  # 12: BatchNorm running statistics shared across the tasks of a meta-step


RULES = {"paper": Rules(False, "pinned", False, False, *[False] * 9),
         "authors": Rules(True, "pytorchvideo-0.1.5", True, True, *[True] * 9)}
"""Protocol name -> its Rules."""

AUTHORS_META_EVAL_EVERY = 10  # train.py: valid_every_epoch = 10 with MAML (1 without: every epoch)
AUTHORS_PREDICT_BATCH = 32  # utils/inference.py slide_inference: windows per forward
AUTHORS_FIRST_BEST = 0.0  # train.py: max_average_score starts at 0.0
AUTHORS_PAPER = {"train.batch_size": 15, "train.epochs": 2000}
"""utils/args.py defaults that the paper preset takes under `--protocol authors` (batch 15, 2000 epochs)."""

REASON = ("the authors' code's protocol (training.protocol): their ImageBind input (44.1 kHz mono, "
          "pytorchvideo 0.1.5 clips, per-step test embeddings; encoder imagebind only), filters, mean-curve task, "
          "test raters, stitched windows, train-mode scoring and model selection on the TEST split (leakage)")
REASONS = {"train.batch_size": "the authors' batch of 15 (utils/args.py)",
           "train.epochs": "DMER runs 2000 epochs over the training loader (utils/args.py, train.py)"}
"""Why the authors' protocol changes a preset's field (config.deviations reads these)."""

LEAKAGE = ("warning: protocol 'authors' selects the model by its score on the TEST split (as the authors' "
           "train.py does): this is test-set leakage, and every metrics file and table of this run says so")
LEAKAGE_MARK = "selected on test split (leakage)"
"""How metrics reports and table provenance lines mark scores of weights chosen on the test split."""
TEST_SELECTION = 16  # seeding stream of the test-split validation (seeding.py's streams stop at 15)


def rules(protocol: str) -> Rules:
    """The Rules of a protocol name."""
    if protocol not in RULES:
        raise UserError(f"protocol {protocol!r}: choose one of {', '.join(map(repr, PROTOCOLS))}")
    return RULES[protocol]


def warn_leakage() -> None:
    """Print the test-set leakage warning to stderr."""
    print(f"dsaml: {LEAKAGE}", file=sys.stderr, flush=True)


# ---- data: which listeners make tasks and which pairs are scored (5, 6, 7)


def task_listeners(ds: MusicDataset, song_ids: list[str], filt: TaskFilter, protocol: str) -> dict[str, list[str]]:
    """Listener -> training songs of the personalized tasks (paper: `data.types.personalized_tasks`)."""
    r = rules(protocol)
    tasks = personalized_tasks(ds, song_ids, filt, flat_either=r.flat_either)
    if r.mean_task:  # 6: "all" over the songs of the personalized data, no flat filter
        songs = [s for s in song_ids if ds.songs[s].listeners and MEAN in ds.songs[s].curves]
        if len(songs) >= filt.min_songs:
            tasks[MEAN] = songs
    return dict(sorted(tasks.items()))


def test_listeners(ds: MusicDataset, store: dict[str, SongData], test_ids: list[str], filt: TaskFilter,
                   protocol: str) -> dict[str, list[str]]:
    """The authors' test pairs as listener -> test songs: every rater with at least `filt.min_songs` non-flat
    test curves, seen in training or not, plus the mean curve (7, with 5 and 6)."""
    r = rules(protocol)
    songs = scorable_curves(ds, store, test_ids, filt, either=r.flat_either)
    if r.mean_task:
        songs[MEAN] = [s for s in test_ids if s in store]
    return {k: v for k, v in sorted(songs.items()) if len(v) >= filt.min_songs}


# ---- prediction (8, 9)


def predict(model, sd: SongData, window: int, hop: int, params: dict | None, device, protocol: str) -> np.ndarray:
    """`models.inference.predict_song` as the protocol scores: paper averages windows at `hop` in eval mode;
    authors stitches stride-1 windows in train mode."""
    r = rules(protocol)
    if not (r.stitched or r.train_mode):
        return predict_song(model, sd, window, hop, params, device)
    return predict_song(model, sd, window, hop, params, device, chunk=AUTHORS_PREDICT_BATCH if r.train_mode else 16,
                        stitch="authors" if r.stitched else "average", train_mode=r.train_mode)


def song_part(sd: SongData, start: int, stop: int) -> SongData:
    """Steps [start, stop) of a song as a song of its own (a per-song global kept, a per-step one cut)."""
    inputs = {k: v if k == "global" and v.ndim == 1 else v[start:stop] for k, v in sd.inputs.items()}
    return SongData(sd.song_id, sd.times[start:stop], inputs, {k: v[start:stop] for k, v in sd.labels.items()})


# ---- training: length, schedule, score and selection on the test split (10, 11)


def run_length(protocol: str, maml: bool, steps: int, epochs: int | None, samples: int, batch_size: int) -> tuple[int, int]:
    """(updates of the run, updates per epoch): authors' DMER counts whole epochs; otherwise `steps` (per epoch 0)."""
    if maml or not rules(protocol).dmer_epochs:
        return steps, 0
    per_epoch = -(-samples // batch_size)
    return (epochs if epochs is not None else -(-steps // per_epoch)) * per_epoch, per_epoch


def validation_due(maml: bool, step: int, per_epoch: int) -> bool:
    """Authors' schedule: after meta-steps 1, 11, 21, ... (train.py validates at epochs 0, 10, ...), or after
    every DMER epoch; `step` counts the updates done."""
    return (step - 1) % AUTHORS_META_EVAL_EVERY == 0 if maml else step % per_epoch == 0


def authors_score(rows: list[dict[str, float]]) -> float:
    """utils/train.py `get_average_score`: mean of CCC, PCC and 1 - RMSE of both dimensions, each first averaged
    over the rows (a NaN stays NaN and never wins)."""
    vals = []
    for d in DIMENSIONS:
        for m in ("ccc", "pcc", "rmse"):
            v = float(np.mean([r[f"{d}_{m}"] for r in rows]))
            vals.append(1.0 - v if m == "rmse" else v)
    return float(np.mean(vals))


def better(score: float, best: float, protocol: str) -> bool:
    """Whether `score` replaces the best so far: paper strictly higher; authors >= the best, which starts at 0."""
    if rules(protocol).select_on_test:
        return score >= max(best, AUTHORS_FIRST_BEST)
    return score > best


def test_plan(ds: MusicDataset, store: dict[str, SongData], test_ids: list[str], filt: TaskFilter, maml: bool,
              protocol: str) -> list[tuple[str, str]]:
    """(listener, song) pairs the test-split validation scores: PDMER the authors' test pairs (7), DMER every
    test song against its mean curve."""
    if not maml:
        return [(MEAN, s) for s in test_ids if s in store]
    pairs = [(lst, s) for lst, v in test_listeners(ds, store, test_ids, filt, protocol).items() for s in v]
    if not pairs:
        raise UserError("protocol authors selects on the test split, but no test pair is left (test raters with "
                        f"at least tasks.min_songs = {filt.min_songs} test songs)")
    return pairs


def score_test_split(model, store: dict[str, SongData], plan: list[tuple[str, str]], cfg, maml: bool,
                     device) -> dict[str, float]:
    """The authors' validation on the test split: val_score (`authors_score`), mean CCC and the pairs scored."""
    W, hop, seed = cfg.train.window, cfg.eval.hop, cfg.train.seed
    n_sup = min(cfg.eval.support_steps or W, W)
    rows = []
    for i, (lst, sid) in enumerate(plan):
        sd = store[sid]
        start, stop = sd.span(lst)
        if not maml:
            torch.manual_seed(torch_seed(seed, TEST_SELECTION, i))  # dropout is on (9)
            pred = predict(model, sd, W, hop, None, device, cfg.protocol)
            rows.append(score_song(pred[start:stop], sd.labels[lst][start:stop]))
            continue
        if stop - start < n_sup + 2:
            continue
        params = adapt_to_listener(model, store, [Item(sid, lst, start, n_sup)], cfg.meta, W,
                                   seed=torch_seed(seed, TEST_SELECTION, i), device=device)
        rest = song_part(sd, start + n_sup, stop)
        rows.append(score_song(predict(model, rest, W, hop, params, device, cfg.protocol), rest.labels[lst]))
    if not rows:
        return {}
    return {"val_score": authors_score(rows), "val_ccc": mean_ccc(rows), "val_pairs": len(rows), "val_split": "test"}
