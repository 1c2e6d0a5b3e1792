"""Song tensors: a song's model inputs and every listener's labels on one 2 Hz grid, windows and batches.

Data. Every song becomes a `SongData`: its model inputs on the time grid of its MEAN curve ("mel"
[T, F, M] per 0.5 s slice, "wave" [T, S] for waveform models, "global" [G] one embedding of the labelled
span, or [T, G] one per step: a test song under protocol "authors", `encoders.authors.embed_steps`) and every listener's curve aligned to that grid ([T, 2], NaN where the listener has no value). A
training sample is an `Item` (song, listener, start, length): a window of `train.window` = 60 steps (30 s);
a DEAM clip's 60 labels (15-45 s) are exactly one window, a longer song gives a random 60-step window,
a shorter one is zero-padded with mask False. Listener "mean" is the MEAN curve.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, NamedTuple

import numpy as np
import torch
from tqdm.auto import tqdm

from dsaml_utils.data.types import HOP_SECONDS, MEAN, Curve, MusicDataset, Song, TaskFilter, is_flat
from dsaml_utils.errors import DataError, UserError
from dsaml_utils.features.cache import FeatureCache, song_features
from dsaml_utils.features.mel import MelConfig
from dsaml_utils.metrics import score_song

Batch = dict[str, torch.Tensor]


@dataclass
class SongData:
    """One song's model inputs and every listener's labels on the time grid of its MEAN curve."""

    song_id: str
    times: np.ndarray  # [T] label times (s); step i covers audio [times[i], times[i] + 0.5)
    inputs: dict[str, np.ndarray]  # "mel" [T, F, M], "wave" [T, S], "global" [G] (or per step [T, G])
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


def song_tensors(ds: MusicDataset, song_ids: list[str], mel: MelConfig, keys: set[str], cache: FeatureCache,
                 embed: Callable[[Song], np.ndarray] | None = None, wave_sr: int | None = None,
                 progress: bool = True) -> dict[str, SongData]:
    """SongData with the inputs named by `keys` for each song; songs whose audio fails or does not cover
    their labels, or whose MEAN times are not one unbroken 0.5 s grid, are noted in ds.problems and skipped.
    `embed(song)` gives the "global" input when `keys` asks for it."""
    if "global" in keys and embed is None:
        raise UserError("a global embedding is asked for but no encoder was given")
    store: dict[str, SongData] = {}
    for sid in tqdm(song_ids, desc="song tensors", unit="song", disable=not progress, leave=False):
        song = ds.songs[sid]
        if MEAN not in song.curves:
            ds.problems.append(f"song {sid}: no '{MEAN}' curve; skipped")
            continue
        grid = song.curves[MEAN].times
        if len(grid) == 0 or np.any(np.abs(np.diff(grid) - HOP_SECONDS) > 1e-6):
            ds.problems.append(f"song {sid}: '{MEAN}' label times are not one unbroken {HOP_SECONDS:g} s grid "
                               f"({len(grid)} times from {grid[0] if len(grid) else 0:g} s); skipped")
            continue
        try:
            feats = song_features(song, mel, cache, wave_sr=wave_sr)
            inputs = {k: feats[k] for k in ("mel", "wave") if k in keys}
            if "global" in keys:
                inputs["global"] = embed(song)
        except DataError as exc:
            ds.problems.append(f"song {sid} skipped: {exc}")
            continue
        if "mel" in inputs and inputs["mel"].shape[1:] != (mel.n_frames, mel.n_mels):
            raise UserError(f"log-mel of song {sid} has {inputs['mel'].shape[1:]} (frames, mels) per slice but "
                            f"MelConfig says ({mel.n_frames}, {mel.n_mels}); choose mel.win_ms / mel.hop_ms "
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
    """Stack items into a padded batch: the model inputs named by `keys`, "y" [B, W, 2] and "mask" [B, W].

    "global" is [B, G]; [B, W, G] when a song of the batch has one per step (a per-song one then repeats)."""
    B = len(items)
    first = store[items[0].song_id]
    per_step = "global" in keys and any(store[it.song_id].inputs["global"].ndim == 2 for it in items)
    out = {}
    for k in keys:
        if k == "mask":
            continue
        arr = first.inputs[k]
        if k == "global":
            shape = (B, window, arr.shape[-1]) if per_step else (B, *arr.shape)
        else:
            shape = (B, window, *arr.shape[1:])
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
            if k == "global" and not per_step:
                out[k][b] = sd.inputs[k]
            elif k == "global" and sd.inputs[k].ndim == 1:
                out[k][b, :n] = sd.inputs[k]
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


def score_listener_song(pred: np.ndarray, sd: SongData, listener: str) -> dict[str, float]:
    """score_song on the listener's span of the song."""
    start, stop = sd.span(listener)
    return score_song(pred[start:stop], sd.labels[listener][start:stop])


def scorable_curves(ds: MusicDataset, store: dict[str, SongData], test_ids: list[str], filt: TaskFilter,
                either: bool = False) -> dict[str, list[str]]:
    """Listener -> the test songs (in `store`) where their curve has >= 2 labelled steps and is not flat by
    `filt`'s rule (`either`: flat in either dimension, else in both)."""
    songs: dict[str, list[str]] = {}
    for sid in test_ids:
        if sid not in store:
            continue
        for lst in ds.songs[sid].listeners:
            start, stop = store[sid].span(lst)
            if stop - start < 2:
                continue
            if filt.flat_threshold > 0 and is_flat(ds.songs[sid].curves[lst], filt.flat_threshold,
                                                   filt.flat_window, either=either):
                continue
            songs.setdefault(lst, []).append(sid)
    return songs
