"""Frame features as model input: each song's openSMILE rows on its label grid, z-scored with statistics of the
training songs only, which travel with the run (model.pt and checkpoint.pt, key "frame_norm").

A model that reads "frames" (seed 003's family, DSAML with ``frontend="frames"``) gets ``SongData.inputs
["frames"]`` [T, K]: row i is the summary of the audio [t_i, t_i + 1 s) whose window starts at label time t_i
(``data.frames``). Features differ in scale by orders of magnitude (energies near 1e-3, spectral centroids near
1e3 Hz), so every column is standardised: (x - mean) / std over all steps of the run's training songs. The
test songs never contribute: their statistics would leak the test split into the input. A constant column
(std 0) keeps std 1, i.e. it is only centred.

A listener's own audio (`dsaml personalize`, notebook 09: a dataset named "personal") has no feature files:
its features are computed from the audio with ``features.opensmile`` in the column order the run was
trained on (DEAM's or PMEmo's), then aligned like a file's rows.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dsaml_utils.data.frames import FrameTable, SongFrames, align_rows, load_frame_features
from dsaml_utils.data.types import MEAN, MusicDataset
from dsaml_utils.errors import DataError, UserError
from dsaml_utils.features.opensmile import deam_columns, deam_values, pmemo_columns, pmemo_values, song_summary
from dsaml_utils.features.songs import SongData, align_curve

PERSONAL = "personal"
"""Name of the datasets built from a listener's own audio files (features computed from the audio)."""

MIN_STD = 1e-8
"""Below this a column counts as constant (std replaced by 1)."""


@dataclass
class FrameNorm:
    """Per-feature mean and std of the training songs' frame features."""

    names: list[str]  # feature columns, in file order
    mean: np.ndarray  # [K] float64
    std: np.ndarray  # [K] float64, 1 where a column is constant
    songs: int  # training songs the statistics come from
    steps: int  # their steps (rows)

    @classmethod
    def fit(cls, frames: list[SongFrames]) -> "FrameNorm":
        """Statistics over every step of these songs (all with the same columns)."""
        if not frames:
            raise UserError("no training song has frame features: the normalisation has nothing to learn from")
        x = np.concatenate([f.values for f in frames]).astype(np.float64)
        std = x.std(axis=0)
        return cls(list(frames[0].names), x.mean(axis=0), np.where(std < MIN_STD, 1.0, std), len(frames), len(x))

    def apply(self, values: np.ndarray) -> np.ndarray:
        """Standardised [T, K] float32."""
        return ((values - self.mean) / self.std).astype(np.float32)

    def to_dict(self) -> dict:
        """A plain dict (lists and numbers) for a checkpoint or a JSON file."""
        return {"names": list(self.names), "mean": self.mean.tolist(), "std": self.std.tolist(),
                "songs": self.songs, "steps": self.steps}

    @classmethod
    def from_dict(cls, d: dict) -> "FrameNorm":
        """Inverse of to_dict."""
        return cls(list(d["names"]), np.asarray(d["mean"], np.float64), np.asarray(d["std"], np.float64),
                   int(d["songs"]), int(d["steps"]))


def frame_store(ds: MusicDataset, song_ids: list[str], norm: FrameNorm | None, frames_dim: int,
                fit_ids: list[str] | None = None, progress: bool = True) -> tuple[dict[str, SongData], FrameNorm]:
    """SongData with input "frames" for each of `song_ids` that has features, and the normalisation used.

    fit_ids: fit a new FrameNorm on these songs (the run's training songs); otherwise `norm` (the run's) is
    used. Songs without usable features are reported in ds.problems and skipped (``data.frames``)."""
    if fit_ids is None and norm is None:
        raise UserError("this model reads frame features but carries no normalisation statistics; load it with "
                        "training.runs.load_run_model from its run folder")
    wanted = sorted(set(song_ids) | set(fit_ids or ()))
    try:
        frames = (audio_frames(ds, wanted, norm.names) if ds.name == PERSONAL and norm is not None
                  else load_frame_features(ds, song_ids=wanted, progress=progress))
    except DataError as exc:
        raise UserError(str(exc)) from None
    if fit_ids is not None:
        norm = FrameNorm.fit([frames[s] for s in fit_ids if s in frames])
    some = next(iter(frames.values()), None)
    if some is not None and some.names != norm.names:
        raise UserError(f"{ds.root}: the feature columns ({len(some.names)}, first {some.names[0]!r}) are not the ones "
                        f"the model was trained on ({len(norm.names)}, first {norm.names[0]!r})")
    if len(norm.names) != frames_dim:
        raise UserError(f"{ds.root}: the feature files have {len(norm.names)} features per step but the model reads "
                        f"{frames_dim}; set the model's frames_dim to {len(norm.names)} "
                        f"(dsaml train --set model_config.frames_dim={len(norm.names)})")
    store = {}
    for sid in song_ids:
        if sid not in frames:
            continue
        sf = frames[sid]
        labels = {lst: align_curve(c, sf.times) for lst, c in ds.songs[sid].curves.items()}
        store[sid] = SongData(sid, sf.times.copy(), {"frames": norm.apply(sf.values)}, labels)
    return store, norm


def audio_frames(ds: MusicDataset, song_ids: list[str], names: list[str]) -> dict[str, SongFrames]:
    """Frame features computed from each song's audio, columns in `names`' layout (DEAM's or PMEmo's), on the
    song's MEAN label times; a song whose audio fails is reported in ds.problems and skipped."""
    out = {}
    for sid in song_ids:
        song = ds.songs[sid]
        if song.audio_path is None or MEAN not in song.curves:
            ds.problems.append(f"song {sid}: no audio to compute its frame features from; skipped")
            continue
        try:
            summary = song_summary(song.audio_path)
        except DataError as exc:
            ds.problems.append(f"song {sid} skipped: {exc}")
            continue
        layouts = {tuple(deam_columns(summary.names)[1:]): deam_values,
                   tuple(pmemo_columns(summary.names)[2:]): pmemo_values}
        if tuple(names) not in layouts:
            raise UserError(f"{song.audio_path}: the model was trained on {len(names)} frame features (first "
                            f"{names[0]!r}) that openSMILE's IS13 set does not give; it cannot read this audio")
        values = layouts[tuple(names)](summary)
        table = FrameTable(song.audio_path, list(names), None, summary.times, values, np.arange(len(values)))
        frames = align_rows(table, np.arange(len(values)), sid, song.curves[MEAN].times, ds.problems)
        if frames is not None:
            out[sid] = frames
    return out
