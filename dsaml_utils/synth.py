"""A synthetic music-emotion dataset in DEAM's exact layout, with listeners who differ like people do.

DEAM cannot be downloaded here, so the default workbook runs on this generator's output. It is built so that
every stage of DSAML has something real to learn: the audio carries its emotion the way music does, the
emotion changes between sections that come back later (long-range context matters), and listeners disagree
in the ways that make personalization (PDMER) worth doing.

1. Latent emotion (the hidden truth). Each song has a form such as ``A B A' C A``: sections of 9-13 s, of
   which some return. Every distinct section letter gets an (arousal, valence) pair in [-0.85, 0.85] (song
   centre + letter offset); a return (A') repeats its letter's music and emotion with a small perturbation.
   Within a section the emotion drifts slowly (a linear trend plus a gentle wobble); at a boundary it
   changes over ~1 s. The latent lives on a 20 Hz control grid and drives both the audio and the labels.

2. Music from the latent (vectorised additive synthesis: wavetable notes summed with ``np.bincount``).
   Arousal (as drive d = (a + 1) / 2 in [0, 1]) sets
   - tempo: 62 + 116 d BPM (62-178), integrated from the latent, so tempo follows within-section drift;
   - note density: melody on every beat, eighths with probability ~1.5 d, sixteenths ~1.6 d - 0.7;
     hi-hat clicks on the sixteenth grid likewise; snare on beats 2 and 4 once d > 0.4; chords re-struck
     every beat instead of every two beats when d > 0.55;
   - loudness: -16 dB to -2 dB across d, times a per-song mastering gain of +-4 dB (so loudness is a
     cue within a song but not a perfect one across songs);
   - brightness: every note mixes a dark wavetable (3 harmonics, 1/h^2.5) with a bright one (up to 16
     harmonics, 1/h^0.9) in proportion to d; a high-passed noise bed rises with d^2; attacks get sharper.
   Valence (v in [-1, 1]) sets
   - mode: notes and chords come from the parallel major scale when v > 0 and the natural minor when
     v <= 0 (chords are stacked scale thirds, so the triad qualities follow the mode);
   - consonance vs dissonance: for v < 0 chords gain a clashing voice (a minor second above the root,
     plus a tritone below v = -0.4) and detuned partner voices that beat (roughness), all growing with -v;
   - register: melody and chords move up to 6 scale steps up at v = 1 and down at v = -1.
   (With 3 scale steps and quieter dissonant voices, valence was hard to hear: a ridge probe on pooled
   96-band log-mel slices reached CCC 0.54 against the true valence on the test songs, 0.75 now, with the
   arousal probe at 0.92; see docs/audio_probe.py. The labels did not change: the audio uses no extra
   random draws.)
   Each section letter owns a 4-chord progression and an 8-note melodic motif, so a returning section
   sounds like its first occurrence. Kick drum on every beat, bass on the chord root; the mix is
   soft-clipped with tanh and written as MP3 by libsndfile (same seed, same bytes).

3. True curves. Label i has time t_i = 15.0, 15.5, ... (DEAM drops the first 15 s) for every t_i with
   t_i + 0.5 <= duration, and equals the latent averaged over [t_i, t_i + 0.5) (a 45 s clip has 60).

4. Listeners. Each listener has, per dimension, an offset (sd 0.25), a log-normal gain (log sd 0.35), a
   reaction lag in [0, 2] s (2 x Beta(1.5, 3), mean 0.67 s; the slider sits at 0 until they react),
   exponential smoothing with a time constant of 0.2-1.0 s (starting from 0, which is why early labels are
   unreliable), a squash tanh(k x) / k with k in 0.3-1.5 (compresses the extremes, more for larger k),
   AR(1) annotation noise (sd 0.02-0.06, 1.5 s memory) and a small per-song offset (sd 0.03). A minority
   (``invert_fraction`` = 30 % of each group, rounded, at least one in a group of two or more) hears
   valence inverted. The stable traits (offset, gain, squash, inversion) outweigh the per-song noise, as
   with real annotators who use the scale in their own way, so a listener's other songs say how they will
   rate the next one: that is what personalization can learn. Curves are clipped to
   [-1, 1] and written with 4 decimals; the MEAN curve of a song is the average of its raters' written
   curves (as in DEAM), written with 6 decimals.
   - training listeners (``listeners``) annotate the 45 s clips, balanced so each rates about
     ``(songs - anonymous_songs) * raters_per_song / (listeners + lazy_listeners)`` identified clips
     (default 22-23: enough for the authors' "more than 15 songs" filter);
   - lazy listeners (``lazy_listeners``) rate clips too but hardly move the slider: every one of their
     curves is removed by the authors' flat filter (``data.is_flat``);
   - test listeners (``test_listeners``) rate only the full songs (by default each of the 8 rates all
     10), so PDMER is evaluated on listeners never seen in training, with up to 9 support songs (k-shot);
   - the first ``anonymous_songs`` clips (ids 2..) are rated by training listeners whose identity is not
     written: their per-rater files have no ``WorkerId`` column, like DEAM's 2013 set.
   Static (song-level) ratings: each rater gives round(5 + 4 * mean(own curve) + N(0, 0.5)) on 1..9.

   How much listeners differ, as measured by ``listener_divergence`` on the default dataset (seed 0;
   identified listeners' non-flat curves, scored per song, averaged per listener, then over listeners;
   arousal / valence): a listener against the MEAN curve RMSE 0.22 / 0.31, CCC 0.59 / 0.25; a listener
   against the hidden truth RMSE 0.26 / 0.37, CCC 0.55 / 0.34; the MEAN curve against the truth RMSE
   0.17 / 0.29, CCC 0.67 / 0.33. The MEAN is closer to the truth than a single listener, but not equal
   to it: every listener reacts late and smooths (the MEAN lags the music), and the inverted minority
   shrinks the mean valence. ``DEFAULT_DIVERGENCE`` holds these numbers.

   How much an ideal personalizer could gain, as measured by ``personalization_headroom`` (held-out
   listeners, every ordered pair of their songs: a linear recalibration a + b * MEAN fitted on the first
   60 labels of one song, scored by CCC on the other): the MEAN curve scores 0.74 / 0.26 against a held-out
   listener, the recalibrated MEAN 0.90 / 0.76, a headroom of +0.15 / +0.49 (``DEFAULT_HEADROOM``). With
   the earlier, noise-dominated listener model (offset sd 0.15, gain log sd 0.25, 20 % inverted, noise
   0.03-0.10, per-song offset 0.05, lag up to 3 s) it was -0.01 / +0.20.

5. Layout written under ``out`` (DEAM's, see SPEC section 2)::

     DEAM_audio/MEMD_audio/<id>.mp3                      clips 2.. (45 s) and full songs 2001.. (60-90 s)
     DEAM_Annotations/annotations/annotations averaged per song/dynamic (per second annotations)/
         arousal.csv, valence.csv          song_id,sample_15000ms,...  (empty cells past a song's end)
     DEAM_Annotations/annotations/annotations averaged per song/song_level/
         static_annotations_averaged_songs_1_2000.csv     "song_id, valence_mean, valence_std, ..."
         static_annotations_averaged_songs_2000_2058.csv  (+ max/min columns, as DEAM's 2015 file)
     DEAM_Annotations/annotations/annotations per each rater/dynamic (per second annotations)/
         arousal/<id>.csv, valence/<id>.csv   WorkerId,sample_15000ms,... (anonymous block: no WorkerId)
     synthetic_truth/truth.npz       "<id>/times" [T], "<id>/truth" [T, 2] (arousal, valence)
     synthetic_truth/listeners.json  every listener: id, role (train/test/lazy), parameters, songs rated
     synthetic_truth/songs.json      every song: duration, form, section bounds and emotions, key
     synthetic_truth/config.json     the SynthConfig and the summary

   Static swap: public DEAM copies have the valence and arousal columns of songs <= 1000 swapped in the
   1_2000 static file. ``swap_static_le_1000`` (default True, CLI ``--no-static-swap`` to turn off)
   reproduces that quirk so loaders can be tested on it; the dynamic files are never swapped.

Default size: 120 clips (24 anonymous) + 10 full songs (60-90 s), 24 training + 2 lazy + 8 test
listeners, 6 raters per clip and 8 per full song, 22.05 kHz MP3 (~40 MB on disk). It costs ~70 s of
CPU (MP3 encoding is about half), so ~40 s on two free cores with the default two threads.

Use: ``dsaml synth --out data/synthetic`` (see ``--help``), or in Python ``generate(out, SynthConfig(...))``.
``plan(cfg)`` shows who rates what without making audio, ``render_song(id, seconds, cfg)`` gives one song's
audio and truth in memory, ``load_truth(root)`` reads the hidden curves and listener records back, and
``listener_divergence(root)`` measures how far listeners are from the MEAN curves and from the truth, and
``personalization_headroom(root)`` how much a one-song recalibration of the MEAN gains on held-out listeners.
"""

from __future__ import annotations

import dataclasses
import io
import json
import shutil
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import soundfile as sf
from scipy.signal import lfilter
from tqdm.auto import tqdm

from dsaml_utils.data import HOP_SECONDS, is_flat, Curve, TaskFilter
from dsaml_utils.errors import DataError, UserError

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

# Measured with the default SynthConfig (seed 0) by listener_divergence; see the module docstring.
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


# ----------------------------------------------------------------------------------------------------
# Latent emotion: sections that return, smooth within a section


@dataclass
class _Section:
    start: float
    end: float
    letter: str
    variant: int  # 0 first time, 1 for A', ...
    arousal: float
    valence: float


def _rng(cfg: SynthConfig, *key: int) -> np.random.Generator:
    """An independent random stream for (seed, *key), so results never depend on processing order."""
    return np.random.default_rng(np.random.SeedSequence([cfg.seed, *key]))


def _plan_sections(rng: np.random.Generator, duration: float) -> list[_Section]:
    """A form such as A B A' C A with an emotion per section."""
    n = max(2, int(round(duration / rng.uniform(*SECTION_SECONDS))))
    weights = rng.uniform(0.7, 1.3, n)
    bounds = np.concatenate([[0.0], np.cumsum(weights) / weights.sum() * duration])
    letters = ["A"]
    for i in range(1, n):
        seen = sorted(set(letters) - {letters[-1]})
        if seen and rng.random() < 0.5:
            letters.append("A" if "A" in seen and rng.random() < 0.6 else seen[rng.integers(len(seen))])
        else:
            letters.append(chr(ord("A") + len(set(letters))))
    if n >= 3 and len(set(letters)) == n:
        letters[-1] = "A"  # make sure something returns
    centre = rng.uniform(-0.45, 0.45, 2)
    emotion = {ltr: centre + rng.normal(0.0, 0.38, 2) for ltr in sorted(set(letters))}
    sections, count = [], {}
    for i, ltr in enumerate(letters):
        variant = count.get(ltr, 0)
        count[ltr] = variant + 1
        a, v = np.clip(emotion[ltr] + (rng.normal(0.0, 0.1, 2) if variant else 0.0), -0.85, 0.85)
        sections.append(_Section(float(bounds[i]), float(bounds[i + 1]), ltr, variant, float(a), float(v)))
    return sections


def _latent(rng: np.random.Generator, sections: list[_Section], n: int) -> np.ndarray:
    """[n, 2] (arousal, valence) on the control grid: drift and wobble inside sections, CROSSFADE between."""
    t = np.arange(n) / CONTROL_RATE
    lat = np.zeros((n, 2))
    for s in sections:
        m = (t >= s.start) & (t < s.end)
        tau = (t[m] - s.start) / max(s.end - s.start, 1e-6)  # 0..1 inside the section
        for d, base in enumerate((s.arousal, s.valence)):
            slope = rng.normal(0.0, 0.15)
            period = rng.uniform(4.0, 10.0)
            wobble = 0.05 * np.sin(2 * np.pi * (t[m] - s.start) / period + rng.uniform(0, 2 * np.pi))
            lat[m, d] = base + slope * (tau - 0.5) + wobble
    k = int(CROSSFADE * CONTROL_RATE)  # moving average smooths the boundaries
    padded = np.pad(lat, ((k // 2, k - 1 - k // 2), (0, 0)), mode="edge")
    kernel = np.ones(k) / k
    lat = np.stack([np.convolve(padded[:, d], kernel, mode="valid") for d in range(2)], axis=1)
    return np.clip(lat, -0.95, 0.95)


def label_times(duration: float) -> np.ndarray:
    """DEAM label times of a song: 15.0, 15.5, ... while t + 0.5 <= duration."""
    n = int(np.floor((duration - LABEL_START) / HOP_SECONDS + 1e-9))
    return LABEL_START + HOP_SECONDS * np.arange(max(n, 0))


def _to_labels(x: np.ndarray, times: np.ndarray) -> np.ndarray:
    """Average a control-grid signal [n, ...] over each label's [t, t + 0.5)."""
    k = int(CONTROL_RATE * HOP_SECONDS)
    starts = np.round(times * CONTROL_RATE).astype(int)
    idx = starts[:, None] + np.arange(k)[None, :]
    return x[np.minimum(idx, len(x) - 1)].mean(axis=1)


# ----------------------------------------------------------------------------------------------------
# Music: note events rendered by wavetable lookup and summed with np.bincount

_MAJOR = np.array([0, 2, 4, 5, 7, 9, 11])
_MINOR = np.array([0, 2, 3, 5, 7, 8, 10])
_PROGRESSIONS = [[0, 3, 4, 0], [0, 5, 3, 4], [0, 4, 5, 3], [5, 3, 0, 4], [0, 1, 4, 0], [0, 3, 5, 4]]
_TABLE = 2048
_LAYERS = {"bass": 250.0, "chord": 900.0, "melody": 1600.0}  # highest fundamental of each layer (Hz)


def _wavetables(sr: int) -> np.ndarray:
    """[layers * 2, TABLE]: a dark and a bright single-cycle wave per layer, band-limited for `sr`."""
    ph = np.arange(_TABLE) / _TABLE
    tables = []
    for fmax in _LAYERS.values():
        n_harm = max(1, int(0.45 * sr / fmax))
        for n, tilt in ((min(3, n_harm), 2.5), (min(16, n_harm), 0.9)):
            h = np.arange(1, n + 1)
            w = (np.sin(2 * np.pi * np.outer(h, ph)) / h[:, None] ** tilt).sum(axis=0)
            tables.append(w / np.abs(w).max())
    return np.asarray(tables, dtype=np.float32)


def _degree_to_semitone(deg: np.ndarray, minor: np.ndarray) -> np.ndarray:
    """Scale degree (any integer) to semitones above the tonic, in the major or natural minor scale."""
    deg = np.asarray(deg)
    scale = np.where(minor[..., None], _MINOR, _MAJOR)
    step = np.take_along_axis(scale, (deg % 7)[..., None], axis=-1)[..., 0]
    return step + 12 * (deg // 7)


def _midi_hz(m: np.ndarray) -> np.ndarray:
    return 440.0 * 2.0 ** ((np.asarray(m, dtype=np.float64) - 69.0) / 12.0)


@dataclass
class _Notes:
    """Oscillator note events (parallel lists, converted to arrays for rendering)."""

    start: list = field(default_factory=list)  # s
    dur: list = field(default_factory=list)  # s
    freq: list = field(default_factory=list)  # Hz
    amp: list = field(default_factory=list)
    bright: list = field(default_factory=list)  # 0 dark .. 1 bright
    attack: list = field(default_factory=list)  # s
    decay: list = field(default_factory=list)  # s, exponential decay time constant
    layer: list = field(default_factory=list)  # index into _LAYERS

    def add(self, start, dur, freq, amp, bright, attack, decay, layer):
        n = np.broadcast(start, dur, freq, amp, bright, attack, decay).size
        for name, val in zip(
            ("start", "dur", "freq", "amp", "bright", "attack", "decay", "layer"),
            (start, dur, freq, amp, bright, attack, decay, layer),
        ):
            getattr(self, name).append(np.broadcast_to(np.asarray(val, dtype=np.float64), (n,)).ravel())

    def arrays(self) -> dict[str, np.ndarray]:
        return {k: np.concatenate(getattr(self, k)) for k in self.__dataclass_fields__}


def _render_notes(out: np.ndarray, sr: int, notes: dict[str, np.ndarray], tables: np.ndarray, rng) -> None:
    """Add every note to `out` in place: wavetable oscillator x attack/exponential-decay envelope."""
    start = np.round(notes["start"] * sr).astype(np.int64)
    length = np.minimum(np.round(notes["dur"] * sr).astype(np.int64), len(out) - start)
    keep = length > 0
    start, length = start[keep], length[keep]
    f32 = lambda x: np.ascontiguousarray(x, dtype=np.float32)  # noqa: E731
    inc = f32(notes["freq"][keep] / sr)  # cycles per sample
    phase0 = f32(rng.random(len(start)))
    amp, bright = f32(notes["amp"][keep]), f32(notes["bright"][keep])
    inv_att, inv_dec = f32(1 / (notes["attack"][keep] * sr)), f32(1 / (notes["decay"][keep] * sr))
    row = (2 * notes["layer"][keep]).astype(np.int64) * _TABLE  # offset of the layer's dark table
    flat = tables.ravel()
    # Render in batches of ~1 M samples so memory stays small for long songs.
    batch_of = np.cumsum(length) // 1_000_000
    for b in np.unique(batch_of):
        sel = np.nonzero(batch_of == b)[0]
        L = length[sel]
        nid = np.repeat(sel, L)  # note of every sample
        idx = np.arange(int(L.sum()), dtype=np.int64) - np.repeat(np.cumsum(L) - L, L)  # sample in note
        t = idx.astype(np.float32)
        ph = inc[nid] * t + phase0[nid]
        k = ((ph - np.floor(ph)) * _TABLE).astype(np.int64) + row[nid]
        dark = flat[k]
        wave = dark + bright[nid] * (flat[k + _TABLE] - dark)
        env = np.minimum(t * inv_att[nid], 1.0) * np.exp(-t * inv_dec[nid])
        env *= np.minimum(1.0, (length[nid] - idx).astype(np.float32) * (100.0 / sr))  # 10 ms release
        out += np.bincount(start[nid] + idx, weights=amp[nid] * env * wave, minlength=len(out))[: len(out)]


def _render_templates(out: np.ndarray, sr: int, starts, amps, template: np.ndarray) -> None:
    """Add copies of a one-shot sample (drum) at `starts` (s) scaled by `amps`."""
    starts = np.round(np.asarray(starts) * sr).astype(np.int64)
    if len(starts) == 0:
        return
    L = len(template)
    idx = np.tile(np.arange(L), len(starts))
    pos = np.repeat(starts, L) + idx
    y = np.repeat(np.asarray(amps), L) * template[idx]
    ok = pos < len(out)
    out += np.bincount(pos[ok], weights=y[ok], minlength=len(out))[: len(out)]


def _drums(sr: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Kick (falling sine), snare (noise + tone) and hi-hat click (high-passed noise) one-shots."""
    t = np.arange(int(0.25 * sr)) / sr
    freq = 45 + 70 * np.exp(-t / 0.04)
    kick = np.sin(2 * np.pi * np.cumsum(freq) / sr) * np.exp(-t / 0.09)
    ts = t[: int(0.18 * sr)]
    snare = (0.7 * rng.standard_normal(len(ts)) + 0.5 * np.sin(2 * np.pi * 190 * ts)) * np.exp(-ts / 0.05)
    th = t[: int(0.05 * sr)]
    hat = np.diff(rng.standard_normal(len(th) + 1)) * np.exp(-th / 0.012)
    return {"kick": kick, "snare": snare, "hat": hat / 2}


def _synthesize(rng: np.random.Generator, sections: list[_Section], lat: np.ndarray, duration: float,
                sr: int, tables: np.ndarray) -> tuple[np.ndarray, dict]:
    """Render the song's audio from its latent; returns float32 mono audio and musical facts."""
    n_ctrl = len(lat)
    ctrl_t = np.arange(n_ctrl) / CONTROL_RATE
    d_ctrl = (lat[:, 0] + 1) / 2  # arousal as 0..1 "drive"
    tonic = int(rng.integers(12))
    timbre = rng.uniform(-0.1, 0.1)  # per-song brightness offset
    master = 10 ** (rng.uniform(-4, 4) / 20)  # per-song mastering gain: loudness alone is not arousal
    letters = sorted({s.letter for s in sections})
    progression = {ltr: _PROGRESSIONS[rng.integers(len(_PROGRESSIONS))] for ltr in letters}
    def tune() -> np.ndarray:  # a stepwise 8-note motif in scale degrees
        steps = np.concatenate([[rng.integers(0, 5)], rng.choice([-2, -1, -1, 1, 1, 2, 0], 7)])
        return np.clip(np.cumsum(steps), -2, 9)

    motif = {ltr: tune() for ltr in letters}
    sec_start = np.array([s.start for s in sections])

    # The sixteenth-note grid follows the tempo curve: phase = integral of beats per second.
    bpm = 62 + 116 * d_ctrl
    beat_phase = np.concatenate([[0.0], np.cumsum(bpm / 60 / CONTROL_RATE)])[:-1]
    n_slots = int(beat_phase[-1] * 4)
    slot_t = np.interp(np.arange(n_slots) / 4, beat_phase, ctrl_t)
    ci = np.minimum((slot_t * CONTROL_RATE).astype(int), n_ctrl - 1)
    a, v, d = lat[ci, 0], lat[ci, 1], d_ctrl[ci]
    sec = np.searchsorted(sec_start, slot_t, side="right") - 1
    pos = np.arange(n_slots) % 16  # position in a 4/4 bar of sixteenths
    minor = v <= 0
    gain = 10 ** ((-16 + 14 * d) / 20)
    bright = np.clip(0.1 + 0.8 * d + timbre, 0, 1)
    attack = 0.03 - 0.025 * d
    shift = np.round(6 * v).astype(int)  # register in scale steps
    diss = np.clip(-v, 0, 1)
    next_t = np.append(slot_t[1:], duration)
    slot_dur = next_t - slot_t
    notes = _Notes()

    # Melody: the section letter's motif, one motif step per played note, density from arousal.
    p_play = np.select([pos % 4 == 0, pos % 2 == 0], [0.95, np.clip(1.5 * d - 0.1, 0, 1)],
                       np.clip(1.6 * d - 0.7, 0, 1))
    play = np.nonzero(rng.random(n_slots) < p_play)[0]
    step_in_sec = np.zeros(len(play), dtype=int)
    for s in np.unique(sec[play]):
        m = sec[play] == s
        step_in_sec[m] = np.arange(m.sum())
    deg = np.array([motif[sections[sec[i]].letter][j % 8] for i, j in zip(play, step_in_sec)]) + shift[play]
    pitch = 60 + tonic + _degree_to_semitone(deg, minor[play])
    gap = np.diff(np.append(slot_t[play], duration))
    notes.add(slot_t[play], np.minimum(gap * 0.95, 1.2), _midi_hz(pitch),
              0.30 * gain[play] * np.where(pos[play] % 4 == 0, 1.2, 1.0), bright[play],
              attack[play], 0.25 + 0.6 * (1 - d[play]), 2)

    # Chords and bass: the letter's progression, one chord per bar; struck every beat or every 2 beats.
    bar = np.arange(n_slots) // 16
    first_slot = np.searchsorted(sec, np.arange(len(sections)))  # sec never decreases
    bar_in_sec = bar - bar[np.minimum(first_slot, n_slots - 1)][sec]
    strike = np.nonzero((pos % 8 == 0) | ((pos % 4 == 0) & (d > 0.55)))[0]
    root = np.array([progression[sections[sec[i]].letter][bar_in_sec[i] % 4] for i in strike])
    length = np.minimum(np.where(d[strike] > 0.55, 4, 8) * slot_dur[strike] * 0.98, 1.6)
    for voice in (0, 2, 4):  # stacked scale thirds: the triad's quality follows the mode
        p = 48 + tonic + _degree_to_semitone(root + voice + shift[strike], minor[strike])
        notes.add(slot_t[strike], length, _midi_hz(p), 0.09 * gain[strike], 0.6 * bright[strike],
                  attack[strike] + 0.01, 0.8, 1)
        rough = diss[strike] > 0.05  # a detuned partner beats against the voice: roughness
        notes.add(slot_t[strike][rough], length[rough], _midi_hz(p[rough] + 0.35 * diss[strike][rough]),
                  0.12 * gain[strike][rough] * diss[strike][rough], 0.6 * bright[strike][rough],
                  attack[strike][rough] + 0.01, 0.8, 1)
    base = 48 + tonic + _degree_to_semitone(root + shift[strike], minor[strike])
    for interval, thresh in ((1, 0.15), (6, 0.4)):  # minor second, then tritone: dissonant clusters
        m = diss[strike] > thresh
        notes.add(slot_t[strike][m], length[m], _midi_hz(base[m] + interval),
                  0.12 * gain[strike][m] * diss[strike][m], 0.6 * bright[strike][m],
                  attack[strike][m] + 0.01, 0.8, 1)
    on_beat = np.nonzero(pos % 4 == 0)[0]
    bass_pitch = 36 + tonic + _degree_to_semitone(
        np.array([progression[sections[sec[i]].letter][bar_in_sec[i] % 4] for i in on_beat]), minor[on_beat])
    notes.add(slot_t[on_beat], np.minimum(4 * slot_dur[on_beat], 1.0), _midi_hz(bass_pitch),
              0.22 * gain[on_beat], 0.3 * bright[on_beat], 0.01, 0.35, 0)

    n = int(round(duration * sr))
    out = np.zeros(n)
    _render_notes(out, sr, notes.arrays(), tables, rng)

    # Percussion: kick every beat, snare on 2 and 4 when driven, hi-hat clicks on the sixteenth grid.
    drums = _drums(sr, rng)
    kick_amp = 0.35 * gain[on_beat] * (0.4 + 0.6 * d[on_beat])
    _render_templates(out, sr, slot_t[on_beat], kick_amp, drums["kick"])
    sn = np.nonzero((pos % 8 == 4) & (d > 0.4))[0]
    _render_templates(out, sr, slot_t[sn], 0.25 * gain[sn] * d[sn], drums["snare"])
    p_hat = np.where(pos % 2 == 0, np.clip(1.6 * d - 0.3, 0, 1), np.clip(1.8 * d - 0.9, 0, 1))
    hats = np.nonzero(rng.random(n_slots) < p_hat)[0]
    _render_templates(out, sr, slot_t[hats], 0.2 * gain[hats] * (0.3 + 0.7 * d[hats]), drums["hat"])

    # Noise bed: high-passed noise whose level rises with brightness.
    level = np.interp(np.arange(n) / sr, ctrl_t, 0.02 * np.clip(0.1 + 0.8 * d_ctrl + timbre, 0, 1) ** 2
                      * 10 ** ((-16 + 14 * d_ctrl) / 20))
    out += level * np.diff(rng.standard_normal(n + 1))

    audio = np.tanh(1.2 * master * out).astype(np.float32)
    facts = {"tonic_pitch_class": tonic, "mean_bpm": round(float(bpm.mean()), 1),
             "letters": letters, "progressions": {k: list(map(int, p)) for k, p in progression.items()}}
    return audio, facts


# ----------------------------------------------------------------------------------------------------
# Listeners


@dataclass
class Listener:
    """One simulated annotator; per-dimension parameters are (arousal, valence) pairs."""

    listener_id: str
    role: str  # "train", "test" or "lazy"
    offset: tuple[float, float]
    gain: tuple[float, float]
    lag: tuple[float, float]  # s
    tau: tuple[float, float]  # s
    squash: float
    noise: tuple[float, float]
    invert_valence: bool


def _worker_id(rng: np.random.Generator) -> str:
    """An MTurk-looking worker id."""
    chars = np.array(list("ABCDEFGHJKLMNPQRSTUVWXYZ0123456789"))
    return "A" + "".join(rng.choice(chars, 13))


def _make_listeners(cfg: SynthConfig) -> list[Listener]:
    """Draw all listeners: training, lazy and test groups, each with its inverted-valence minority."""
    lm = cfg.listener_model
    rng = _rng(cfg, 1)
    out, used = [], set()
    for role, count in (("train", cfg.listeners), ("lazy", cfg.lazy_listeners), ("test", cfg.test_listeners)):
        k = int(round(lm.invert_fraction * count))
        if lm.invert_fraction > 0 and count >= 2:
            k = max(k, 1)  # every group of two or more has someone who hears valence the other way
        inverted = set(rng.permutation(count)[:k].tolist())
        for i in range(count):
            wid = _worker_id(rng)
            while wid in used:
                wid = _worker_id(rng)
            used.add(wid)
            pair = lambda draw: tuple(float(x) for x in draw(2))  # noqa: E731
            out.append(Listener(
                listener_id=wid, role=role,
                offset=pair(lambda k: rng.normal(0, lm.offset_sd, k)),
                gain=pair(lambda k: np.exp(rng.normal(0, lm.gain_log_sd, k))),
                lag=pair(lambda k: lm.lag_max * rng.beta(*lm.lag_beta, k)),
                tau=pair(lambda k: rng.uniform(*lm.tau_range, k)),
                squash=float(rng.uniform(*lm.squash_range)),
                noise=pair(lambda k: rng.uniform(*lm.noise_range, k)),
                invert_valence=role != "lazy" and i in inverted,
            ))
    return out


def _annotate(lat: np.ndarray, lst: Listener, lm: ListenerModel, rng: np.random.Generator) -> np.ndarray:
    """One listener's slider trace [n, 2] on the control grid for a song's latent [n, 2]."""
    n = len(lat)
    if lst.role == "lazy":
        # Nudges the slider once in the first seconds, then leaves it (tiny jitter only).
        level = np.clip(np.asarray(lst.offset) + rng.normal(0, 0.1, 2), -0.8, 0.8)
        ramp = np.clip(np.arange(n) / (5 * CONTROL_RATE), 0, 1)[:, None]
        return np.clip(level * ramp + rng.normal(0, 0.002, (n, 2)), -1, 1)
    x = lat.copy()
    if lst.invert_valence:
        x[:, 1] = -x[:, 1]
    x = np.asarray(lst.offset) + rng.normal(0, lm.song_offset_sd, 2) + np.asarray(lst.gain) * x
    x = np.tanh(lst.squash * x) / lst.squash  # slope 1 at 0, saturates at 1 / squash
    y = np.zeros_like(x)
    for d in range(2):
        lag = int(round(lst.lag[d] * CONTROL_RATE))
        shifted = np.concatenate([np.zeros(lag), x[: n - lag, d]])  # slider at 0 until they react
        alpha = 1 - np.exp(-1 / (lst.tau[d] * CONTROL_RATE))
        smooth = lfilter([alpha], [1, alpha - 1], shifted)
        rho = np.exp(-1 / (lm.noise_memory * CONTROL_RATE))
        ar = lfilter([1.0], [1, -rho], rng.standard_normal(n)) * np.sqrt(1 - rho**2)
        y[:, d] = smooth + lst.noise[d] * ar
    return np.clip(y, -1, 1)


def _assign(rng: np.random.Generator, song_ids: list[int], pool: list[int], k: int) -> dict[int, list[int]]:
    """Give every song k raters from `pool`, always choosing the least-used (ties at random)."""
    counts = {p: 0 for p in pool}
    out = {}
    for sid in song_ids:
        order = [pool[i] for i in rng.permutation(len(pool))]
        chosen = sorted(order, key=lambda p: counts[p])[:k]  # stable sort keeps the random tie order
        for p in chosen:
            counts[p] += 1
        out[sid] = sorted(chosen)
    return out


# ----------------------------------------------------------------------------------------------------
# Writing


def _col(t: float) -> str:
    return f"sample_{int(round(t * 1000))}ms"


def _num(x: float, decimals: int) -> str:
    s = f"{x:.{decimals}f}"
    return "0" if s.lstrip("-").strip("0.") == "" else s


def _short(x: float) -> str:
    """DEAM static style: at most 2 decimals, no trailing zeros (3.1, 0.94, 3)."""
    s = f"{x:.2f}".rstrip("0").rstrip(".")
    return "0" if s in ("", "-0") else s


def _write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8", newline="")


def _write_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """np.savez-compatible archive with fixed timestamps, so the bytes depend only on the data."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for key, arr in arrays.items():
            buf = io.BytesIO()
            np.lib.format.write_array(buf, np.ascontiguousarray(arr), allow_pickle=False)
            info = zipfile.ZipInfo(key + ".npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, buf.getvalue())


@dataclass
class _SongResult:
    song_id: int
    duration: float
    times: np.ndarray
    truth: np.ndarray  # [T, 2]
    raters: list[int]  # listener indices
    curves: np.ndarray  # [R, T, 2], rounded to 4 decimals as written
    static: np.ndarray  # [R, 2] 1..9 ratings (arousal, valence)
    sections: list[_Section]
    facts: dict


@dataclass
class RenderedSong:
    """One song's audio and hidden emotion, before any listener annotates it."""

    song_id: int
    audio: np.ndarray  # float32 mono in [-1, 1]
    sample_rate: int
    times: np.ndarray  # [T] label times (15.0, 15.5, ...)
    truth: np.ndarray  # [T, 2] true (arousal, valence) per label
    latent: np.ndarray  # [duration * CONTROL_RATE, 2] the latent emotion on the control grid
    sections: list[_Section]
    facts: dict  # tonic, mean tempo, progressions


def render_song(song_id: int, duration: float, cfg: SynthConfig | None = None,
                tables: np.ndarray | None = None) -> RenderedSong:
    """Plan and synthesize one song of `duration` seconds; identical to the song generate() writes."""
    cfg = cfg or SynthConfig()
    rng = _rng(cfg, 2, song_id)
    sections = _plan_sections(rng, duration)
    lat = _latent(rng, sections, int(round(duration * CONTROL_RATE)))
    tables = _wavetables(cfg.sample_rate) if tables is None else tables
    audio, facts = _synthesize(rng, sections, lat, duration, cfg.sample_rate, tables)
    times = label_times(duration)
    truth = np.clip(_to_labels(lat, times), -1, 1)
    return RenderedSong(song_id, audio, cfg.sample_rate, times, truth, lat, sections, facts)


def _make_song(cfg: SynthConfig, sid: int, duration: float, raters: list[int], listeners: list[Listener],
               tables: np.ndarray, audio_dir: Path) -> _SongResult:
    """Render and encode one song, and simulate its raters."""
    song = render_song(sid, duration, cfg, tables)
    sf.write(str(audio_dir / f"{sid}.mp3"), song.audio, cfg.sample_rate, format="MP3")
    curves, static = [], []
    for li in raters:
        lrng = _rng(cfg, 3, sid, li)
        trace = _annotate(song.latent, listeners[li], cfg.listener_model, lrng)
        curve = np.round(_to_labels(trace, song.times), 4)
        curves.append(curve)
        noise = lrng.normal(0, cfg.listener_model.static_sd, 2)
        static.append(np.clip(np.round(5 + 4 * curve.mean(0) + noise), 1, 9))
    return _SongResult(sid, duration, song.times, song.truth, raters, np.asarray(curves), np.asarray(static),
                       song.sections, song.facts)


def _static_rows(res: _SongResult, full: bool, swap: bool) -> str:
    """One static-annotation CSV row (valence first, as DEAM), optionally with max/min columns."""
    def stats(x):
        return [_short(x.mean()), _short(x.std())]

    to9 = lambda c: 5 + 4 * c  # noqa: E731
    cols = {}
    for d, name in ((0, "arousal"), (1, "valence")):
        cols[name] = stats(res.static[:, d])
        if full:
            cols[name] += stats(to9(res.curves[:, :, d].max(1))) + stats(to9(res.curves[:, :, d].min(1)))
    first, second = ("arousal", "valence") if swap else ("valence", "arousal")
    return ",".join([str(res.song_id)] + cols[first] + cols[second])


def _write_dataset(out: Path, cfg: SynthConfig, results: list[_SongResult], listeners: list[Listener],
                   anonymous: set[int]) -> None:
    """Write every CSV and the truth files (audio was written while rendering)."""
    all_times = max((r.times for r in results), key=len)
    header = ",".join(["song_id"] + [_col(t) for t in all_times])
    for d, dim in enumerate(("arousal", "valence")):
        rows = [header]
        for r in results:
            mean = r.curves[:, :, d].mean(0)
            cells = [_num(x, 6) for x in mean] + [""] * (len(all_times) - len(mean))
            rows.append(",".join([str(r.song_id)] + cells))
        _write_text(out / AVG_DYNAMIC_DIR / f"{dim}.csv", "\n".join(rows) + "\n")
        for r in results:
            cols = [_col(t) for t in r.times]
            named = r.song_id not in anonymous
            lines = [",".join((["WorkerId"] if named else []) + cols)]
            for li, curve in zip(r.raters, r.curves):
                vals = [_num(x, 4) for x in curve[:, d]]
                lines.append(",".join(([listeners[li].listener_id] if named else []) + vals))
            _write_text(out / RATER_DYNAMIC_DIR / dim / f"{r.song_id}.csv", "\n".join(lines) + "\n")

    base = ["song_id", "valence_mean", "valence_std", "arousal_mean", "arousal_std"]
    full_cols = ["song_id"] + [f"{dim}_{s}" for dim in ("valence", "arousal")
                               for s in ("mean", "std", "max_mean", "max_std", "min_mean", "min_std")]
    clips = [r for r in results if r.song_id < FIRST_FULL_ID]
    fulls = [r for r in results if r.song_id >= FIRST_FULL_ID]
    rows = [", ".join(base)] + [_static_rows(r, False, cfg.swap_static_le_1000 and r.song_id <= 1000)
                                for r in clips]
    _write_text(out / STATIC_DIR / STATIC_CLIPS_FILE, "\n".join(rows) + "\n")
    rows = [", ".join(full_cols)] + [_static_rows(r, True, False) for r in fulls]
    _write_text(out / STATIC_DIR / STATIC_FULL_FILE, "\n".join(rows) + "\n")

    arrays = {}
    for r in results:
        arrays[f"{r.song_id}/times"] = r.times
        arrays[f"{r.song_id}/truth"] = r.truth.astype(np.float32)
    _write_npz(out / TRUTH_DIR / "truth.npz", arrays)
    rated = {i: [] for i in range(len(listeners))}
    for r in results:
        for li in r.raters:
            rated[li].append(r.song_id)
    lst_json = [dict(dataclasses.asdict(lst), songs=[s for s in rated[i] if s not in anonymous],
                     anonymous_songs=[s for s in rated[i] if s in anonymous])
                for i, lst in enumerate(listeners)]
    _write_text(out / TRUTH_DIR / "listeners.json", json.dumps(lst_json, indent=1) + "\n")
    songs_json = {str(r.song_id): {"duration": r.duration, "anonymous": r.song_id in anonymous,
                                   "full_length": r.song_id >= FIRST_FULL_ID,
                                   "form": " ".join(s.letter + "'" * s.variant for s in r.sections),
                                   "sections": [dataclasses.asdict(s) for s in r.sections], **r.facts}
                  for r in results}
    _write_text(out / TRUTH_DIR / "songs.json", json.dumps(songs_json, indent=1) + "\n")


def _check(cfg: SynthConfig) -> None:
    """Reject configurations that cannot produce a DEAM-like dataset."""
    problems = []
    if cfg.songs < 1 or cfg.songs > FIRST_FULL_ID - 2:
        problems.append(f"songs must be in 1..{FIRST_FULL_ID - 2} (clip ids are 2..{FIRST_FULL_ID - 1})")
    if cfg.full_songs < 0 or not 0 <= cfg.anonymous_songs <= cfg.songs:
        problems.append("full_songs must be >= 0 and anonymous_songs in 0..songs")
    if cfg.clip_seconds < LABEL_START + HOP_SECONDS:
        problems.append(f"clip_seconds must be >= {LABEL_START + HOP_SECONDS} (labels start at 15 s)")
    lo, hi = cfg.full_seconds
    if cfg.full_songs and not LABEL_START + HOP_SECONDS <= lo <= hi:
        problems.append("full_seconds must be (min, max) with 15.5 <= min <= max")
    if not 1 <= cfg.raters_per_song <= cfg.listeners + cfg.lazy_listeners:
        problems.append("raters_per_song must be in 1..listeners + lazy_listeners")
    if cfg.anonymous_songs and cfg.raters_per_song > cfg.listeners:
        problems.append("raters_per_song must be <= listeners (anonymous clips are rated by them)")
    if cfg.full_songs and not 1 <= cfg.raters_per_full_song <= cfg.test_listeners:
        problems.append("raters_per_full_song must be in 1..test_listeners when there are full songs")
    if cfg.sample_rate < 8000:
        problems.append("sample_rate must be >= 8000 Hz")
    if min(cfg.listeners, cfg.test_listeners, cfg.lazy_listeners) < 0 or cfg.workers < 1:
        problems.append("listener counts must be >= 0 and workers >= 1")
    if problems:
        raise UserError("invalid synthetic dataset config: " + "; ".join(problems))


@dataclass
class SynthPlan:
    """Who rates what, before any audio is made: listeners, raters per song, durations."""

    listeners: list[Listener]
    raters: dict[int, list[int]]  # song id -> indices into listeners
    durations: dict[int, float]  # song id -> seconds (clips first, then full songs)
    anonymous: set[int]  # clip ids whose rater files carry no WorkerId

    def of_role(self, role: str) -> list[int]:
        """Indices of the listeners with this role ("train", "test" or "lazy")."""
        return [i for i, lst in enumerate(self.listeners) if lst.role == role]


def plan(cfg: SynthConfig | None = None) -> SynthPlan:
    """Draw the listeners and assign raters to songs (cheap: no audio)."""
    cfg = cfg or SynthConfig()
    _check(cfg)
    listeners = _make_listeners(cfg)
    role = lambda r: [i for i, lst in enumerate(listeners) if lst.role == r]  # noqa: E731
    clip_ids = list(range(2, 2 + cfg.songs))
    anonymous = set(clip_ids[: cfg.anonymous_songs])
    full_ids = list(range(FIRST_FULL_ID, FIRST_FULL_ID + cfg.full_songs))
    arng = _rng(cfg, 4)
    named = [s for s in clip_ids if s not in anonymous]
    raters = _assign(arng, named, role("train") + role("lazy"), cfg.raters_per_song)
    raters |= _assign(arng, sorted(anonymous), role("train"), cfg.raters_per_song)
    raters |= _assign(arng, full_ids, role("test"), cfg.raters_per_full_song)
    drng = _rng(cfg, 5)
    durations = {s: float(cfg.clip_seconds) for s in clip_ids}
    durations |= {s: float(np.round(drng.uniform(*cfg.full_seconds) * 2) / 2) for s in full_ids}
    return SynthPlan(listeners, raters, durations, anonymous)


def generate(out: str | Path, cfg: SynthConfig | None = None, overwrite: bool = False) -> SynthSummary:
    """Write a complete synthetic dataset in DEAM's layout under `out` and return what was written."""
    cfg = cfg or SynthConfig()
    _check(cfg)
    t0 = time.perf_counter()
    out = Path(out)
    owned = [out / AUDIO_DIR.parts[0], out / ANN_DIR.parts[0], out / TRUTH_DIR]
    if any(p.exists() for p in owned):
        if not overwrite:
            raise UserError(f"{out}: already holds a dataset (DEAM_audio, DEAM_Annotations or "
                            "synthetic_truth); pass overwrite=True (CLI --force) to replace it")
        for p in owned:
            shutil.rmtree(p, ignore_errors=True)
    audio_dir = out / AUDIO_DIR
    audio_dir.mkdir(parents=True, exist_ok=True)

    pl = plan(cfg)
    listeners, raters, durations, anonymous = pl.listeners, pl.raters, pl.durations, pl.anonymous
    clip_ids = [s for s in durations if s < FIRST_FULL_ID]
    full_ids = [s for s in durations if s >= FIRST_FULL_ID]
    train, test = pl.of_role("train"), pl.of_role("test")

    tables = _wavetables(cfg.sample_rate)
    ids = clip_ids + full_ids
    make = lambda s: _make_song(cfg, s, durations[s], raters[s], listeners, tables, audio_dir)  # noqa: E731
    with ThreadPoolExecutor(max_workers=cfg.workers) as pool:
        results = list(tqdm(pool.map(make, ids), total=len(ids), desc="dsaml synth", unit="song"))
    _write_dataset(out, cfg, results, listeners, anonymous)

    named = [s for s in clip_ids if s not in anonymous]
    per_train = [sum(i in raters[s] for s in named) for i in train]
    per_test = [sum(i in raters[s] for s in full_ids) for i in test]
    summary = SynthSummary(
        root=out, songs_annotated=len(ids), songs_with_audio=len(ids), clips=len(clip_ids),
        test_songs=len(full_ids), anonymous_songs=len(anonymous),
        listeners=len({i for s in ids if s not in anonymous for i in raters[s]}),
        train_listeners=len(train), test_listeners=len(test), lazy_listeners=len(pl.of_role("lazy")),
        listener_curves=sum(len(raters[s]) for s in ids if s not in anonymous),
        anonymous_curves=sum(len(raters[s]) for s in anonymous),
        min_clips_per_train_listener=min(per_train, default=0),
        min_full_songs_per_test_listener=min(per_test, default=0),
        train_ids=[str(s) for s in clip_ids], test_ids=[str(s) for s in full_ids],
        seconds=0.0,
    )
    summary.seconds = round(time.perf_counter() - t0, 2)
    # Written last (workbook.synthetic_ready looks for it); it holds nothing that depends on where, how
    # fast or with how many threads it ran, so the same config gives the same bytes.
    recorded = {k: v for k, v in dataclasses.asdict(cfg).items() if k != "workers"}
    config_json = {"config": recorded, "summary": {**summary.to_json(), "root": None, "seconds": None}}
    _write_text(out / TRUTH_DIR / "config.json", json.dumps(config_json, indent=1) + "\n")
    return summary


# ----------------------------------------------------------------------------------------------------
# Reading back: the hidden truth and how much listeners differ


def load_truth(root: str | Path) -> tuple[dict[str, Curve], list[dict]]:
    """The hidden true curves (song id -> Curve) and the listener records of a synthetic dataset."""
    root = Path(root)
    npz_path, json_path = root / TRUTH_DIR / "truth.npz", root / TRUTH_DIR / "listeners.json"
    for p in (npz_path, json_path):
        if not p.is_file():
            raise DataError(f"{p}: not found (is {root} a dataset written by `dsaml synth`?)")
    truth = {}
    with np.load(npz_path) as z:
        for key in z.files:
            sid, kind = key.split("/")
            if kind == "truth":
                values = z[key]
                truth[sid] = Curve(z[f"{sid}/times"], values[:, 0], values[:, 1])
    return truth, json.loads(json_path.read_text())


def _read_curves(path: Path) -> tuple[np.ndarray, np.ndarray, list[str] | None]:
    """A DEAM dynamic CSV as (times [T], values [rows, T] with NaN for empty cells, first-column ids)."""
    import pandas as pd

    try:
        df = pd.read_csv(path, dtype={"WorkerId": str, "song_id": str})
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: cannot read CSV: {exc}") from exc
    ids = None
    if df.columns[0] in ("WorkerId", "song_id"):
        ids = df.iloc[:, 0].astype(str).str.strip().tolist()
        df = df.iloc[:, 1:]
    cols = [c.strip() for c in df.columns]
    if not all(c.startswith("sample_") and c.endswith("ms") for c in cols):
        raise DataError(f"{path}: expected sample_<ms>ms columns, got {cols[:3]}...")
    times = np.array([int(c[len("sample_"):-2]) / 1000 for c in cols])
    return times, df.to_numpy(dtype=np.float64), ids


def _ccc(x: np.ndarray, y: np.ndarray) -> float:
    """Lin's concordance correlation coefficient of two sequences."""
    mx, my = x.mean(), y.mean()
    cov = ((x - mx) * (y - my)).mean()
    return float(2 * cov / (x.var() + y.var() + (mx - my) ** 2 + 1e-12))


def _rmse(x: np.ndarray, y: np.ndarray) -> float:
    return float(np.sqrt(np.mean((x - y) ** 2)))


def listener_divergence(root: str | Path, filt: TaskFilter | None = None) -> dict:
    """How far identified listeners' curves are from the MEAN curves (and from the hidden truth, if any).

    Per listener, RMSE and CCC (arousal, valence) of each of their non-flat curves against the song's
    MEAN curve are averaged over their songs, then over listeners. When ``synthetic_truth`` exists, the
    same is done against the true curves, and the MEAN curves themselves are scored against the truth.
    Works on a real DEAM root too (without the truth numbers).
    """
    root = Path(root)
    filt = filt or TaskFilter()
    means = _read_means(root)
    truth = load_truth(root)[0] if (root / TRUTH_DIR / "truth.npz").is_file() else None

    per: dict[str, dict[str, list]] = {}
    flat = 0
    rater_dir = root / RATER_DYNAMIC_DIR
    for path in sorted((rater_dir / "arousal").glob("*.csv"), key=lambda p: int(p.stem)):
        sid = path.stem
        t_a, a, ids = _read_curves(path)
        if ids is None or sid not in means:  # anonymous raters (no WorkerId) cannot be compared per listener
            continue
        _, v, ids_v = _read_curves(rater_dir / "valence" / path.name)
        if ids_v != ids or a.shape != v.shape:
            raise DataError(f"{rater_dir / 'valence' / path.name}: raters differ from the arousal file")
        for wid, ra, rv in zip(ids, a, v):
            curve = Curve(t_a, ra, rv)
            if filt.flat_threshold > 0 and is_flat(curve, filt.flat_threshold, filt.flat_window):
                flat += 1
                continue
            tv = truth.get(sid) if truth is not None else None
            n = min(len(ra), len(means[sid]["arousal"]), len(means[sid]["valence"]),
                    len(tv) if tv is not None else len(ra))
            mine = np.stack([ra[:n], rv[:n]], 1)
            ref = np.stack([means[sid]["arousal"][:n], means[sid]["valence"][:n]], 1)
            ok = np.isfinite(mine).all(1) & np.isfinite(ref).all(1)  # skip empty cells (real DEAM has some)
            if ok.sum() < 2:
                continue
            mine, ref, n = mine[ok], ref[ok], int(ok.sum())
            rec = per.setdefault(wid, {"vs_mean_rmse": [], "vs_mean_ccc": [], "vs_truth_rmse": [],
                                       "vs_truth_ccc": []})
            rec["vs_mean_rmse"].append([_rmse(mine[:, d], ref[:, d]) for d in range(2)])
            rec["vs_mean_ccc"].append([_ccc(mine[:, d], ref[:, d]) for d in range(2)])
            if tv is not None:
                tv = tv.values()[:len(ok)][ok]
                rec["vs_truth_rmse"].append([_rmse(mine[:, d], tv[:, d]) for d in range(2)])
                rec["vs_truth_ccc"].append([_ccc(mine[:, d], tv[:, d]) for d in range(2)])

    def avg(rows) -> list[float]:
        return [round(float(x), 4) for x in np.mean(rows, axis=0)] if len(rows) else [float("nan")] * 2

    per_listener = {wid: {"songs": len(r["vs_mean_rmse"]), **{k: avg(v) for k, v in r.items() if v}}
                    for wid, r in sorted(per.items())}
    result = {
        "listeners": len(per_listener),
        "curves": sum(p["songs"] for p in per_listener.values()),
        "flat_curves_dropped": flat,
        "listener_vs_mean_rmse": avg([p["vs_mean_rmse"] for p in per_listener.values()]),
        "listener_vs_mean_ccc": avg([p["vs_mean_ccc"] for p in per_listener.values()]),
    }
    if truth is not None:
        result["listener_vs_truth_rmse"] = avg([p["vs_truth_rmse"] for p in per_listener.values()
                                                if "vs_truth_rmse" in p])
        result["listener_vs_truth_ccc"] = avg([p["vs_truth_ccc"] for p in per_listener.values()
                                               if "vs_truth_ccc" in p])
        rm, cc = [], []
        for sid, m in means.items():
            if sid in truth:
                tv = truth[sid].values()
                n = min(len(tv), len(m["arousal"]))
                mv = np.stack([m["arousal"][:n], m["valence"][:n]], 1)
                rm.append([_rmse(mv[:, d], tv[:n, d]) for d in range(2)])
                cc.append([_ccc(mv[:, d], tv[:n, d]) for d in range(2)])
        result["mean_vs_truth_rmse"] = avg(rm)
        result["mean_vs_truth_ccc"] = avg(cc)
    result["per_listener"] = per_listener
    return result


def _read_means(root: Path) -> dict[str, dict[str, np.ndarray]]:
    """MEAN curves (song id -> dimension -> values, empty tail dropped) from the averaged dynamic CSVs."""
    means: dict[str, dict[str, np.ndarray]] = {}
    for dim in ("arousal", "valence"):
        times, vals, ids = _read_curves(root / AVG_DYNAMIC_DIR / f"{dim}.csv")
        for sid, row in zip(ids, vals):
            last = np.nonzero(~np.isnan(row))[0]  # drop the empty tail of a shorter song
            means.setdefault(sid, {})[dim] = row[: last[-1] + 1 if len(last) else 0]
    return means


def personalization_headroom(root: str | Path, support_labels: int = 60) -> dict:
    """What an ideal one-song personalizer could gain on the held-out listeners of a synthetic dataset.

    For every test listener and every ordered pair of their songs (support s, query q), a per-dimension
    linear recalibration ``a + b * MEAN`` is fitted by least squares to the listener's curve on the first
    ``support_labels`` labels of s, and applied to the MEAN curve of q. Returned per dimension (arousal,
    valence): mean CCC over pairs of the MEAN curve against the listener on q ("mean_ccc"), of the
    recalibrated MEAN ("recalibrated_ccc"), and their difference ("headroom").
    """
    root = Path(root)
    records = load_truth(root)[1]
    test = {r["listener_id"] for r in records if r["role"] == "test"}
    means = _read_means(root)
    curves: dict[str, dict[str, np.ndarray]] = {wid: {} for wid in test}  # listener -> song -> [T, 2]
    rater_dir = root / RATER_DYNAMIC_DIR
    for r in records:
        if r["role"] != "test":
            continue
        for s in r["songs"]:
            sid = str(s)
            for dim_i, dim in enumerate(("arousal", "valence")):
                _, vals, ids = _read_curves(rater_dir / dim / f"{sid}.csv")
                if ids is None or r["listener_id"] not in ids:
                    raise DataError(f"{rater_dir / dim / f'{sid}.csv'}: no row for test listener "
                                    f"{r['listener_id']}")
                row = vals[ids.index(r["listener_id"])]
                n = min(len(means[sid][dim]), int(np.isfinite(row).sum()))
                cur = curves[r["listener_id"]].setdefault(sid, np.full((n, 2), np.nan))
                cur[:, dim_i] = row[: len(cur)]
    base, recal = [], []
    for wid, songs in sorted(curves.items()):
        for s in songs:
            for q in songs:
                if s == q:
                    continue
                b_row, r_row = [], []
                for d, dim in enumerate(("arousal", "valence")):
                    k = min(support_labels, len(songs[s]))
                    x, y = means[s][dim][:k], songs[s][:k, d]
                    slope = np.cov(x, y, bias=True)[0, 1] / (x.var() + 1e-12)
                    icpt = y.mean() - slope * x.mean()
                    mq, lq = means[q][dim][: len(songs[q])], songs[q][:, d]
                    b_row.append(_ccc(mq, lq))
                    r_row.append(_ccc(icpt + slope * mq, lq))
                base.append(b_row)
                recal.append(r_row)
    if not base:
        raise DataError(f"{root}: no held-out listener rated two songs, so there is no pair to measure")
    b, r = np.mean(base, 0), np.mean(recal, 0)
    rnd = lambda v: [round(float(x), 4) for x in v]  # noqa: E731
    return {"pairs": len(base), "listeners": len(curves), "mean_ccc": rnd(b), "recalibrated_ccc": rnd(r),
            "headroom": rnd(r - b)}


# ----------------------------------------------------------------------------------------------------
# Command line


def register_cli(subparsers) -> None:
    """Add `dsaml synth`."""
    d = SynthConfig()
    p = subparsers.add_parser("synth", help="write a synthetic dataset in DEAM's layout",
                              description="Write a synthetic music-emotion dataset in DEAM's exact layout "
                              "(MP3 audio, averaged and per-rater curves, static ratings) plus the hidden "
                              "truth under synthetic_truth/. See dsaml_utils/synth.py for the model.")
    p.add_argument("--out", required=True, type=Path, help="dataset root to write")
    p.add_argument("--songs", type=int, default=d.songs, help=f"45 s training clips (default {d.songs})")
    p.add_argument("--listeners", type=int, default=d.listeners,
                   help=f"training listeners (default {d.listeners})")
    p.add_argument("--seed", type=int, default=d.seed, help=f"random seed (default {d.seed})")
    p.add_argument("--full-songs", type=int, default=d.full_songs,
                   help=f"long test songs, ids 2001.. (default {d.full_songs})")
    p.add_argument("--anonymous-songs", type=int, default=d.anonymous_songs,
                   help=f"clips whose per-rater files lack WorkerId (default {d.anonymous_songs})")
    p.add_argument("--test-listeners", type=int, default=d.test_listeners,
                   help=f"held-out listeners rating the full songs (default {d.test_listeners})")
    p.add_argument("--lazy-listeners", type=int, default=d.lazy_listeners,
                   help=f"near-flat raters (default {d.lazy_listeners})")
    p.add_argument("--raters-per-song", type=int, default=d.raters_per_song,
                   help=f"raters per clip (default {d.raters_per_song})")
    p.add_argument("--raters-per-full-song", type=int, default=d.raters_per_full_song,
                   help=f"raters per full song (default {d.raters_per_full_song})")
    p.add_argument("--sample-rate", type=int, default=d.sample_rate,
                   help=f"MP3 sample rate in Hz (default {d.sample_rate})")
    p.add_argument("--clip-seconds", type=float, default=d.clip_seconds,
                   help=f"clip duration (default {d.clip_seconds})")
    p.add_argument("--full-seconds", type=float, nargs=2, default=d.full_seconds, metavar=("MIN", "MAX"),
                   help=f"full-song duration range (default {d.full_seconds[0]} {d.full_seconds[1]})")
    p.add_argument("--no-static-swap", action="store_true",
                   help="do not reproduce public DEAM's swapped static valence/arousal for ids <= 1000")
    p.add_argument("--workers", type=int, default=d.workers, help=f"threads (default {d.workers})")
    p.add_argument("--force", action="store_true", help="replace a dataset already in --out")
    p.add_argument("--divergence", action="store_true", help="also report how much listeners differ")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=_cli)


def _cli(args) -> int:
    cfg = SynthConfig(
        seed=args.seed, songs=args.songs, full_songs=args.full_songs, anonymous_songs=args.anonymous_songs,
        listeners=args.listeners, test_listeners=args.test_listeners, lazy_listeners=args.lazy_listeners,
        raters_per_song=args.raters_per_song, raters_per_full_song=args.raters_per_full_song,
        sample_rate=args.sample_rate, clip_seconds=args.clip_seconds, full_seconds=tuple(args.full_seconds),
        swap_static_le_1000=not args.no_static_swap, workers=args.workers,
    )
    summary = generate(args.out, cfg, overwrite=args.force)
    report = summary.to_json()
    if args.divergence:
        div = listener_divergence(args.out)
        div.pop("per_listener")
        report["divergence"] = div
    if args.json:
        print(json.dumps(report, indent=1))
        return 0
    print(f"wrote {summary.root} in {summary.seconds:.1f} s: {summary.clips} clips "
          f"({summary.anonymous_songs} without WorkerId), {summary.test_songs} full songs; "
          f"{summary.train_listeners} training, {summary.test_listeners} test and {summary.lazy_listeners} "
          f"lazy listeners; {summary.listener_curves} identified listener curves")
    print(f"each training listener rated >= {summary.min_clips_per_train_listener} clips; each test "
          f"listener >= {summary.min_full_songs_per_test_listener} full songs; truth in {TRUTH_DIR}/")
    if args.divergence:
        for k, v in report["divergence"].items():
            print(f"  {k}: {v}")
    return 0
