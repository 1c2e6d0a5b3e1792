"""The global embeddings of protocol "authors" (issue 11 point 4), as the DSAML authors' code computes them.

Littleor/Personalized-DMER script/dataset.py caches one ImageBind embedding per song ("global"), through
models/image_bind.py `get_embedding` and utils/music/util.py `music_segmentation`, on the mono mix at
44.1 kHz (``ImageBindEncoder(native_rate=True)``, with pytorchvideo 0.1.5's clip spacing):

- a training song: one embedding of [15 s, 15 s + feature_num_per_audio // 2) = 15-45 s, cut from the file
  and zero-padded to its full length (`read_wav_as_tensor`); here [t_0, t_0 + window / 2 s) with t_0 the
  song's first label time (15 s on DEAM) and `window` the training window in steps (60): `embed_padded`.
- a test song: one embedding per label step i, of a 30 s window centred on the step's start t_0 + 0.5 i
  (`generate_split_duration_list(length_each_clip=30, begin_time=15, slide_start=0)`), taken from the
  audio after t_0; a window past either end is filled by repeating the audio at that end (`step_ranges`):
  `embed_steps`, [T, D]. utils/inference.py `slide_inference` and utils/dataset.py `split_batch_seq` slice
  it with the other inputs, so each window of the model sees the embeddings of its own steps.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from dsaml_utils.data.types import HOP_SECONDS
from dsaml_utils.encoders.registry import GlobalEncoder, embedding_key
from dsaml_utils.errors import DataError
from dsaml_utils.features.cache import FeatureCache

TEST_WINDOW_SECONDS = 30.0  # script/dataset.py: length_each_clip=30 for the test songs' "global"
STEPS_PER_CALL = 20  # windows per ImageBind forward (theirs: 60 segments)


def padded_excerpt(wave: np.ndarray, sr: int, start: float, duration: float) -> np.ndarray:
    """Samples int(start * sr) .. int((start + duration) * sr) of `wave`, zero-padded at the end to
    int(duration * sr) samples when the audio stops sooner (utils/music/util.py `read_wav_as_tensor`)."""
    part = wave[int(start * sr):int((start + duration) * sr)]
    return np.pad(part, (0, max(0, int(sr * duration - len(part)))))


def step_ranges(n: int, step: int, sr: int, half: float = TEST_WINDOW_SECONDS / 2,
                hop: float = HOP_SECONDS) -> list[tuple[int, int]]:
    """Sample ranges [a, b) of an n-sample wave (the audio from t_0 on) whose concatenation is step `step`'s
    window, [r - half, r + half) s with r = step * hop (utils/music/util.py `music_segmentation`):

    - r < half (the start): the first int((r + half) * sr) samples, preceded by the first int((half - r) * sr)
      of them (the start repeated);
    - else, r + half past the end: from int((r - half) * sr) to the end, followed by the last
      int((r + half) * sr - n) samples (the end repeated);
    - else [int((r - half) * sr), int((r + half) * sr)).
    """
    a, b = step * hop - half, step * hop + half
    if a < 0:
        stop = min(int(b * sr), n)
        return [(0, min(-int(a * sr), stop)), (0, stop)]
    if b * sr > n:
        start, extra = int(a * sr), int(b * sr - n)
        cut = max(n - start, 0) - extra  # their `current[:, current.size(1) - overlap:]`, a Python slice start
        return [(start, n), (start + (cut if cut >= 0 else max(n - start + cut, 0)), n)]
    return [(int(a * sr), int(b * sr))]


def step_window(wave: np.ndarray, step: int, sr: int) -> np.ndarray:
    """The samples of step `step`'s window (`step_ranges`) of a wave that starts at t_0."""
    return np.concatenate([wave[a:b] for a, b in step_ranges(len(wave), step, sr)])


def _key(encoder: GlobalEncoder, audio_path: Path, **rule) -> dict:
    return embedding_key(encoder, audio_path, protocol="authors", **rule)


def embed_padded(encoder: GlobalEncoder, audio_path: str | Path, cache: FeatureCache | None, start: float,
                 duration: float) -> np.ndarray:
    """[dim] embedding of audio [start, start + duration) s zero-padded to `duration` (a training song), cached."""
    audio_path = Path(audio_path)

    def compute() -> np.ndarray:
        wave, sr = encoder.load(audio_path)
        if int(start * sr) >= len(wave):
            raise DataError(f"{audio_path}: excerpt starts at {start} s but the audio lasts {len(wave) / sr:.2f} s")
        return np.asarray(encoder.embed(padded_excerpt(wave, sr, start, duration)), dtype=np.float32)

    if cache is None:
        return compute()
    return cache.get_or_compute("global", _key(encoder, audio_path, start=start, duration=duration, pad="zeros"),
                                compute)


def embed_steps(encoder: GlobalEncoder, audio_path: str | Path, cache: FeatureCache | None, start: float,
                n_steps: int, progress: bool = False) -> np.ndarray:
    """[n_steps, dim] embeddings of the 30 s windows centred on steps start + 0.5 i (a test song), cached."""
    audio_path = Path(audio_path)

    def compute() -> np.ndarray:
        wave, sr = encoder.load(audio_path)
        wave = wave[int(start * sr):]  # read_wav_as_tensor(duration=(15, None))
        if len(wave) == 0:
            raise DataError(f"{audio_path}: labels start at {start} s but the audio ends before")
        out = []
        for i in tqdm(range(0, n_steps, STEPS_PER_CALL), desc=f"per-step global ({audio_path.name})",
                      unit="call", disable=not progress, leave=False):
            waves = [step_window(wave, j, sr) for j in range(i, min(i + STEPS_PER_CALL, n_steps))]
            out.append(encoder.embed_many(waves))
        return np.concatenate(out).astype(np.float32, copy=False).reshape(n_steps, encoder.dim)

    if cache is None:
        return compute()
    key = _key(encoder, audio_path, start=start, steps=n_steps, hop=HOP_SECONDS, window=TEST_WINDOW_SECONDS)
    return cache.get_or_compute("global_steps", key, compute)
