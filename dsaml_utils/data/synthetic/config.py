"""What shapes a synthetic dataset: its configuration, the listener model, the layout, the random streams."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from dsaml_utils.seeding import generator

# DEAM's folders, relative to the dataset root.
AUDIO_DIR = Path("DEAM_audio/MEMD_audio")
ANN_DIR = Path("DEAM_Annotations/annotations")
AVG_DYNAMIC_DIR = ANN_DIR / "annotations averaged per song" / "dynamic (per second annotations)"
STATIC_DIR = ANN_DIR / "annotations averaged per song" / "song_level"
RATER_DYNAMIC_DIR = ANN_DIR / "annotations per each rater" / "dynamic (per second annotations)"
STATIC_CLIPS_FILE = "static_annotations_averaged_songs_1_2000.csv"
STATIC_FULL_FILE = "static_annotations_averaged_songs_2000_2058.csv"
TRUTH_DIR = Path("synthetic_truth")

LABEL_START = 15.0  # DEAM's first label time (s)
CONTROL_RATE = 20  # Hz; latent, music parameters and listener simulation live on this grid
FIRST_FULL_ID = 2001
SECTION_SECONDS = (9.0, 13.0)  # range of typical section lengths (s)
CROSSFADE = 1.0  # s; the emotion changes between sections over this long

# Measured with the default SynthConfig (seed 0) by listener_divergence; see the package docstring.
DEFAULT_DIVERGENCE = {
    "listener_vs_mean_rmse": (0.220, 0.310),
    "listener_vs_mean_ccc": (0.592, 0.246),
    "listener_vs_truth_rmse": (0.264, 0.365),
    "listener_vs_truth_ccc": (0.554, 0.344),
    "mean_vs_truth_rmse": (0.175, 0.287),
    "mean_vs_truth_ccc": (0.670, 0.327),
}
# Measured with the default SynthConfig (seed 0) by personalization_headroom (720 pairs, 8 listeners).
DEFAULT_HEADROOM = {
    "mean_ccc": (0.743, 0.262),
    "recalibrated_ccc": (0.895, 0.755),
    "headroom": (0.153, 0.493),
}


@dataclass
class ListenerModel:
    """Distributions of the listener parameters (per dimension unless said otherwise)."""

    offset_sd: float = 0.25  # constant bias added to the perceived emotion (a stable trait)
    gain_log_sd: float = 0.35  # gain = exp(N(0, gain_log_sd)) (a stable trait)
    lag_max: float = 2.0  # reaction lag = lag_max * Beta(lag_beta) s
    lag_beta: tuple[float, float] = (1.5, 3.0)  # mean lag = lag_max / 3
    tau_range: tuple[float, float] = (0.2, 1.0)  # exponential smoothing time constant (s)
    squash_range: tuple[float, float] = (0.3, 1.5)  # y = tanh(k x) / k: compresses the extremes
    noise_range: tuple[float, float] = (0.02, 0.06)  # AR(1) annotation noise sd, uniform in range
    noise_memory: float = 1.5  # AR(1) noise time constant (s)
    song_offset_sd: float = 0.03  # extra offset redrawn for every song the listener rates
    invert_fraction: float = 0.3  # share of each group who hear valence inverted (>= 1 of 2 or more)
    static_sd: float = 0.5  # noise of the 1..9 song-level rating


@dataclass
class SynthConfig:
    """Everything that shapes a synthetic dataset; the same config and seed give the same bytes."""

    seed: int = 0
    songs: int = 120  # 45 s clips, ids 2 .. songs + 1 (training split)
    full_songs: int = 10  # long songs, ids 2001 .. (test split)
    anonymous_songs: int = 24  # the first clips: per-rater files without WorkerId (DEAM 2013 style)
    listeners: int = 24  # training listeners (annotate clips)
    test_listeners: int = 8  # held-out listeners (annotate only full songs)
    lazy_listeners: int = 2  # near-flat raters of clips, removed by the authors' flat filter
    raters_per_song: int = 6  # raters per clip
    raters_per_full_song: int = 8  # raters per full song (drawn from the test listeners)
    sample_rate: int = 22050  # Hz of the written MP3s (loaders resample)
    clip_seconds: float = 45.0  # duration of a clip
    full_seconds: tuple[float, float] = (60.0, 90.0)  # full-song duration range (s)
    swap_static_le_1000: bool = True  # reproduce public DEAM's swapped static columns for ids <= 1000
    workers: int = 2  # threads rendering and encoding songs (output does not depend on it)
    listener_model: ListenerModel = field(default_factory=ListenerModel)


@dataclass
class SynthSummary:
    """What generate() wrote; counts are those a DEAM loader should find."""

    root: Path
    songs_annotated: int  # songs with a MEAN curve (clips + full songs)
    songs_with_audio: int
    clips: int
    test_songs: int  # full songs
    anonymous_songs: int
    listeners: int  # identified listeners (train + lazy + test)
    train_listeners: int
    test_listeners: int
    lazy_listeners: int
    listener_curves: int  # identified (song, listener) curves
    anonymous_curves: int  # rater rows without WorkerId
    min_clips_per_train_listener: int
    min_full_songs_per_test_listener: int
    train_ids: list[str]
    test_ids: list[str]
    seconds: float  # wall time of generate()

    def to_json(self) -> dict:
        """The summary as JSON-ready values."""
        d = dataclasses.asdict(self)
        d["root"] = str(self.root)
        return d


def stream(cfg: SynthConfig, *key: int) -> np.random.Generator:
    """An independent random stream for (seed, *key), so results never depend on processing order."""
    return generator(cfg.seed, *key)
