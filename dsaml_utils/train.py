"""Training: song tensors and windows, the DMER trainer, MAML meta-training, checkpoints and `dsaml train`.

Data. Every song becomes a `SongData`: its model inputs on the time grid of its MEAN curve ("mel"
[T, F, M] per 0.5 s slice, "wave" [T, S] for waveform models, "global" [G] one embedding of the labelled
span) and every listener's curve aligned to that grid ([T, 2], NaN where the listener has no value). A
training sample is an `Item` (song, listener, start, length): a window of `train.window` = 60 steps (30 s);
a DEAM clip's 60 labels (15-45 s) are exactly one window, a longer song gives a random 60-step window,
a shorter one is zero-padded with mask False. Listener "mean" is the MEAN curve.

Runs. `train(cfg, out)` writes into the run folder `out`:
  config.json      the RunConfig (a rerun with a different config is refused)
  checkpoint.pt    model, optimizer, torch RNG state, step, config, best score, history (atomic, every
                   `train.checkpoint_every` updates): a killed run started again with the same command
                   continues from it and loses at most that many updates
  best.pt          weights with the best validation score so far
  history.json     training loss and validation scores per evaluation
  model.pt         the weights evaluation uses (best or last, `train.select`), written when training ends
Resumption is exact: the data order, the task draws and the dropout seed of update `s` are functions of
(seed, s) only, so an interrupted run ends with the same weights as an uninterrupted one.

Validation. Mode dmer: `train.val_fraction` of the training songs (mean labels), scored by sliding-window
prediction. Mode pdmer: that fraction of the task listeners is held out of meta-training; each is adapted
on one support song and scored on up to 15 of their other songs. The score is the mean of
arousal and valence CCC (higher is better).

`--init RUN` starts from another run's model.pt (e.g. MAML from a DMER-trained model). The paper does
not say that the authors pretrain before meta-training, so the default is from scratch.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, NamedTuple

import numpy as np
import torch
import torch.nn as nn
from tqdm.auto import tqdm

from dsaml_utils import meta as meta_lib
from dsaml_utils.config import RunConfig, apply_overrides, preset
from dsaml_utils.data import HOP_SECONDS, MEAN, Curve, MusicDataset, personalized_tasks
from dsaml_utils.errors import DataError, UserError
from dsaml_utils.features import FeatureCache, song_features
from dsaml_utils.metrics import DIMENSIONS, score_song

Batch = dict[str, torch.Tensor]

VAL_QUERY_SONGS = 15
"""PDMER validation scores each validation listener on up to this many songs (the paper's query size)."""

# streams of the per-step random generators (so that two uses of one step never share numbers)
_ORDER, _WINDOW, _TASKS, _SPLIT, _VAL, _TORCH = range(6)


# ---------------------------------------------------------------------------------------------------
# song tensors


@dataclass
class SongData:
    """One song's model inputs and every listener's labels on the time grid of its MEAN curve."""

    song_id: str
    times: np.ndarray  # [T] label times (s); step i covers audio [times[i], times[i] + 0.5)
    inputs: dict[str, np.ndarray]  # "mel" [T, F, M], "wave" [T, S], "global" [G]
    labels: dict[str, np.ndarray]  # listener -> [T, 2] (arousal, valence), NaN where absent

    def span(self, listener: str) -> tuple[int, int]:
        """[start, stop) of the first unbroken run of the listener's labels."""
        ok = np.isfinite(self.labels[listener]).all(axis=1)
        if not ok.any():
            return 0, 0
        start = int(np.argmax(ok))
        rest = ok[start:]
        stop = start + (int(np.argmin(rest)) if not rest.all() else len(rest))
        return start, stop


class Item(NamedTuple):
    """One window of one listener's labels of one song: steps [start, start + length)."""

    song_id: str
    listener: str
    start: int
    length: int


def align_curve(curve: Curve, times: np.ndarray) -> np.ndarray:
    """The curve's (arousal, valence) on the time grid `times` (2 Hz): [T, 2], NaN where absent."""
    out = np.full((len(times), 2), np.nan, dtype=np.float32)
    if len(curve) == 0 or len(times) == 0:
        return out
    idx = np.round((curve.times - times[0]) / HOP_SECONDS).astype(np.int64)
    ok = (idx >= 0) & (idx < len(times))
    ok[ok] &= np.abs(times[idx[ok]] - curve.times[ok]) < HOP_SECONDS / 4
    out[idx[ok]] = curve.values()[ok]
    return out


def wave_rate(model: nn.Module) -> int | None:
    """Sample rate of the model's "wave" input, or None when it reads no waveform."""
    if "wave" not in getattr(model, "inputs", ()):
        return None
    return int(getattr(model.cfg, "sample_rate", 16000))


def build_store(ds: MusicDataset, song_ids: list[str], cfg: RunConfig, model: nn.Module,
                cache: FeatureCache | None = None, encoder=None, progress: bool = True) -> dict[str, SongData]:
    """SongData for each song the model can read; songs whose audio fails are noted in ds.problems and skipped."""
    keys = set(getattr(model, "inputs", ("mel", "mask")))
    if "frames" in keys:
        raise UserError(f"model {cfg.model!r} reads precomputed frame features ('frames'), which this trainer "
                        "does not build yet; use a model on 'mel' or 'wave'")
    cache = cache or FeatureCache(cfg.cache_dir)
    if "global" in keys:
        from dsaml_utils.encoders import embed_song, get_encoder, song_excerpt

        if cfg.encoder == "none":
            raise UserError(f"model {cfg.model!r} reads a global embedding but the encoder is 'none'")
        encoder = encoder or get_encoder(cfg.encoder, cfg.encoder_checkpoint)
    sr = wave_rate(model)
    store: dict[str, SongData] = {}
    for sid in tqdm(song_ids, desc="song tensors", unit="song", disable=not progress, leave=False):
        song = ds.songs[sid]
        if MEAN not in song.curves:
            ds.problems.append(f"song {sid}: no '{MEAN}' curve; skipped")
            continue
        try:
            feats = song_features(song, cfg.mel, cache, wave_sr=sr)
            inputs = {k: feats[k] for k in ("mel", "wave") if k in keys}
            if "global" in keys:
                inputs["global"] = embed_song(encoder, song.audio_path, cache, *song_excerpt(song))
        except DataError as exc:
            ds.problems.append(f"song {sid} skipped: {exc}")
            continue
        if "mel" in inputs and inputs["mel"].shape[1:] != (cfg.mel.n_frames, cfg.mel.n_mels):
            raise UserError(f"log-mel of song {sid} has {inputs['mel'].shape[1:]} (frames, mels) per slice but "
                            f"MelConfig says ({cfg.mel.n_frames}, {cfg.mel.n_mels}); choose mel.win_ms / mel.hop_ms "
                            "so that the STFT frame count matches MelConfig.n_frames")
        times = np.asarray(feats["times"], dtype=np.float64)
        labels = {lst: align_curve(c, times) for lst, c in song.curves.items()}
        store[sid] = SongData(sid, times, inputs, labels)
    return store


def window_starts(length: int, window: int, hop: int) -> list[int]:
    """Starts of sliding windows over `length` steps; the last window ends at the last step."""
    if length <= window:
        return [0]
    starts = list(range(0, length - window + 1, hop))
    if starts[-1] != length - window:
        starts.append(length - window)
    return starts


def make_batch(store: dict[str, SongData], items: list[Item], window: int, keys: tuple[str, ...],
               device: str | torch.device = "cpu") -> Batch:
    """Stack items into a padded batch: the model inputs named by `keys`, "y" [B, W, 2] and "mask" [B, W]."""
    B = len(items)
    first = store[items[0].song_id]
    out = {}
    for k in keys:
        if k == "mask":
            continue
        arr = first.inputs[k]
        shape = (B, *arr.shape) if k == "global" else (B, window, *arr.shape[1:])
        out[k] = np.zeros(shape, dtype=np.float32)
    y = np.zeros((B, window, 2), dtype=np.float32)
    mask = np.zeros((B, window), dtype=bool)
    for b, it in enumerate(items):
        sd = store[it.song_id]
        n = min(it.length, window)
        if n < 1:
            raise ValueError(f"empty window {it}")
        s = slice(it.start, it.start + n)
        for k in out:
            if k == "global":
                out[k][b] = sd.inputs[k]
            else:
                out[k][b, :n] = sd.inputs[k][s]
        y[b, :n] = sd.labels[it.listener][s]
        mask[b, :n] = True
    if not np.isfinite(y[mask]).all():
        raise ValueError("a window contains missing labels (items must lie inside the listener's span)")
    batch = {k: torch.from_numpy(v).to(device) for k, v in out.items()}
    batch["y"] = torch.from_numpy(y).to(device)
    batch["mask"] = torch.from_numpy(mask).to(device)
    return batch


def random_item(store: dict[str, SongData], sid: str, listener: str, window: int,
                rng: np.random.Generator) -> Item:
    """A window of `window` steps at a random start inside the listener's span (the span when shorter)."""
    start, stop = store[sid].span(listener)
    if stop - start <= window:
        return Item(sid, listener, start, stop - start)
    s = int(rng.integers(start, stop - window + 1))
    return Item(sid, listener, s, window)


def first_item(store: dict[str, SongData], sid: str, listener: str, steps: int) -> Item:
    """The first `steps` labelled steps of the listener's span."""
    start, stop = store[sid].span(listener)
    return Item(sid, listener, start, min(steps, stop - start))


# ---------------------------------------------------------------------------------------------------
# splits and sampling (every draw a function of the seed and the step)


def step_rng(seed: int, stream: int, step: int = 0) -> np.random.Generator:
    """A generator that depends only on (seed, stream, step)."""
    return np.random.default_rng([int(seed), int(stream), int(step)])


def split_validation(ids: list[str], fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """(train, validation) ids; the validation part is a seeded random `fraction` (at least 1, if any)."""
    ids = sorted(ids)
    if fraction <= 0 or len(ids) < 2:
        return ids, []
    n_val = min(len(ids) - 1, max(1, int(round(fraction * len(ids)))))
    perm = step_rng(seed, _SPLIT).permutation(len(ids))
    val = sorted(ids[i] for i in perm[:n_val])
    return [s for s in ids if s not in set(val)], val


def batch_indices(n: int, batch_size: int, seed: int, step: int) -> list[int]:
    """Sample indices of update `step`: epochs of seeded permutations of range(n), read in order."""
    out: list[int] = []
    pos = step * batch_size
    while len(out) < batch_size:
        epoch, off = divmod(pos, n)
        perm = step_rng(seed, _ORDER, epoch).permutation(n)
        take = min(batch_size - len(out), n - off)
        out.extend(int(i) for i in perm[off:off + take])
        pos += take
    return out


@dataclass
class TaskPool:
    """Where MAML tasks come from: listener -> songs (personalized) or songs with mean labels (traditional)."""

    strategy: str
    listener_songs: dict[str, list[str]]  # personalized: the training listeners' songs
    songs: list[str]  # traditional: the training songs
    support: int  # songs in a task's support set
    query: int  # songs in a task's query set (the same for every task, so tasks stack)


def make_task_pool(strategy: str, listener_songs: dict[str, list[str]], songs: list[str], support: int,
                   query: int) -> TaskPool:
    """A TaskPool whose query size fits every listener (support and query never share a song)."""
    if strategy == "personalized":
        if not listener_songs:
            raise UserError("no listener is left for personalized tasks (check the task filter: min_songs, "
                            "flat_threshold) or use --strategy traditional")
        fewest = min(len(v) for v in listener_songs.values())
    else:
        fewest = len(songs)
    q = min(query, fewest - support)
    if q < 1:
        raise UserError(f"tasks need {support} support song(s) and at least 1 query song, but a "
                        f"{'listener has' if strategy == 'personalized' else 'training set has'} only {fewest}")
    return TaskPool(strategy, listener_songs, sorted(songs), support, q)


def sample_tasks(pool: TaskPool, n_tasks: int, seed: int, step: int) -> list[tuple[list[tuple[str, str]], list[tuple[str, str]]]]:
    """Meta-batch of update `step`: per task, (support, query) lists of (song, listener), disjoint."""
    rng = step_rng(seed, _TASKS, step)
    k = pool.support + pool.query
    tasks = []
    if pool.strategy == "personalized":
        listeners = sorted(pool.listener_songs)
        picks = rng.choice(len(listeners), size=n_tasks, replace=len(listeners) < n_tasks)
        for i in picks:
            lst = listeners[i]
            songs = [pool.listener_songs[lst][j] for j in rng.permutation(len(pool.listener_songs[lst]))[:k]]
            tasks.append(([(s, lst) for s in songs[:pool.support]], [(s, lst) for s in songs[pool.support:]]))
    else:
        for _ in range(n_tasks):
            songs = [pool.songs[j] for j in rng.choice(len(pool.songs), size=k, replace=False)]
            tasks.append(([(s, MEAN) for s in songs[:pool.support]], [(s, MEAN) for s in songs[pool.support:]]))
    return tasks


# ---------------------------------------------------------------------------------------------------
# prediction, adaptation, scoring (shared with evaluate.py)


def resolve_device(name: str) -> torch.device:
    """'auto' -> cuda when available, else cpu."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("device 'cuda' requested but no CUDA device is available")
    return torch.device(name)


@torch.no_grad()
def predict_song(model: nn.Module, sd: SongData, window: int, hop: int, params: dict | None = None,
                 device: str | torch.device = "cpu", chunk: int = 16) -> np.ndarray:
    """[T, 2] prediction for a whole song: sliding windows, overlapping predictions averaged (eval mode)."""
    was_training = model.training
    model.eval()
    T = len(sd.times)
    keys = tuple(getattr(model, "inputs", ("mel", "mask")))
    hop = max(1, min(hop, window))  # windows must cover every step
    items = [Item(sd.song_id, MEAN, s, min(window, T - s)) for s in window_starts(T, window, hop)]
    store = {sd.song_id: _unlabelled(sd)}
    total = np.zeros((T, 2), dtype=np.float64)
    count = np.zeros(T, dtype=np.float64)
    for i in range(0, len(items), chunk):
        part = items[i:i + chunk]
        batch = make_batch(store, part, window, keys, device)
        out = meta_lib.predict_with(model, params, batch) if params is not None else model(batch)
        pred = out["pred"].float().cpu().numpy()
        for b, it in enumerate(part):
            total[it.start:it.start + it.length] += pred[b, :it.length]
            count[it.start:it.start + it.length] += 1
    model.train(was_training)
    return (total / count[:, None]).astype(np.float32)


def _unlabelled(sd: SongData) -> SongData:
    """The song with a zero 'mean' curve, for prediction of songs whose labels are unknown or irrelevant."""
    return SongData(sd.song_id, sd.times, sd.inputs, {MEAN: np.zeros((len(sd.times), 2), np.float32)})


def adapt_to_listener(model: nn.Module, store: dict[str, SongData], support: list[Item], cfg: RunConfig,
                      seed: int, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """Parameters adapted to one listener by MAML's inner loop on their support windows (train mode)."""
    keys = tuple(getattr(model, "inputs", ("mel", "mask")))
    batch = make_batch(store, support, cfg.train.window, keys, device)
    torch.manual_seed(seed)
    was_training = model.training
    model.train()
    try:
        params = meta_lib.personalize(model, batch, cfg.meta)
    finally:
        model.train(was_training)
    return params


def support_items(store: dict[str, SongData], songs: list[str], listener: str, cfg: RunConfig) -> list[Item]:
    """The windows a listener's support songs contribute: the first `eval.support_steps` steps, or all windows."""
    items = []
    W = cfg.train.window
    for sid in songs:
        start, stop = store[sid].span(listener)
        if cfg.eval.support_steps is not None:
            items.append(Item(sid, listener, start, min(cfg.eval.support_steps, W, stop - start)))
        else:
            items.extend(Item(sid, listener, start + s, min(W, stop - start - s))
                         for s in window_starts(stop - start, W, W))
    return items


def score_listener_song(pred: np.ndarray, sd: SongData, listener: str) -> dict[str, float]:
    """score_song on the listener's span of the song."""
    start, stop = sd.span(listener)
    return score_song(pred[start:stop], sd.labels[listener][start:stop])


def mean_ccc(scores: list[dict[str, float]]) -> float:
    """Mean over songs of the mean of arousal and valence CCC (the validation score)."""
    return float(np.mean([np.mean([s[f"{d}_ccc"] for d in DIMENSIONS]) for s in scores]))


# ---------------------------------------------------------------------------------------------------
# checkpoints


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write a file so that readers see either the old content or the whole new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    """atomic_write_bytes for text (UTF-8)."""
    atomic_write_bytes(path, text.encode())


def save_checkpoint(path: Path, state: dict) -> None:
    """torch.save `state` to path atomically (temp file in the same folder, then os.replace)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_checkpoint(path: Path, device: str | torch.device = "cpu") -> dict:
    """torch.load(weights_only=True) with a clear error for a missing or damaged file."""
    if not path.is_file():
        raise UserError(f"{path}: checkpoint not found")
    try:
        return torch.load(path, map_location=device, weights_only=True)
    except Exception as exc:  # a truncated or foreign file: say which one
        raise UserError(f"{path}: cannot read checkpoint ({exc.__class__.__name__}: {exc})") from None


def load_run_model(run: str | Path, device: str | torch.device = "cpu", which: str = "model"):
    """(RunConfig, model in eval mode) of a trained run; which = "model" (model.pt), "best" or "checkpoint"."""
    from dsaml_utils.model import build_model

    run = Path(run)
    cfg = RunConfig.load(run / "config.json")
    model = build_model(cfg.model, cfg.preset, **cfg.model_overrides())
    state = load_checkpoint(run / f"{which}.pt", device)
    try:
        model.load_state_dict(state["model"])
    except (RuntimeError, KeyError) as exc:
        raise UserError(f"{run / f'{which}.pt'}: weights do not fit model {cfg.model!r} ({exc})") from None
    return cfg, model.to(device).eval()


# ---------------------------------------------------------------------------------------------------
# the trainer


class Stop(Exception):
    """Raised by a step callback to stop training (the run can be resumed)."""


class Trainer:
    """One run: data, model, optimizer, update loop, validation and checkpoints (see the module docstring)."""

    def __init__(self, cfg: RunConfig, out: str | Path, ds: MusicDataset | None = None,
                 cache: FeatureCache | None = None, progress: bool = True):
        from dsaml_utils.data import load_dataset
        from dsaml_utils.model import build_model

        self.cfg, self.out, self.progress = cfg, Path(out), progress
        self.device = resolve_device(cfg.train.device)
        self._check_config()
        if ds is None and cfg.dataset == "synthetic" and not Path(cfg.root).is_dir():
            raise UserError(f"{cfg.root}: no synthetic dataset there; generate it with `dsaml synth --out {cfg.root}`")
        self.ds = ds if ds is not None else load_dataset(cfg.dataset, cfg.root)
        t = cfg.train
        test = set(self.ds.test_ids)
        train_ids = [s for s in self.ds.train_ids if s not in test]
        if not train_ids:
            raise UserError(f"{self.ds.root}: the dataset has no training songs")

        # model first (its initial weights depend only on the seed)
        torch.manual_seed(t.seed)
        self.model = build_model(cfg.model, cfg.preset, **cfg.model_overrides()).to(self.device)
        if cfg.init:
            _, init_model = load_run_model(cfg.init, self.device)
            try:
                self.model.load_state_dict(init_model.state_dict())
            except RuntimeError as exc:
                raise UserError(f"--init {cfg.init}: its model does not fit this run's model ({exc})") from None
        self.keys = tuple(getattr(self.model, "inputs", ("mel", "mask")))

        # data split: validation songs (dmer) or validation listeners (pdmer)
        listener_songs = personalized_tasks(self.ds, train_ids, cfg.tasks)
        if cfg.maml:
            fit_listeners, self.val_listeners = split_validation(list(listener_songs), t.val_fraction, t.seed)
            self.fit_ids, self.val_ids = train_ids, []
        else:
            self.fit_ids, self.val_ids = split_validation(train_ids, t.val_fraction, t.seed)
            fit_listeners, self.val_listeners = list(listener_songs), []
        fit_set = set(self.fit_ids)
        self.listener_songs = {k: [s for s in v if s in fit_set] for k, v in listener_songs.items()
                               if k in set(fit_listeners)}
        self.val_listener_songs = {k: listener_songs[k] for k in self.val_listeners}
        needed = sorted(set(self.fit_ids) | set(self.val_ids)
                        | {s for v in self.val_listener_songs.values() for s in v}, key=_sort_key)
        self.store = build_store(self.ds, needed, cfg, self.model, cache, progress=progress)
        self._drop_missing()

        if cfg.maml:
            songs = [s for s in self.fit_ids if s in self.store]
            self.pool = make_task_pool(cfg.strategy, self.listener_songs, songs, cfg.meta.support_songs,
                                       cfg.meta.query_songs)
        else:
            if cfg.strategy == "personalized":
                self.samples = [(s, lst) for lst, v in self.listener_songs.items() for s in v]
            else:
                self.samples = [(s, MEAN) for s in self.fit_ids if s in self.store]
            if not self.samples:
                raise UserError("no training samples (songs with audio and labels)")
        self.val_plan = self._validation_plan()
        params = meta_lib.trainable_params(self.model)
        self.optimizer = torch.optim.Adam(params.values(), lr=t.lr)
        self.step = 0
        self.best = {"score": -math.inf, "step": -1}
        self.history: list[dict] = []
        self._losses: list[float] = []
        self.wall = 0.0
        self.cfg.save(self.out / "config.json")  # only once the run could be set up

    # ---- setup helpers

    def _check_config(self) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        path = self.out / "config.json"
        if path.is_file():
            old = RunConfig.load(path)
            if old.settings() != self.cfg.settings():
                diff = _dict_diff(old.settings(), self.cfg.settings())
                raise UserError(f"{self.out}: holds a run with a different config ({diff}); "
                                "use another --out, or the same options to resume it")

    def _drop_missing(self) -> None:
        have = set(self.store)
        self.fit_ids = [s for s in self.fit_ids if s in have]
        self.val_ids = [s for s in self.val_ids if s in have]
        for d in (self.listener_songs, self.val_listener_songs):
            for k in list(d):
                d[k] = [s for s in d[k] if s in have and self.store[s].span(k)[1] > self.store[s].span(k)[0]]

    def _validation_plan(self) -> list[tuple[str, list[str], list[str]]]:
        """Fixed (listener, support songs, query songs) for pdmer validation."""
        plan = []
        for i, lst in enumerate(sorted(self.val_listener_songs)):
            songs = self.val_listener_songs[lst]
            if len(songs) < 2:
                continue
            perm = step_rng(self.cfg.train.seed, _VAL, i).permutation(len(songs))
            songs = [songs[j] for j in perm]
            plan.append((lst, songs[:1], songs[1:1 + VAL_QUERY_SONGS]))
        return plan

    # ---- state

    def state(self) -> dict:
        """Everything needed to continue exactly where this run is."""
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "step": self.step,
            "rng": {"torch": torch.get_rng_state()},
            "config": self.cfg.to_json(),
            "best": dict(self.best),
            "history": json.dumps(self.history),
            "wall_seconds": self.wall,
            "pending_losses": torch.tensor(self._losses, dtype=torch.float64),
        }

    def load_state(self, state: dict) -> None:
        """Restore a state written by `state()`."""
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.step = int(state["step"])
        torch.set_rng_state(state["rng"]["torch"])
        self.best = {"score": float(state["best"]["score"]), "step": int(state["best"]["step"])}
        self.history = json.loads(state["history"])
        self.wall = float(state.get("wall_seconds", 0.0))
        self._losses = [float(x) for x in state.get("pending_losses", torch.zeros(0)).tolist()]

    def save(self) -> None:
        """checkpoint.pt and history.json, both atomically."""
        save_checkpoint(self.out / "checkpoint.pt", self.state())
        atomic_write_text(self.out / "history.json", json.dumps(self.history, indent=1) + "\n")

    # ---- one update

    def update(self) -> float:
        """One optimizer update (dmer) or meta-update (pdmer) for step self.step."""
        cfg, t = self.cfg, self.cfg.train
        torch.manual_seed(int(step_rng(t.seed, _TORCH, self.step).integers(2**62)))
        rng = step_rng(t.seed, _WINDOW, self.step)
        self.model.train()
        if cfg.maml:
            tasks = []
            for sup, qry in sample_tasks(self.pool, cfg.meta.tasks_per_step, t.seed, self.step):
                s_items = [random_item(self.store, s, lst, t.window, rng) for s, lst in sup]
                q_items = [random_item(self.store, s, lst, t.window, rng) for s, lst in qry]
                tasks.append((make_batch(self.store, s_items, t.window, self.keys, self.device),
                              make_batch(self.store, q_items, t.window, self.keys, self.device)))
            if t.grad_clip is None:
                return meta_lib.meta_step(self.model, self.optimizer, tasks, cfg.meta, batched=t.batched_meta)
            self.optimizer.zero_grad(set_to_none=True)
            fn = meta_lib.meta_loss_batched if t.batched_meta else meta_lib.meta_loss_loop
            loss = fn(self.model, tasks, cfg.meta)
        else:
            idx = batch_indices(len(self.samples), t.batch_size, t.seed, self.step)
            items = [random_item(self.store, *self.samples[i], t.window, rng) for i in idx]
            batch = make_batch(self.store, items, t.window, self.keys, self.device)
            self.optimizer.zero_grad(set_to_none=True)
            loss = meta_lib.default_loss(self.model(batch), batch)
        loss.backward()
        if t.grad_clip is not None:
            nn.utils.clip_grad_norm_(self.model.parameters(), t.grad_clip)
        self.optimizer.step()
        return float(loss.detach())

    # ---- validation

    def validate(self) -> dict[str, float]:
        """Validation scores of the current weights (see the module docstring)."""
        cfg = self.cfg
        W, hop = cfg.train.window, cfg.eval.hop
        if not cfg.maml:
            if not self.val_ids:
                return {}
            scores = [score_song(predict_song(self.model, self.store[s], W, hop, device=self.device),
                                 self.store[s].labels[MEAN]) for s in self.val_ids]
            return {"val_score": mean_ccc(scores), "val_songs": len(scores)}
        adapted, plain = [], []
        for i, (lst, sup, qry) in enumerate(self.val_plan):
            items = support_items(self.store, sup, lst, cfg)
            params = adapt_to_listener(self.model, self.store, items, cfg, seed=cfg.train.seed * 1000 + i,
                                       device=self.device)
            for s in qry:
                sd = self.store[s]
                adapted.append(score_listener_song(predict_song(self.model, sd, W, hop, params, self.device), sd, lst))
                plain.append(score_listener_song(predict_song(self.model, sd, W, hop, None, self.device), sd, lst))
        if not adapted:
            return {}
        return {"val_score": mean_ccc(adapted), "val_score_no_adaptation": mean_ccc(plain), "val_pairs": len(adapted)}

    # ---- loop

    def run(self, max_steps_this_call: int | None = None,
            callback: Callable[["Trainer"], None] | None = None) -> dict:
        """Train until train.steps (resuming from checkpoint.pt); returns the summary (train_summary.json)."""
        t = self.cfg.train
        ckpt = self.out / "checkpoint.pt"
        if ckpt.is_file():
            self.load_state(load_checkpoint(ckpt, self.device))
        done_now = 0
        bar = tqdm(total=t.steps, initial=self.step, desc=f"train {self.cfg.mode}", unit="step",
                   disable=not self.progress)
        while self.step < t.steps:
            if max_steps_this_call is not None and done_now >= max_steps_this_call:
                bar.close()
                return {"stopped_at": self.step, "complete": False}
            t0 = time.perf_counter()
            loss = self.update()
            self.step += 1
            done_now += 1
            self._losses.append(loss)
            last = self.step == t.steps
            if (t.eval_every and self.step % t.eval_every == 0) or last:
                self._record(self.validate())
            self.wall += time.perf_counter() - t0
            if (t.checkpoint_every and self.step % t.checkpoint_every == 0) or last:
                self.save()
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.3f}", best=f"{self.best['score']:.3f}")
            if callback is not None:
                callback(self)
        bar.close()
        return self.finish()

    def _record(self, val: dict) -> None:
        row = {"step": self.step, "loss": float(np.mean(self._losses)) if self._losses else math.nan, **val}
        self._losses = []
        self.history.append(row)
        score = val.get("val_score")
        if score is not None and score > self.best["score"]:
            self.best = {"score": float(score), "step": self.step}
            save_checkpoint(self.out / "best.pt", {"model": self.model.state_dict(), "step": self.step,
                                                   "val_score": float(score)})

    def finish(self) -> dict:
        """Write model.pt (the selected weights) and train_summary.json."""
        use_best = self.cfg.train.select == "best" and (self.out / "best.pt").is_file()
        weights = load_checkpoint(self.out / "best.pt", self.device)["model"] if use_best else self.model.state_dict()
        save_checkpoint(self.out / "model.pt", {"model": weights, "step": self.best["step"] if use_best else self.step})
        summary = {
            "complete": True,
            "steps": self.step,
            "selected": "best" if use_best else "last",
            "selected_step": self.best["step"] if use_best else self.step,
            "best_val_score": self.best["score"] if math.isfinite(self.best["score"]) else None,
            "train_wall_seconds": round(self.wall, 2),
            "fit_songs": len(self.fit_ids),
            "val_songs": len(self.val_ids),
            "task_listeners": len(self.listener_songs),
            "val_listeners": len(self.val_plan),
            "problems": list(self.ds.problems),
        }
        atomic_write_text(self.out / "train_summary.json", json.dumps(summary, indent=1) + "\n")
        return summary


def train(cfg: RunConfig, out: str | Path, *, ds: MusicDataset | None = None, cache: FeatureCache | None = None,
          max_steps_this_call: int | None = None, callback: Callable[[Trainer], None] | None = None,
          progress: bool = True) -> dict:
    """Train (or resume, or return the summary of a finished run) into run folder `out`."""
    out = Path(out)
    if (out / "model.pt").is_file() and (out / "train_summary.json").is_file():
        old = RunConfig.load(out / "config.json")
        if old.settings() != cfg.settings():
            raise UserError(f"{out}: holds a finished run with a different config "
                            f"({_dict_diff(old.settings(), cfg.settings())}); use another --out")
        return json.loads((out / "train_summary.json").read_text())
    trainer = Trainer(cfg, out, ds=ds, cache=cache, progress=progress)
    return trainer.run(max_steps_this_call=max_steps_this_call, callback=callback)


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


# ---------------------------------------------------------------------------------------------------
# CLI


def config_from_args(args: argparse.Namespace) -> RunConfig:
    """The RunConfig that `dsaml train` options describe (preset, then options, then --set overrides)."""
    cfg = preset(args.preset)
    if args.dataset:
        cfg.dataset = args.dataset
        if not args.root and args.dataset != "synthetic":
            raise UserError(f"--dataset {args.dataset} needs --root (the dataset folder)")
    if args.root:
        cfg.root = args.root
    cfg.mode = args.mode
    cfg.strategy = args.strategy
    for name in ("model", "encoder", "encoder_checkpoint", "init"):
        if getattr(args, name, None) is not None:
            setattr(cfg, name, getattr(args, name))
    if args.cache:
        cfg.cache_dir = args.cache
    for name in ("seed", "steps", "lr", "batch_size", "device"):
        if getattr(args, name, None) is not None:
            setattr(cfg.train, name, getattr(args, name))
    if args.init:
        cfg.init = str(Path(args.init))
    apply_overrides(cfg, args.set or [])
    return cfg.resolve()


def _cli_train(args: argparse.Namespace) -> int:
    cfg = config_from_args(args)
    summary = train(cfg, args.out, progress=not args.quiet)
    print(f"run {args.out}: {summary.get('steps')} steps, selected {summary.get('selected')} "
          f"(step {summary.get('selected_step')}, validation score {summary.get('best_val_score')}), "
          f"{summary.get('train_wall_seconds')} s")
    if args.evaluate:
        from dsaml_utils.evaluate import evaluate_run, format_metrics

        print(format_metrics(evaluate_run(args.out, progress=not args.quiet)))
    return 0


def add_run_options(p: argparse.ArgumentParser) -> None:
    """Options shared by `dsaml train` and `dsaml experiment`: preset, data, model and overrides."""
    p.add_argument("--preset", choices=("paper", "quick"), default="quick", help="settings preset (default quick)")
    p.add_argument("--dataset", choices=("deam", "pmemo", "synthetic"), help="dataset (default: the preset's)")
    p.add_argument("--root", help="dataset folder (default: the preset's)")
    p.add_argument("--model", help="model name (model.MODELS; default dsaml)")
    p.add_argument("--encoder", help="global encoder: auto, imagebind, musicnn, vibenet or none")
    p.add_argument("--encoder-checkpoint", help="ImageBind .pth, musicnn folder or vibenet .onnx")
    p.add_argument("--steps", type=int, help="updates / meta-updates")
    p.add_argument("--lr", type=float, help="Adam learning rate (MAML's outer learning rate)")
    p.add_argument("--batch-size", type=int, help="windows per update (mode dmer)")
    p.add_argument("--device", help="auto, cpu or cuda")
    p.add_argument("--cache", help="feature cache folder (default data/cache)")
    p.add_argument("--set", action="append", metavar="FIELD=VALUE",
                   help="override any config field, e.g. meta.inner_steps=8 or model_config.n_layers=3 "
                        "(VALUE is JSON; repeatable)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def register_cli(subparsers) -> None:
    """Add `dsaml train`."""
    p = subparsers.add_parser("train", help="train a DMER model or meta-train a PDMER model (resumable)")
    p.add_argument("--mode", choices=("dmer", "pdmer"), required=True,
                   help="dmer: supervised training; pdmer: MAML meta-training")
    p.add_argument("--strategy", choices=("personalized", "traditional"),
                   help="labels/tasks per listener or mean labels (default: personalized for pdmer, "
                        "traditional for dmer)")
    p.add_argument("--out", required=True, help="run folder (rerun the same command to resume)")
    p.add_argument("--seed", type=int, help="random seed (default 0)")
    p.add_argument("--init", help="start from the weights of this trained run")
    p.add_argument("--evaluate", action="store_true", help="evaluate the run when training ends")
    add_run_options(p)
    p.set_defaults(func=_cli_train)
