"""Rendering songs, simulating their raters and writing everything in DEAM's layout."""

from __future__ import annotations

import dataclasses
import io
import json
import shutil
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import soundfile as sf
from tqdm.auto import tqdm

from dsaml_utils.data.synthetic.config import (
    ANN_DIR,
    AUDIO_DIR,
    AVG_DYNAMIC_DIR,
    CONTROL_RATE,
    FIRST_FULL_ID,
    LABEL_START,
    RATER_DYNAMIC_DIR,
    STATIC_CLIPS_FILE,
    STATIC_DIR,
    STATIC_FULL_FILE,
    TRUTH_DIR,
    SynthConfig,
    SynthSummary,
    stream,
)
from dsaml_utils.data.synthetic.latent import (
    Section,
    label_times,
    latent_emotion,
    plan_sections,
    to_labels,
)
from dsaml_utils.data.synthetic.listeners import (
    Listener,
    annotate,
    assign,
    make_listeners,
)
from dsaml_utils.data.synthetic.music import synthesize, wavetables
from dsaml_utils.data.types import HOP_SECONDS
from dsaml_utils.errors import UserError
from dsaml_utils.io.atomic import atomic_write_bytes, atomic_write_text


FEATURES_DIR = Path("features")  # DEAM's frame feature files, features/<song_id>.csv
SongHook = Callable[[int, Path], None]
"""Called with (song id, path of its MP3) right after the MP3 is written."""


def _col(t: float) -> str:
    """DEAM's column name of a label time."""
    return f"sample_{int(round(t * 1000))}ms"


def _num(x: float, decimals: int) -> str:
    """A curve value with this many decimals, and "0" for any zero."""
    s = f"{x:.{decimals}f}"
    return "0" if s.lstrip("-").strip("0.") == "" else s


def _short(x: float) -> str:
    """DEAM static style: at most 2 decimals, no trailing zeros (3.1, 0.94, 3)."""
    s = f"{x:.2f}".rstrip("0").rstrip(".")
    return "0" if s in ("", "-0") else s


def _npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    """An np.savez-compatible archive with fixed timestamps, so the bytes depend only on the data."""
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for key, arr in arrays.items():
            buf = io.BytesIO()
            np.lib.format.write_array(buf, np.ascontiguousarray(arr), allow_pickle=False)
            info = zipfile.ZipInfo(key + ".npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, buf.getvalue())
    return out.getvalue()


@dataclass
class _SongResult:
    """One rendered song with its raters' curves and static ratings, as written."""

    song_id: int
    duration: float
    times: np.ndarray
    truth: np.ndarray  # [T, 2]
    raters: list[int]  # listener indices
    curves: np.ndarray  # [R, T, 2], rounded to 4 decimals as written
    static: np.ndarray  # [R, 2] 1..9 ratings (arousal, valence)
    sections: list[Section]
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
    sections: list[Section]
    facts: dict  # tonic, mean tempo, progressions


def render_song(song_id: int, duration: float, cfg: SynthConfig | None = None,
                tables: np.ndarray | None = None) -> RenderedSong:
    """Plan and synthesize one song of `duration` seconds; identical to the song generate() writes."""
    cfg = cfg or SynthConfig()
    rng = stream(cfg, 2, song_id)
    sections = plan_sections(rng, duration)
    lat = latent_emotion(rng, sections, int(round(duration * CONTROL_RATE)))
    tables = wavetables(cfg.sample_rate) if tables is None else tables
    audio, facts = synthesize(rng, sections, lat, duration, cfg.sample_rate, tables)
    times = label_times(duration)
    truth = np.clip(to_labels(lat, times), -1, 1)
    return RenderedSong(song_id, audio, cfg.sample_rate, times, truth, lat, sections, facts)


def _make_song(cfg: SynthConfig, sid: int, duration: float, raters: list[int], listeners: list[Listener],
               tables: np.ndarray, audio_dir: Path, song_hook: SongHook | None = None) -> _SongResult:
    """Render and encode one song (then call song_hook on its MP3), and simulate its raters."""
    song = render_song(sid, duration, cfg, tables)
    sf.write(str(audio_dir / f"{sid}.mp3"), song.audio, cfg.sample_rate, format="MP3")
    if song_hook is not None:
        song_hook(sid, audio_dir / f"{sid}.mp3")
    curves, static = [], []
    for li in raters:
        lrng = stream(cfg, 3, sid, li)
        trace = annotate(song.latent, listeners[li], cfg.listener_model, lrng)
        curve = np.round(to_labels(trace, song.times), 4)
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
        atomic_write_text(out / AVG_DYNAMIC_DIR / f"{dim}.csv", "\n".join(rows) + "\n")
        for r in results:
            cols = [_col(t) for t in r.times]
            named = r.song_id not in anonymous
            lines = [",".join((["WorkerId"] if named else []) + cols)]
            for li, curve in zip(r.raters, r.curves):
                vals = [_num(x, 4) for x in curve[:, d]]
                lines.append(",".join(([listeners[li].listener_id] if named else []) + vals))
            atomic_write_text(out / RATER_DYNAMIC_DIR / dim / f"{r.song_id}.csv", "\n".join(lines) + "\n")

    base = ["song_id", "valence_mean", "valence_std", "arousal_mean", "arousal_std"]
    full_cols = ["song_id"] + [f"{dim}_{s}" for dim in ("valence", "arousal")
                               for s in ("mean", "std", "max_mean", "max_std", "min_mean", "min_std")]
    clips = [r for r in results if r.song_id < FIRST_FULL_ID]
    fulls = [r for r in results if r.song_id >= FIRST_FULL_ID]
    rows = [", ".join(base)] + [_static_rows(r, False, cfg.swap_static_le_1000 and r.song_id <= 1000)
                                for r in clips]
    atomic_write_text(out / STATIC_DIR / STATIC_CLIPS_FILE, "\n".join(rows) + "\n")
    rows = [", ".join(full_cols)] + [_static_rows(r, True, False) for r in fulls]
    atomic_write_text(out / STATIC_DIR / STATIC_FULL_FILE, "\n".join(rows) + "\n")

    arrays = {}
    for r in results:
        arrays[f"{r.song_id}/times"] = r.times
        arrays[f"{r.song_id}/truth"] = r.truth.astype(np.float32)
    atomic_write_bytes(out / TRUTH_DIR / "truth.npz", _npz_bytes(arrays))
    rated = {i: [] for i in range(len(listeners))}
    for r in results:
        for li in r.raters:
            rated[li].append(r.song_id)
    lst_json = [dict(dataclasses.asdict(lst), songs=[s for s in rated[i] if s not in anonymous],
                     anonymous_songs=[s for s in rated[i] if s in anonymous])
                for i, lst in enumerate(listeners)]
    atomic_write_text(out / TRUTH_DIR / "listeners.json", json.dumps(lst_json, indent=1) + "\n")
    songs_json = {str(r.song_id): {"duration": r.duration, "anonymous": r.song_id in anonymous,
                                   "full_length": r.song_id >= FIRST_FULL_ID,
                                   "form": " ".join(s.letter + "'" * s.variant for s in r.sections),
                                   "sections": [dataclasses.asdict(s) for s in r.sections], **r.facts}
                  for r in results}
    atomic_write_text(out / TRUTH_DIR / "songs.json", json.dumps(songs_json, indent=1) + "\n")


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
    listeners = make_listeners(cfg)
    role = lambda r: [i for i, lst in enumerate(listeners) if lst.role == r]  # noqa: E731
    clip_ids = list(range(2, 2 + cfg.songs))
    anonymous = set(clip_ids[: cfg.anonymous_songs])
    full_ids = list(range(FIRST_FULL_ID, FIRST_FULL_ID + cfg.full_songs))
    arng = stream(cfg, 4)
    named = [s for s in clip_ids if s not in anonymous]
    raters = assign(arng, named, role("train") + role("lazy"), cfg.raters_per_song)
    raters |= assign(arng, sorted(anonymous), role("train"), cfg.raters_per_song)
    raters |= assign(arng, full_ids, role("test"), cfg.raters_per_full_song)
    drng = stream(cfg, 5)
    durations = {s: float(cfg.clip_seconds) for s in clip_ids}
    durations |= {s: float(np.round(drng.uniform(*cfg.full_seconds) * 2) / 2) for s in full_ids}
    return SynthPlan(listeners, raters, durations, anonymous)


def generate(out: str | Path, cfg: SynthConfig | None = None, overwrite: bool = False,
             song_hook: SongHook | None = None) -> SynthSummary:
    """Write a complete synthetic dataset in DEAM's layout under `out` and return what was written.

    song_hook(song_id, mp3_path) runs in the rendering thread right after each song's MP3 is written (e.g.
    `features.frame_files.synthesize` writes the song's frame features to features/<id>.csv with it); its
    time counts in summary.seconds. A features/ folder belongs to the dataset: --force removes it too.
    """
    cfg = cfg or SynthConfig()
    _check(cfg)
    t0 = time.perf_counter()
    out = Path(out)
    owned = [out / AUDIO_DIR.parts[0], out / ANN_DIR.parts[0], out / TRUTH_DIR, out / FEATURES_DIR]
    if any(p.exists() for p in owned):
        if not overwrite:
            raise UserError(f"{out}: already holds a dataset (DEAM_audio, DEAM_Annotations, features or "
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

    tables = wavetables(cfg.sample_rate)
    ids = clip_ids + full_ids
    def make(s: int) -> _SongResult:
        return _make_song(cfg, s, durations[s], raters[s], listeners, tables, audio_dir, song_hook)

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
    atomic_write_text(out / TRUTH_DIR / "config.json", json.dumps(config_json, indent=1) + "\n")
    return summary
