"""openSMILE frame features as DEAM and PMEmo ship them: 65 IS13 ComParE LLDs and their deltas, mean and std
over 1 s windows every 0.5 s (260 features at 2 Hz), with the published column names and order.

What the datasets ran, and what this module does about it (sources named in brackets):
- The configuration is openSMILE's ``IS13_ComParE_lld-func.conf`` [public copy: KinWaiCheuk/
  IJCNN2020_music_emotion, IS13_ComParE_lld-func.conf]: the IS13 ComParE LLD chain (65 sma-smoothed LLDs and
  their deltas, 10 ms steps), then ONE cFunctionals over both with frameMode=fix, frameSize=1.0, frameStep=0.5,
  frameCenterSpecial=left and only Moments.stddev and Moments.amean, written by a cCsvSink (';', a frameTime
  column, no frame index).
- openSMILE's moments [audeering/opensmile src/functionals/functionalMoments.cpp]: stddev is the population
  std (sum of squares / N; 0 when the variance is 0); for each input element the enabled moments come in the
  order stddev, amean, named ``<lld>_stddev``, ``<lld>_amean`` [src/functionals/functionals.cpp]. Hence
  DEAM's columns: frameTime, then per LLD (65) and then per delta (65) its stddev and its amean.
- frameTime is the time of the window's first LLD frame (frameCenterSpecial=left, winToVecProcessor.cpp):
  0.0, 0.5, 1.0, ... s; the row at t summarises the LLD frames that start in [t, t + 1 s). Public code that
  reads DEAM's ``features/<id>.csv`` (';') skips its first 30 rows to start at 15 s and maps frameTime t to the
  annotation column sample_<1000 t>ms, i.e. DEAM's first row is frameTime 0.
- SMILExtract drops a last window shorter than 1 s (winToVecProcessor: noPostEOIprocessing=1,
  allowLastFrameIncomplete=0): a 45 s clip gets rows 0-43.5 s, so labels 44 and 44.5 s have no row. PMEmo's
  own summariser [HuiZhangDB/PMEmo features.py] keeps shortened last windows: floor(N / 50) rows over N LLD
  rows, window i = rows [50 i, 50 i + 100), frameTime i * 0.5 from 0, np.mean / np.std (population).
  ``SmileConfig.partial_last`` chooses (default: keep every window that starts inside the audio, so a 45 s
  clip has rows up to 44.5 s; False: SMILExtract's rule).
- PMEmo's long file [features.py: headers, _write_features_to_csv]: comma-separated musicId, frameTime, the 65
  LLD means, the 65 delta means, the 65 LLD stds, the 65 delta stds, named ``<lld>_mean`` / ``<lld>_std``
  (its script also appends a 'class' column of '?', not written here). Its notebook (dynamic_MER.ipynb)
  merges the file with the annotations on (musicId, frameTime): the row at t is label t's features.
- LLDs: the opensmile wheel (2.6, openSMILE 3) ships ``config/is09-13/IS13_ComParE.conf``, whose LLD part has
  the components and settings of lld-func's (it keeps zeroPadSymmetric=0 and useBrokenJitterThresh=1 for
  compatibility with openSMILE <= 2.2, which both datasets used); it is the default here. Its MFCCs are named
  ``mfcc_sma[k]`` where lld-func's are ``pcm_fftMag_mfcc_sma[k]`` (copyInputName=1): renamed. The wheel's
  ComParE_2016 LLDs (``feature_set="ComParE_2016"``) have the same 65 names; measured on a tone in noise they
  equal IS13's except jitterLocal, jitterDDP and shimmerLocal (the fixed jitter threshold).
- Differences that remain: openSMILE 3.x instead of 2.x; MP3 decoding by libsndfile (mpg123) here instead of
  a WAV made by ffmpeg/pydub (decoder delay handling may shift the signal by a few ms); the wheel quantises to
  16 bits as a WAV file would (samples are clipped to [-1, 32767/32768] first). openSMILE runs at the audio's
  own rate (DEAM and PMEmo: 44.1 kHz; spectral descriptors depend on it). Where 10 ms is not a whole number of
  samples (22050 Hz, the synthetic default) openSMILE rounds its LLD step (221 samples = 10.023 ms); windows
  are chosen by LLD start time, so frameTime stays on the 0.5 s grid where SMILExtract would drift.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import opensmile
import soxr

from dsaml_utils.errors import DataError, UserError
from dsaml_utils.features.audio import load_audio

FEATURE_SETS = ("IS13_ComParE", "ComParE_2016")
N_LLD = 65  # low-level descriptors; as many deltas
MIN_SECONDS = 0.1  # shorter audio gives openSMILE fewer than two 60 ms LLD frames
DEAM_DELIMITER = ";"
PMEMO_DELIMITER = ","


@dataclass
class SmileConfig:
    """How frame features are computed; the defaults reproduce IS13_ComParE_lld-func as the datasets ran it."""

    feature_set: str = "IS13_ComParE"  # LLD config: "IS13_ComParE" (the wheel's is09-13 file) or "ComParE_2016"
    window_seconds: float = 1.0  # summary window (lld-func: cFunctionals frameSize = 1.0)
    step_seconds: float = 0.5  # one row per step, frameTime = its window's start (lld-func: frameStep = 0.5)
    partial_last: bool = True  # keep windows cut short by the audio's end (as PMEmo's script); False: SMILExtract
    sample_rate: int | None = None  # resample to this rate before openSMILE; None: the audio's own rate

    def __post_init__(self) -> None:
        if self.feature_set not in FEATURE_SETS:
            raise UserError(f"SmileConfig.feature_set {self.feature_set!r}: expected one of {', '.join(FEATURE_SETS)}")
        if not 0 < self.step_seconds <= self.window_seconds:
            raise UserError("SmileConfig: need 0 < step_seconds <= window_seconds")
        if self.sample_rate is not None and self.sample_rate < 8000:
            raise UserError("SmileConfig.sample_rate must be >= 8000 Hz (or None)")


@dataclass
class FrameSummary:
    """One song's summary rows: mean and std of each LLD and delta over the window starting at each time."""

    times: np.ndarray  # [J] frameTime (s): 0, step, 2 step, ...
    mean: np.ndarray  # [J, 130] float64, columns in `names` order
    std: np.ndarray  # [J, 130] float64, population std
    names: list[str]  # the 65 LLD names then the 65 delta names, as lld-func names them


def published_name(name: str) -> str:
    """The lld-func name of an LLD or delta the wheel calls `name` (only the MFCCs differ)."""
    return "pcm_fftMag_" + name if name.startswith("mfcc_sma") else name


@functools.lru_cache(maxsize=None)
def _smile(feature_set: str) -> opensmile.Smile:
    """An openSMILE extractor of the 65 LLDs and their deltas in one pass: one reader over the levels 'lld' and
    'lld_de', as lld-func's cFunctionals reads them (measured: equal to two separate runs, common rows)."""
    lld = opensmile.Smile(feature_set=opensmile.FeatureSet.ComParE_2016,
                          feature_level=opensmile.FeatureLevel.LowLevelDescriptors)
    if feature_set == "ComParE_2016":
        fs = lld.config_path
    else:  # a config file inside the installed wheel (nothing fetched at run time)
        fs = os.path.join(lld.default_config_root, "is09-13", "IS13_ComParE.conf")
    return opensmile.Smile(feature_set=fs, feature_level="lld;lld_de")


def lld_frames(wave: np.ndarray, sr: int, cfg: SmileConfig | None = None) -> tuple[np.ndarray, int, list[str]]:
    """openSMILE's LLD and delta rows of a mono waveform: ([N, 130] float64, LLD step in samples, names)."""
    cfg = cfg or SmileConfig()
    wave = np.clip(np.asarray(wave, dtype=np.float32), -1.0, 32767 / 32768)  # the wheel casts x * 32768 to int16
    if wave.ndim != 1:
        raise ValueError(f"lld_frames expects a mono 1-D waveform, got shape {wave.shape}")
    too_short = DataError(f"{len(wave) / sr:.3f} s of audio is too short for openSMILE's 60 ms LLD frames")
    if len(wave) < MIN_SECONDS * sr:
        raise too_short
    df = _smile(cfg.feature_set).process_signal(wave, sr)
    values = df.to_numpy(np.float64)
    if len(values) < 2 or not np.isfinite(values).all():
        raise too_short
    starts = df.index.get_level_values("start").total_seconds().to_numpy()
    hop = int(round((starts[1] - starts[0]) * sr))
    names = [published_name(n) for n in df.columns]
    if len(names) != 2 * N_LLD:
        raise RuntimeError(f"openSMILE gave {len(names)} LLD and delta columns, expected {2 * N_LLD}")
    return values, hop, names


def window_rows(n_rows: int, hop: int, sr: int, cfg: SmileConfig) -> list[tuple[int, int]]:
    """[lo, hi) LLD rows of each summary window: the rows whose start (row * hop samples) lies in the window.

    At 10 ms LLD steps this is rows [50 j, 50 j + 100) (PMEmo's rule, and SMILExtract's frame counts).
    """
    step, size = int(round(cfg.step_seconds * sr)), int(round(cfg.window_seconds * sr))
    out = []
    for j in range(n_rows * hop // step + 2):
        lo = -(-j * step // hop)  # ceil: first row starting at or after the window start
        hi = min(n_rows, -(-(j * step + size) // hop))
        full = -(-(j * step + size) // hop) <= n_rows
        if lo >= n_rows or not (full or cfg.partial_last):
            break
        out.append((lo, hi))
    return out


def frame_summary(wave: np.ndarray, sr: int, cfg: SmileConfig | None = None) -> FrameSummary:
    """The 260 features of one waveform: per window, each LLD's and delta's mean and population std."""
    cfg = cfg or SmileConfig()
    if cfg.sample_rate is not None and cfg.sample_rate != sr:
        wave, sr = soxr.resample(np.asarray(wave, np.float32), sr, cfg.sample_rate, quality="HQ"), cfg.sample_rate
    values, hop, names = lld_frames(wave, sr, cfg)
    rows = window_rows(len(values), hop, sr, cfg)
    if not rows:
        raise DataError(f"{len(wave) / sr:.3f} s of audio holds no complete {cfg.window_seconds:g} s window")
    mean = np.stack([values[lo:hi].mean(axis=0) for lo, hi in rows])
    std = np.stack([values[lo:hi].std(axis=0) for lo, hi in rows])  # two-pass, divides by N as openSMILE does
    times = np.arange(len(rows)) * cfg.step_seconds
    return FrameSummary(times, mean, std, names)


def song_summary(path: str | Path, cfg: SmileConfig | None = None) -> FrameSummary:
    """frame_summary of an audio file (decoded and mixed to mono by features.audio); DataError names the file."""
    wave, sr = load_audio(path)
    try:
        return frame_summary(wave, sr, cfg)
    except DataError as exc:
        raise DataError(f"{path}: {exc}") from None


def deam_columns(names: list[str]) -> list[str]:
    """DEAM's header: frameTime, then each LLD's and delta's stddev and amean, in that order."""
    return ["frameTime"] + [f"{n}_{f}" for n in names for f in ("stddev", "amean")]


def pmemo_columns(names: list[str]) -> list[str]:
    """PMEmo's header: musicId, frameTime, the 130 means, then the 130 stds (LLDs before deltas in each)."""
    return ["musicId", "frameTime"] + [f"{n}_mean" for n in names] + [f"{n}_std" for n in names]


def deam_values(s: FrameSummary) -> np.ndarray:
    """[J, 260] values in DEAM's column order (after frameTime)."""
    return np.stack([s.std, s.mean], axis=2).reshape(len(s.times), -1)


def pmemo_values(s: FrameSummary) -> np.ndarray:
    """[J, 260] values in PMEmo's column order (after musicId and frameTime)."""
    return np.concatenate([s.mean, s.std], axis=1)


def _cell(x: float) -> str:
    """A value as openSMILE's cCsvSink prints it: '%e', or '%.0f' when it is a whole number."""
    return f"{x:.0f}" if x == np.floor(x) else f"{x:e}"


def _rows(times: np.ndarray, values: np.ndarray, delimiter: str, prefix: str = "") -> list[str]:
    """Text rows: prefix, frameTime ('%f', as cCsvSink prints it), then the values."""
    return [prefix + delimiter.join([f"{t:f}"] + [_cell(x) for x in row]) for t, row in zip(times, values)]


def deam_text(s: FrameSummary) -> str:
    """One song's file in DEAM's layout (features/<song_id>.csv, ';'-separated)."""
    lines = [DEAM_DELIMITER.join(deam_columns(s.names))] + _rows(s.times, deam_values(s), DEAM_DELIMITER)
    return "\n".join(lines) + "\n"


def pmemo_text(rows: dict[str, FrameSummary], header: bool = True) -> str:
    """Songs in PMEmo's long layout (features/dynamic_features.csv, ','), keyed by musicId, in the given order."""
    if not rows:
        raise ValueError("pmemo_text needs at least one song")
    first = next(iter(rows.values()))
    lines = [PMEMO_DELIMITER.join(pmemo_columns(first.names))] if header else []
    for sid, s in rows.items():
        if s.names != first.names:
            raise ValueError(f"song {sid}: feature names differ from the first song's")
        lines += _rows(s.times, pmemo_values(s), PMEMO_DELIMITER, prefix=f"{sid}{PMEMO_DELIMITER}")
    return "\n".join(lines) + "\n"
