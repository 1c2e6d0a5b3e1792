"""Whole-song prediction: sliding windows over a song, overlapping predictions averaged (or, as the authors'
code does it, stride-1 windows stitched: `stitch_authors`)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn
from torch.func import functional_call

from dsaml_utils.data.types import MEAN
from dsaml_utils.errors import UserError
from dsaml_utils.features.songs import Batch, Item, SongData, make_batch, window_starts


def resolve_device(name: str) -> torch.device:
    """'auto' -> cuda when available, else cpu."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("device 'cuda' requested but no CUDA device is available")
    return torch.device(name)


AUTHORS_HOPS = (5, 1)
"""Steps each later stride-1 window adds, (arousal, valence): 2.5 s and 0.5 s (Littleor/Personalized-DMER
utils/inference.py, slide_inference's hop_size)."""


@torch.no_grad()
def predict_song(model: nn.Module, sd: SongData, window: int, hop: int, params: dict | None = None,
                 device: str | torch.device = "cpu", chunk: int = 16, stitch: str = "average",
                 train_mode: bool = False) -> np.ndarray:
    """[T, 2] prediction for a whole song: sliding windows, overlapping predictions averaged (eval mode).

    A model with a slice-wise front end (``model.local_features``: DSAML with its adapter) gets each
    slice's features computed once for the whole song, then windows over them: the same numbers as
    running the front end window by window, without computing overlapping slices twice.
    stitch="authors": windows at stride 1 (`hop` unused), stitched by `stitch_authors`. train_mode: the
    model runs in train mode (dropout, BatchNorm batch statistics over each chunk of `chunk` windows, running
    statistics updated), every window through the whole model.
    """
    was_training = model.training
    model.train(train_mode)
    T = len(sd.times)
    keys = tuple(getattr(model, "inputs", ("mel", "mask")))
    if stitch == "authors":
        starts = list(range(T - window + 1)) if T > window else [0]
    else:
        hop = max(1, min(hop, window))  # windows must cover every step
        starts = window_starts(T, window, hop)
    items = [Item(sd.song_id, MEAN, s, min(window, T - s)) for s in starts]
    song = _unlabelled(sd)
    if _has_local(model, keys) and not train_mode:
        song = _with_local(model, params, song, keys, device)
        keys = ("local", *(k for k in keys if k not in ("mel", "frames")))
    store = {sd.song_id: song}
    total = np.zeros((T, 2), dtype=np.float64)
    count = np.zeros(T, dtype=np.float64)
    windows = np.zeros((len(items), window, 2), dtype=np.float32) if stitch == "authors" else None
    for i in range(0, len(items), chunk):
        part = items[i:i + chunk]
        batch = make_batch(store, part, window, keys, device)
        out = predict_with(model, params, batch) if params is not None else model(batch)
        pred = out["pred"].float().cpu().numpy()
        if windows is not None:
            windows[i:i + len(part)] = pred
            continue
        for b, it in enumerate(part):
            total[it.start:it.start + it.length] += pred[b, :it.length]
            count[it.start:it.start + it.length] += 1
    model.train(was_training)
    if windows is not None:
        return stitch_authors(windows, T)
    return (total / count[:, None]).astype(np.float32)


def stitch_authors(windows: np.ndarray, length: int, hops: tuple[int, int] = AUTHORS_HOPS) -> np.ndarray:
    """[length, 2] from the [n, W, 2] predictions of stride-1 windows (window i covers steps i .. i + W - 1),
    as the authors' slide_inference assembles them, without averaging (Littleor/Personalized-DMER
    utils/inference.py): per dimension with hop h, the first window whole; then, for h = 1, the last step of
    every later window; for h > 1, the last h steps of windows h + 1, 2h + 1, ... (< n) and, at the end, the
    last (n - 1) mod h steps of the last window (h when that is 0). As written, for h > 1 and n > h + 1 the
    values from step W on come one step early (window h + 1's last h steps cover steps W + 1 .. W + h) and
    the last window's first value repeats a step; that is kept. A song no longer than W: its one window.
    """
    n, W, _ = windows.shape
    if length <= W:
        return windows[0, :length].copy()
    out = np.empty((length, 2), dtype=np.float32)
    for d, h in enumerate(hops):
        parts = [windows[0, :, d]]
        if h == 1:
            parts.append(windows[1:, -1, d])
        else:
            parts += [windows[i, -h:, d] for i in range(h + 1, n, h)]
            parts.append(windows[n - 1, -((n - 1) % h or h):, d])
        col = np.concatenate(parts)
        if len(col) != length:
            raise ValueError(f"stitched {len(col)} steps from {n} windows of {W}, expected {length}")
        out[:, d] = col
    return out


def _has_local(model: nn.Module, keys: tuple[str, ...]) -> bool:
    """True when the model's front end works slice by slice (it has ``local_features``)."""
    return callable(getattr(model, "local_features", None)) and any(k in keys for k in ("mel", "frames"))


def _with_local(model: nn.Module, params: dict | None, sd: SongData, keys: tuple[str, ...], device,
                slices: int = 512) -> SongData:
    """The song with input "local": its front end's features per step, `slices` steps per call."""
    key = next(k for k in keys if k in ("mel", "frames"))
    x = torch.from_numpy(sd.inputs[key])
    parts = []
    for i in range(0, len(x), slices):
        batch = {key: x[i:i + slices][None].to(device)}
        out = (functional_call(model, params, (batch,), {"local_only": True}) if params is not None
               else model(batch, local_only=True))
        parts.append(out["local"][0].float().cpu())
    inputs = {**sd.inputs, "local": torch.cat(parts).numpy()}
    return SongData(sd.song_id, sd.times, inputs, sd.labels)


def _unlabelled(sd: SongData) -> SongData:
    """The song with a zero 'mean' curve, for prediction of songs whose labels are unknown or irrelevant."""
    return SongData(sd.song_id, sd.times, sd.inputs, {MEAN: np.zeros((len(sd.times), 2), np.float32)})


@torch.no_grad()
def predict_with(model: nn.Module, params: dict[str, torch.Tensor], batch: Batch) -> dict:
    """The model's output on a batch with the given (e.g. personalized) parameters."""
    return functional_call(model, params, (batch,))
