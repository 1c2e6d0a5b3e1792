"""PMEmo loader: reads the files of the public PMEmo release into a MusicDataset (MEAN curves only).

Layout under ``root``::

    annotations/dynamic_annotations.csv      musicId, frameTime, Arousal(mean), Valence(mean)
    annotations/dynamic_annotations_std.csv  musicId, frameTime, Arousal(std), Valence(std)
    annotations/static_annotations.csv       musicId, Arousal(mean), Valence(mean)
    features/dynamic_features.csv            musicId, frameTime, openSMILE features ...
    metadata.csv                             musicId, fileName, title, artist, album, duration, ...
    chorus/<musicId>.mp3

PMEmo has no rater identities: every song has only the MEAN curve. The listeners' standard deviation
around it (dynamic_annotations_std.csv) is stored as ``Song.mean_std`` (a Curve with the same times).
The paper's split uses the song's annotated length, ``last frameTime + 0.5 s`` (the end of the last
labelled slice): songs shorter than ``min_seconds`` are left out of both splits (they stay in
``songs``), songs longer than ``test_min_seconds`` are the test split, the rest are training songs.
The annotation span is used rather than the audio's duration so that the split does not depend on which
audio files are present or decodable.

A frameTime off the 0.5 s label grid (e.g. 15.25) is named and its row is not used; where a song's times
then skip a step its curve is cut there (both reported). With ``decode_audio`` every chorus file is decoded
and one shorter than its labels is reported and not used (``data.files.attach_audio``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from dsaml_utils.data.files import (
    attach_audio,
    on_grid,
    parse_floats,
    read_csv_grid,
    with_problems,
)
from dsaml_utils.data.frames import PMEMO_FEATURE_FILE, read_frame_table, song_rows
from dsaml_utils.data.types import (
    HOP_SECONDS,
    MEAN,
    Curve,
    MusicDataset,
    Song,
)
from dsaml_utils.errors import DataError

VALUE_RANGE = (0.0, 1.0)
MIN_SECONDS = 25.0  # paper: drop songs shorter than 25 s
TEST_MIN_SECONDS = 65.0  # paper: the songs longer than 65 s are the test set


def _columns(header: list[str], path: Path, names: tuple[str, ...]) -> list[int]:
    """Indices of the named columns (case-insensitive); a missing one raises DataError."""
    cols = {h.lower(): i for i, h in enumerate(header)}
    missing = [n for n in names if n.lower() not in cols]
    if missing:
        raise DataError(f"{path}: no column {missing[0]!r} (columns: {', '.join(header[:8])}...)")
    return [cols[n.lower()] for n in names]


def _read_long(path: Path, names: tuple[str, ...]) -> tuple[list[str], np.ndarray]:
    """Music ids (as strings of integers) and a float [N, len(names)-1] array from a long-format file.

    The first name is the id column; every other named cell must hold a number.
    """
    header, rows = read_csv_grid(path)
    idx = _columns(header, path, names)
    ids, values = [], np.empty((len(rows), len(idx) - 1))
    for r, (line, cells) in enumerate(rows):
        v = parse_floats([cells[i] for i in idx], path, line, list(names))
        bad = np.flatnonzero(np.isnan(v))
        if len(bad):
            raise DataError(f"{path}: line {line}, column {names[bad[0]]!r}: empty cell")
        if not float(v[0]).is_integer():
            raise DataError(f"{path}: line {line}: {names[0]} {cells[idx[0]].strip()!r} is not an integer")
        ids.append(str(int(v[0])))
        values[r] = v[1:]
    return ids, values


def _group(ids: list[str], values: np.ndarray) -> dict[str, np.ndarray]:
    """Rows grouped by music id, each group sorted by its first column (frameTime)."""
    order: dict[str, list[int]] = {}
    for r, sid in enumerate(ids):
        order.setdefault(sid, []).append(r)
    out = {}
    for sid, rs in order.items():
        block = values[rs]
        out[sid] = block[np.argsort(block[:, 0], kind="stable")]
    return out


def _curve(sid: str, block: np.ndarray, path: Path, problems: list[str], check_range: bool) -> Curve | None:
    """A song's rows (time, arousal, valence) as a Curve (None when no row is usable); off-grid and repeated
    times and gaps are reported."""
    grid = np.array([on_grid(t) for t in block[:, 0]], dtype=bool)
    if not grid.all():
        off = block[~grid, 0]
        problems.append(
            f"{path}: song {sid}: frameTime {off[0]:g} is off the 0.5 s label grid; "
            + ("its row is not used" if len(off) == 1 else f"its row and {len(off) - 1} more are not used")
        )
        block = block[grid]
    if len(block) == 0:
        problems.append(f"{path}: song {sid}: no row on the 0.5 s label grid; song skipped")
        return None
    t = block[:, 0]
    keep = np.concatenate([[True], np.diff(t) > 1e-9])
    if not keep.all():
        problems.append(f"{path}: song {sid}: repeated frameTime {t[~keep][0]:g}; first row kept")
        block, t = block[keep], t[keep]
    steps = np.diff(t)
    gaps = np.flatnonzero(np.abs(steps - HOP_SECONDS) > 1e-6)
    if len(gaps):
        g = int(gaps[0])
        problems.append(
            f"{path}: song {sid}: frameTime jumps from {t[g]:g} to {t[g + 1]:g} s (not 0.5 s); "
            "curve cut there"
        )
        block = block[: g + 1]
    if check_range:
        vals = block[:, 1:]
        bad = ~((vals >= VALUE_RANGE[0]) & (vals <= VALUE_RANGE[1]))
        if bad.any():
            r, c = np.argwhere(bad)[0]
            problems.append(
                f"{path}: song {sid}, frameTime {block[r, 0]:g}, {('arousal', 'valence')[c]}: value "
                f"{vals[r, c]:g} outside [0, 1] ({int(bad.sum())} such values in this song)"
            )
    return Curve(block[:, 0], block[:, 1], block[:, 2])


def load_pmemo(root: str | Path, *, min_seconds: float = MIN_SECONDS,
               test_min_seconds: float = TEST_MIN_SECONDS, check_audio: bool = True,
               decode_audio: bool = False) -> MusicDataset:
    """Load PMEmo's MEAN curves (with stds and static labels), audio paths and the paper's split.

    min_seconds: songs whose annotated length is below this are in neither split.
    test_min_seconds: songs whose annotated length is above this form the test split.
    check_audio: open every audio file with libsndfile (cheap); False only checks that it exists.
    decode_audio: decode every audio file fully and leave out audio shorter than its labels (slow).
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: dataset root not found")
    dyn = root / "annotations" / "dynamic_annotations.csv"
    if not dyn.is_file():
        raise DataError(f"{root}: no PMEmo annotations found; tried {dyn}")
    problems: list[str] = []

    ids, values = _read_long(dyn, ("musicId", "frameTime", "Arousal(mean)", "Valence(mean)"))
    songs: dict[str, Song] = {}
    for sid, block in sorted(_group(ids, values).items(), key=lambda kv: int(kv[0])):
        curve = _curve(sid, block, dyn, problems, check_range=True)
        if curve is not None:
            songs[sid] = Song(sid, None, {MEAN: curve})
    if not songs:
        raise DataError(with_problems(f"{dyn}: no annotated song", problems))

    std_path = root / "annotations" / "dynamic_annotations_std.csv"
    if std_path.is_file():
        ids, values = _read_long(std_path, ("musicId", "frameTime", "Arousal(std)", "Valence(std)"))
        for sid, block in _group(ids, values).items():
            if sid not in songs:
                continue
            mean = songs[sid].curves[MEAN]
            lookup = {round(t * 2): (a, v) for t, a, v in block if on_grid(t)}  # key: half-seconds
            rows = [lookup.get(round(t * 2)) for t in mean.times]
            if any(r is None for r in rows):
                problems.append(f"{std_path}: song {sid}: stds missing for some frameTimes; not stored")
                continue
            rows = np.array(rows)
            songs[sid].mean_std = Curve(mean.times, rows[:, 0], rows[:, 1])
    else:
        problems.append(f"{std_path}: not found (no standard deviations)")

    static_path = root / "annotations" / "static_annotations.csv"
    if static_path.is_file():
        ids, values = _read_long(static_path, ("musicId", "Arousal(mean)", "Valence(mean)"))
        for sid, (a, v) in zip(ids, values):
            if sid in songs:
                if not (0 <= a <= 1 and 0 <= v <= 1):
                    problems.append(f"{static_path}: song {sid}: static value outside [0, 1]")
                songs[sid].static = {"arousal": float(a), "valence": float(v)}
    else:
        problems.append(f"{static_path}: not found (no static labels)")

    meta_path = root / "metadata.csv"
    if meta_path.is_file():
        header, rows = read_csv_grid(meta_path)
        (i,) = _columns(header, meta_path, ("musicId",))
        listed = {c[i].strip() for _, c in rows}
        absent = [sid for sid in songs if sid not in listed]
        if absent:
            problems.append(f"{meta_path}: {len(absent)} annotated songs not listed (e.g. {absent[0]})")
    else:
        problems.append(f"{meta_path}: not found")

    chorus = root / "chorus"
    if not chorus.is_dir():
        problems.append(f"{chorus}: audio folder not found: {len(songs)} songs have no audio")
    else:
        attach_audio(songs, chorus, problems, check_audio, decode=decode_audio)

    train, test = [], []
    for sid, song in songs.items():
        length = float(song.curves[MEAN].times[-1]) + HOP_SECONDS
        if length < min_seconds:
            continue
        (test if length > test_min_seconds else train).append(sid)
    return MusicDataset(
        name="pmemo", root=root, songs=songs, train_ids=train, test_ids=test,
        value_range=VALUE_RANGE, problems=problems,
    )


def load_pmemo_frame_features(
    root: str | Path, *, song_id: str | None = None
) -> dict[str, tuple[np.ndarray, np.ndarray, list[str]]]:
    """Song id -> (times [T], features [T, K] float32, feature names) from an openSMILE-style CSV, as written.

    root: a PMEmo root (reads features/dynamic_features.csv) or any CSV file with a frameTime column,
    comma- or semicolon-separated (DEAM's per-song feature files use ';'). Rows are grouped by a
    musicId (or song_id) column; a file without one is a single song named `song_id` (default: the
    file's stem). Any empty or NaN cell raises DataError naming its line and column; ``data.frames``
    reads the same files leniently and aligns them with a dataset's label times.
    """
    root = Path(root)
    table = read_frame_table(root if root.is_file() else root / PMEMO_FEATURE_FILE)
    bad = np.argwhere(np.isnan(table.values))
    if len(bad):
        r, c = bad[0]
        raise DataError(f"{table.path}: line {table.lines[r]}, column {table.names[c]!r}: empty cell")
    return {sid: (table.times[rows].copy(), table.values[rows].astype(np.float32), list(table.names))
            for sid, rows in song_rows(table, song_id).items()}
