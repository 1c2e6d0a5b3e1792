"""Tiny DEAM and PMEmo trees in the datasets' real layouts, with the expected counts and values.

Use from any test::

    from fixtures import write_deam_fixture, write_pmemo_fixture   # tests/ is on sys.path under pytest
    fx = write_deam_fixture(tmp_path / "deam")            # default: the deliberate problems below
    ds = load_deam(fx.root)                                # ds.songs.keys() == set(fx.song_ids)
    clean = write_deam_fixture(tmp_path / "c", swap_static=False, corrupt_song=None, missing_song=None)

DEAM fixture (value range [-1, 1], labels every 0.5 s from 15.0 s):
- clips 2..6 (<= 1000): per-rater files WITHOUT WorkerId (3 anonymous rows each -> 15 anonymous curves);
- clips 1001..1005 and full songs 2001, 2002 (test split): per-rater files with WorkerId;
  worker W1 rated all 7, W2 rated 1001..1004 and 2001, W3 rated 1001 and 1002 (14 listener curves);
  W2's curve on 1004 is flat; W2's curve on 2001 stops 4 values early (empty cells);
- clips have `n_labels` values, 2001 has n_labels + 10, 2002 has n_labels + 4 (empty cells after);
- static files with the real ", " header; songs <= 1000 have valence/arousal columns swapped;
- MP3s of `audio_seconds` at `sample_rate`, except song `missing_song` (no file) and
  `corrupt_song` (garbage bytes).
PMEmo fixture (range [0, 1], labels from 15.5 s): songs with annotated lengths (last frameTime + 0.5)
PMEMO_LENGTHS; default split (25 s / 65 s): train 4, 5, 12, 13; test 7, 10; song 1 in neither.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

DEAM_ANN = Path("DEAM_Annotations/annotations")
DEAM_AVG = DEAM_ANN / "annotations averaged per song/dynamic (per second annotations)"
DEAM_RATER = DEAM_ANN / "annotations per each rater/dynamic (per second annotations)"
DEAM_STATIC = DEAM_ANN / "annotations averaged per song/song_level"
DEAM_AUDIO = Path("DEAM_audio/MEMD_audio")

ANON_SONGS = ("2", "3", "4", "5", "6")
WORKER_SONGS = ("1001", "1002", "1003", "1004", "1005", "2001", "2002")
WORKERS = ("A1FIXTUREW1", "A2FIXTUREW2", "A3FIXTUREW3")
RATED = {  # worker -> songs rated
    WORKERS[0]: WORKER_SONGS,
    WORKERS[1]: ("1001", "1002", "1003", "1004", "2001"),
    WORKERS[2]: ("1001", "1002"),
}
FLAT = ("1004", WORKERS[1])  # (song, worker) whose curve is constant
SHORT_RATER = ("2001", WORKERS[1], 4)  # (song, worker, values missing at the end)
ANON_ROWS = 3
# Song-level arousal/valence levels, chosen so that the two are far from correlated in each id group
# (<= 1000 and > 1000): the static swap check then has an unambiguous answer.
LEVELS = {
    "2": (0.5, -0.3), "3": (-0.4, 0.4), "4": (0.1, 0.6), "5": (-0.6, -0.5), "6": (0.3, 0.0),
    "1001": (0.6, 0.1), "1002": (-0.5, 0.5), "1003": (0.0, -0.6), "1004": (0.3, 0.4),
    "1005": (-0.2, -0.2), "2001": (0.4, -0.4), "2002": (-0.6, 0.2),
}

Truth = tuple  # (times [T] float, arousal [T] float, valence [T] float)


@dataclass
class DeamFixture:
    """What write_deam_fixture wrote: the root, the expected counts and the exact values."""

    root: Path
    song_ids: list[str]
    train_ids: list[str]
    test_ids: list[str]
    songs_with_audio: int
    workers: list[str]
    listener_curves: int
    anonymous_curves: int
    corrupt_audio: Path | None
    missing_song: str | None
    mean: dict[str, Truth] = field(default_factory=dict)  # song -> MEAN curve as written
    raters: dict[tuple[str, str], Truth] = field(default_factory=dict)  # (song, worker) -> curve
    static: dict[str, tuple[float, float]] = field(default_factory=dict)  # song -> true (arousal, valence)
    files: dict[str, Path] = field(default_factory=dict)  # "arousal", "valence", "static_1_2000", ...


@dataclass
class PmemoFixture:
    """What write_pmemo_fixture wrote."""

    root: Path
    song_ids: list[str]
    train_ids: list[str]  # with the default 25 s / 65 s thresholds
    test_ids: list[str]
    dropped_ids: list[str]  # shorter than 25 s
    songs_with_audio: int
    corrupt_audio: Path | None
    mean: dict[str, Truth] = field(default_factory=dict)
    std: dict[str, Truth] = field(default_factory=dict)
    static: dict[str, tuple[float, float]] = field(default_factory=dict)
    feature_names: list[str] = field(default_factory=list)
    features: dict[str, np.ndarray] = field(default_factory=dict)  # song -> [T, K] as written
    files: dict[str, Path] = field(default_factory=dict)


def _ms(t: float) -> str:
    return f"sample_{int(round(t * 1000))}ms"


def _fmt(x: float) -> str:
    return "" if np.isnan(x) else f"{x:.4f}"


def _round(x: np.ndarray) -> np.ndarray:
    return np.round(np.asarray(x, dtype=np.float64), 4)


def write_audio(path: Path, seconds: float, sample_rate: int, seed: int) -> None:
    """A short tone plus noise, written with soundfile (format from the suffix, e.g. MP3)."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sample_rate)) / sample_rate
    x = 0.3 * np.sin(2 * np.pi * (220 + 20 * seed) * t) + 0.02 * rng.standard_normal(len(t))
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), x.astype(np.float32), sample_rate)


def write_corrupt(path: Path) -> None:
    """Bytes that no decoder accepts, under an audio file's name."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"this is not an mp3 file\x00\x01\x02" * 40)


def _wide_csv(path: Path, first: str, rows: dict[str, np.ndarray], times: np.ndarray) -> None:
    """first,sample_<ms>ms... with one row per key; NaN values are written as empty cells."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [",".join([first] + [_ms(t) for t in times])]
    for key, vals in rows.items():
        padded = np.full(len(times), np.nan)
        padded[: len(vals)] = vals
        lines.append(",".join([key] + [_fmt(v) for v in padded]))
    path.write_text("\n".join(lines) + "\n")


def write_deam_fixture(
    root: str | Path,
    *,
    n_labels: int = 20,
    audio_seconds: float = 1.0,
    sample_rate: int = 8000,
    swap_static: bool = True,
    corrupt_song: str | None = "3",
    missing_song: str | None = "1005",
    seed: int = 0,
) -> DeamFixture:
    """Write a 12-song DEAM tree under root (see the module docstring) and return what to expect."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    lengths = {sid: n_labels for sid in ANON_SONGS + WORKER_SONGS[:5]}
    lengths.update({"2001": n_labels + 10, "2002": n_labels + 4})
    all_times = 15.0 + 0.5 * np.arange(max(lengths.values()))

    def curve(sid: str, spread: float) -> np.ndarray:
        la, lv = LEVELS[sid]
        k = np.arange(lengths[sid])
        wave = np.sin(2 * np.pi * k / 12 + rng.uniform(0, 6.28))
        a = la + 0.2 * wave + spread * rng.standard_normal(len(k))
        v = lv + 0.15 * np.cos(2 * np.pi * k / 9) + spread * rng.standard_normal(len(k))
        return _round(np.clip(a, -0.95, 0.95)), _round(np.clip(v, -0.95, 0.95))

    fx = DeamFixture(
        root=root, song_ids=sorted(lengths, key=int),
        train_ids=sorted([s for s in lengths if int(s) < 2001], key=int), test_ids=["2001", "2002"],
        songs_with_audio=len(lengths) - (corrupt_song is not None) - (missing_song is not None),
        workers=list(WORKERS), listener_curves=sum(len(v) for v in RATED.values()),
        anonymous_curves=len(ANON_SONGS) * ANON_ROWS, corrupt_audio=None, missing_song=missing_song,
    )

    # Per-rater files: anonymous rows (no WorkerId column) for songs <= 1000, WorkerId rows otherwise.
    per_song: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {}
    for sid in ANON_SONGS:
        rows = [curve(sid, 0.05) for _ in range(ANON_ROWS)]
        per_song[sid] = rows
        times = all_times[: lengths[sid]]
        for dim, d in (("arousal", 0), ("valence", 1)):
            path = root / DEAM_RATER / dim / f"{sid}.csv"
            path.parent.mkdir(parents=True, exist_ok=True)
            lines = [",".join(_ms(t) for t in times)] + [",".join(_fmt(x) for x in r[d]) for r in rows]
            path.write_text("\n".join(lines) + "\n")
    for sid in WORKER_SONGS:
        times = all_times[: lengths[sid]]
        rows = {}
        for w in WORKERS:
            if sid not in RATED[w]:
                continue
            a, v = curve(sid, 0.05)
            if (sid, w) == FLAT:
                a, v = np.full_like(a, 0.1234), np.full_like(v, -0.2)
            if (sid, w) == SHORT_RATER[:2]:
                a, v = a[: -SHORT_RATER[2]], v[: -SHORT_RATER[2]]
            rows[w] = (a, v)
            fx.raters[(sid, w)] = (times[: len(a)], a, v)
        per_song[sid] = list(rows.values())
        for dim, d in (("arousal", 0), ("valence", 1)):
            _wide_csv(root / DEAM_RATER / dim / f"{sid}.csv", "WorkerId",
                      {w: r[d] for w, r in rows.items()}, times)

    # Averaged curves: the per-time mean of the song's rater rows (rows may differ in length).
    avg = {"arousal": {}, "valence": {}}
    for sid in fx.song_ids:
        n = lengths[sid]
        out = []
        for d in (0, 1):
            stack = np.full((len(per_song[sid]), n), np.nan)
            for i, r in enumerate(per_song[sid]):
                stack[i, : len(r[d])] = r[d]
            out.append(_round(np.nanmean(stack, axis=0)))
        avg["arousal"][sid], avg["valence"][sid] = out
        fx.mean[sid] = (all_times[:n], out[0], out[1])
    for dim in ("arousal", "valence"):
        fx.files[dim] = root / DEAM_AVG / f"{dim}.csv"
        _wide_csv(fx.files[dim], "song_id", avg[dim], all_times)

    # Static song-level means on the 1..9 scale; columns of songs <= 1000 swapped when asked.
    lines_a = ["song_id, valence_mean, valence_std, arousal_mean, arousal_std"]
    lines_b = ["song_id, valence_mean, valence_std, valence_max_mean, arousal_mean, arousal_std"]
    for sid in fx.song_ids:
        sa = round(5 + 4 * float(np.mean(fx.mean[sid][1])) + 0.1 * rng.standard_normal(), 2)
        sv = round(5 + 4 * float(np.mean(fx.mean[sid][2])) + 0.1 * rng.standard_normal(), 2)
        fx.static[sid] = (sa, sv)
        wa, wv = (sv, sa) if swap_static and int(sid) <= 1000 else (sa, sv)
        if int(sid) < 2001:
            lines_a.append(f"{sid}, {wv}, 1.1, {wa}, 0.9")
        else:
            lines_b.append(f"{sid}, {wv}, 1.2, {wv + 1:.2f}, {wa}, 0.8")
    fx.files["static_1_2000"] = root / DEAM_STATIC / "static_annotations_averaged_songs_1_2000.csv"
    fx.files["static_2000_2058"] = root / DEAM_STATIC / "static_annotations_averaged_songs_2000_2058.csv"
    fx.files["static_1_2000"].parent.mkdir(parents=True, exist_ok=True)
    fx.files["static_1_2000"].write_text("\n".join(lines_a) + "\n")
    fx.files["static_2000_2058"].write_text("\n".join(lines_b) + "\n")

    for i, sid in enumerate(fx.song_ids):
        path = root / DEAM_AUDIO / f"{sid}.mp3"
        if sid == missing_song:
            continue
        if sid == corrupt_song:
            write_corrupt(path)
            fx.corrupt_audio = path
        else:
            write_audio(path, audio_seconds, sample_rate, seed=i)
    return fx


PMEMO_LENGTHS = {"1": 20.0, "4": 30.0, "5": 40.0, "7": 66.0, "10": 70.0, "12": 25.0, "13": 65.0}
PMEMO_FEATURES = ("F0final_sma_amean", "pcm_RMSenergy_sma_amean", "pcm_zcr_sma_amean",
                  "pcm_fftMag_spectralCentroid_sma_amean")


def write_pmemo_fixture(
    root: str | Path,
    *,
    audio_seconds: float = 1.0,
    sample_rate: int = 8000,
    corrupt_song: str | None = "5",
    seed: int = 0,
) -> PmemoFixture:
    """Write a 7-song PMEmo tree under root (see the module docstring) and return what to expect."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    ids = sorted(PMEMO_LENGTHS, key=int)
    fx = PmemoFixture(
        root=root, song_ids=ids,
        train_ids=[s for s in ids if 25 <= PMEMO_LENGTHS[s] <= 65],
        test_ids=[s for s in ids if PMEMO_LENGTHS[s] > 65],
        dropped_ids=[s for s in ids if PMEMO_LENGTHS[s] < 25],
        songs_with_audio=len(ids) - (corrupt_song is not None), corrupt_audio=None,
        feature_names=list(PMEMO_FEATURES),
    )
    dyn = ["musicId,frameTime,Arousal(mean),Valence(mean)"]
    std = ["musicId,frameTime,Arousal(std),Valence(std)"]
    feats = ["musicId,frameTime," + ",".join(PMEMO_FEATURES)]
    static = ["musicId,Arousal(mean),Valence(mean)"]
    meta = ["musicId,fileName,title,artist,album,duration,chorus_start_time,chorus_end_time"]
    for sid in ids:
        times = np.arange(15.5, PMEMO_LENGTHS[sid], 0.5)
        n = len(times)
        a = _round(np.clip(0.5 + 0.3 * np.sin(np.arange(n) / 5) + 0.02 * rng.standard_normal(n), 0, 1))
        v = _round(np.clip(0.4 + 0.2 * np.cos(np.arange(n) / 7) + 0.02 * rng.standard_normal(n), 0, 1))
        sa, sv = _round(0.1 + 0.05 * rng.random(n)), _round(0.1 + 0.05 * rng.random(n))
        f = _round(rng.standard_normal((n, len(PMEMO_FEATURES))))
        fx.mean[sid], fx.std[sid], fx.features[sid] = (times, a, v), (times, sa, sv), f
        fx.static[sid] = (round(float(a.mean()), 4), round(float(v.mean()), 4))
        for i, t in enumerate(times):
            dyn.append(f"{sid},{t:g},{_fmt(a[i])},{_fmt(v[i])}")
            std.append(f"{sid},{t:g},{_fmt(sa[i])},{_fmt(sv[i])}")
            feats.append(f"{sid},{t:g}," + ",".join(_fmt(x) for x in f[i]))
        static.append(f"{sid},{fx.static[sid][0]},{fx.static[sid][1]}")
        meta.append(f"{sid},{sid}.mp3,Title {sid},Artist,Album,{PMEMO_LENGTHS[sid] + 100:.1f},00:30,01:10")
    fx.files = {
        "dynamic": root / "annotations/dynamic_annotations.csv",
        "std": root / "annotations/dynamic_annotations_std.csv",
        "static": root / "annotations/static_annotations.csv",
        "features": root / "features/dynamic_features.csv",
        "metadata": root / "metadata.csv",
    }
    for key, lines in (("dynamic", dyn), ("std", std), ("static", static), ("features", feats),
                       ("metadata", meta)):
        fx.files[key].parent.mkdir(parents=True, exist_ok=True)
        fx.files[key].write_text("\n".join(lines) + "\n")
    for i, sid in enumerate(ids):
        path = root / "chorus" / f"{sid}.mp3"
        if sid == corrupt_song:
            write_corrupt(path)
            fx.corrupt_audio = path
        else:
            write_audio(path, audio_seconds, sample_rate, seed=i)
    return fx


def truncate_audio(path: Path, keep: float) -> None:
    """Keep only the first `keep` fraction of an audio file's bytes (a download cut short)."""
    data = Path(path).read_bytes()
    Path(path).write_bytes(data[: int(len(data) * keep)])


def corrupt_frames(path: Path, seed: int = 0) -> None:
    """Overwrite every 97th byte of the middle half of an audio file (damaged frames; the header is intact)."""
    data = bytearray(Path(path).read_bytes())
    rng = np.random.default_rng(seed)
    for i in range(len(data) // 4, 3 * len(data) // 4, 97):
        data[i] = int(rng.integers(256))
    Path(path).write_bytes(bytes(data))


@pytest.fixture(autouse=True)
def one_thread():
    """One intra-op thread for each test of a module that imports this fixture: the models in tests are tiny,
    one thread is faster and immune to other processes on the cores (and gives the same float sums as the
    children that tests start with OMP_NUM_THREADS=1)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
