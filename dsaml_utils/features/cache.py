"""A disk cache of computed features keyed by audio content and settings, and per-song feature extraction."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import tempfile
import zipfile
from pathlib import Path
from typing import Callable

import numpy as np
from tqdm.auto import tqdm

from dsaml_utils.data.files import short_audio
from dsaml_utils.data.types import MEAN, MusicDataset, Song
from dsaml_utils.errors import DataError
from dsaml_utils.features.audio import load_audio, slice_audio
from dsaml_utils.features.mel import MelConfig, log_mel
from dsaml_utils.io.provenance import audio_digest

FEATURE_VERSION = 2
"""Bumped whenever the feature code changes what it computes, so old cache entries stop matching.

2: each "mel" and "wave" entry also records "audio_seconds", the decoded duration of its audio file.
"""


def _jsonable(obj):
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, (np.integer, np.floating)):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.asdict(obj)
    raise TypeError(f"cache key value of type {type(obj).__name__} is not JSON-serialisable")


class FeatureCache:
    """Arrays on disk at root/<kind>/<hash of key>.npz, written atomically and reused across runs."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.hits = 0  # entries read back from disk
        self.misses = 0  # entries computed (and written)

    @staticmethod
    def key_text(key: dict) -> str:
        """The canonical JSON text of a key (sorted, compact); its sha256 names the file."""
        return json.dumps(key, sort_keys=True, separators=(",", ":"), default=_jsonable)

    def path_for(self, kind: str, key: dict) -> Path:
        """Where the entry for (kind, key) lives."""
        if not kind or not kind.replace("_", "").replace("-", "").isalnum():
            raise ValueError(f"cache kind must be a simple name, got {kind!r}")
        digest = hashlib.sha256(self.key_text(key).encode()).hexdigest()[:40]
        return self.root / kind / f"{digest}.npz"

    def get_or_compute(self, kind: str, key: dict, compute: Callable[[], np.ndarray | dict]):
        """The cached value for (kind, key), or compute(), store it and return it (same type)."""
        path, text = self.path_for(kind, key), self.key_text(key)
        value = self._read(path, text)
        if value is not None:
            self.hits += 1
            return value
        value = compute()
        self._write(path, text, value)
        self.misses += 1
        return value

    def _read(self, path: Path, text: str):
        if not path.is_file():
            return None
        try:
            with np.load(path, allow_pickle=False) as z:
                if str(z["__key__"]) != text:  # a hash collision or a foreign file: treat as absent
                    return None
                if "__array__" in z.files:
                    return z["__array__"]
                return {k: z[k] for k in z.files if k != "__key__"}
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
            return None  # unreadable (e.g. a crash mid-write by another tool): recompute and overwrite

    def _write(self, path: Path, text: str, value) -> None:
        if isinstance(value, np.ndarray):
            payload = {"__array__": value}
        elif isinstance(value, dict) and all(isinstance(v, np.ndarray) for v in value.values()):
            if any(k.startswith("__") for k in value):
                raise ValueError("cached dict keys must not start with '__'")
            payload = dict(value)
        else:
            raise TypeError(f"compute() must return an ndarray or a dict of ndarrays, got {type(value).__name__}")
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.stem, suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                np.savez(f, __key__=np.array(text), **payload)
            os.replace(tmp, path)  # atomic: readers see the old entry or the whole new one
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


def song_features(song: Song, cfg: MelConfig, cache: FeatureCache, listener_times=None,
                  wave_sr: int | None = None) -> dict[str, np.ndarray]:
    """Cached features of one song at its label times: "mel" [T, n_frames, n_mels], "times" [T] and,
    when wave_sr is given, "wave" [T, round(slice_seconds * wave_sr)] raw slices at that rate.

    Times are the MEAN curve's unless listener_times is given; slice i covers [t_i, t_i + slice_seconds).
    Audio that decodes shorter than the labels (``data.files.short_audio``) raises DataError instead of
    being zero-padded; the decoded duration is stored with each entry, so a warm cache decodes nothing.
    """
    if song.audio_path is None:
        raise DataError(f"song {song.song_id}: no audio file")
    if listener_times is None:
        if MEAN not in song.curves:
            raise DataError(f"song {song.song_id}: no '{MEAN}' curve to take label times from")
        listener_times = song.curves[MEAN].times
    times = np.asarray(listener_times, dtype=np.float64)
    base = {"audio": audio_digest(song.audio_path), "times": times, "slice_seconds": cfg.slice_seconds,
            "version": FEATURE_VERSION}

    def entry(kind: str, key: dict, sr: int, make: Callable[[np.ndarray, int], np.ndarray]) -> np.ndarray:
        def compute() -> dict[str, np.ndarray]:
            wave, rate = load_audio(song.audio_path, sr)
            return {kind: make(wave, rate), "audio_seconds": np.array(len(wave) / rate)}

        value = cache.get_or_compute(kind, key, compute)
        problem = short_audio(song.audio_path, float(value["audio_seconds"]), times)
        if problem:
            raise DataError(problem)
        return value[kind]

    def mel(wave: np.ndarray, sr: int) -> np.ndarray:
        return log_mel(slice_audio(wave, sr, times, cfg.slice_seconds), cfg).numpy()

    out = {"times": times, "mel": entry("mel", {**base, "cfg": cfg}, cfg.sample_rate, mel)}
    if wave_sr is not None:
        out["wave"] = entry("wave", {**base, "sr": int(wave_sr)}, int(wave_sr),
                            lambda wave, sr: slice_audio(wave, sr, times, cfg.slice_seconds))
    return out


def dataset_features(ds: MusicDataset, song_ids: list[str], cfg: MelConfig, cache: FeatureCache,
                     wave_sr: int | None = None) -> dict[str, dict[str, np.ndarray]]:
    """song_features for each song; a song whose audio fails is noted in ds.problems and skipped."""
    out = {}
    for sid in tqdm(song_ids, desc="features", unit="song"):
        try:
            out[sid] = song_features(ds.songs[sid], cfg, cache, wave_sr=wave_sr)
        except DataError as exc:
            ds.problems.append(f"features skipped for song {sid}: {exc}")
    return out
