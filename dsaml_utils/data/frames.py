"""Precomputed frame features (openSMILE, 2 Hz) read from DEAM's per-song files or PMEmo's long file and put on
each song's label grid.

Layouts: DEAM ``features/<song_id>.csv`` (';', frameTime then the features); PMEmo
``features/dynamic_features.csv`` (',', musicId, frameTime, features). Either delimiter is accepted in either
layout; an id column (musicId or song_id) groups rows into songs, a file without one is one song. Columns
named 'name' or 'class' (openSMILE's instance name, the 'class' placeholder PMEmo's script appends) are
ignored. How the files were made: ``dsaml_utils.features.opensmile``.

Alignment (the audio slices' convention, ``data.types``): label i at time t covers the audio [t, t + 0.5);
the feature row whose frameTime is within ``FRAME_TOLERANCE`` of t (its window starts at t) is that step's
features, as PMEmo's own notebook merges features and annotations on (musicId, frameTime). A song's
features cover its MEAN label times from the first one up to the first step without a usable row; the steps
left out are named in the problems, never padded. A row with an empty or NaN cell is reported with its file,
line and column and is not used. Songs without features are reported and skipped.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from dsaml_utils.data.files import parse_floats, read_csv_grid
from dsaml_utils.data.types import HOP_SECONDS, MEAN, MusicDataset
from dsaml_utils.errors import DataError

DEAM_FEATURE_DIRS = ("features", "DEAM_features/features", "DEAM_features")  # tried in this order
PMEMO_FEATURE_FILE = Path("features") / "dynamic_features.csv"
FRAME_TOLERANCE = HOP_SECONDS / 4
"""Seconds a frameTime may differ from a label time and still be that label's row (as ``align_curve``)."""
ID_COLUMNS = ("musicid", "song_id")
IGNORED_COLUMNS = ("name", "class")


@dataclass
class FrameTable:
    """What one feature file holds: rows in file order, NaN where a cell is empty or NaN."""

    path: Path
    names: list[str]  # feature columns (without id, frameTime and ignored columns)
    ids: list[str] | None  # song id per row, None when the file has no id column
    times: np.ndarray  # [N] frameTime (s)
    values: np.ndarray  # [N, K] float64
    lines: np.ndarray  # [N] line number in the file


@dataclass
class SongFrames:
    """One song's frame features on its label grid."""

    song_id: str
    times: np.ndarray  # [T] MEAN label times covered (the first T of them); step i covers [t_i, t_i + 0.5)
    values: np.ndarray  # [T, K] float32
    names: list[str]


def sniff_delimiter(path: Path) -> str:
    """';' when the header holds more semicolons than commas, else ','."""
    with open(path, encoding="utf-8-sig", errors="replace") as f:
        first = f.readline()
    return ";" if first.count(";") > first.count(",") else ","


def _fast_table(path: Path, delimiter: str) -> tuple[list[str], np.ndarray] | None:
    """Header and float matrix via pandas (ignored columns dropped); None when any cell is odd or missing."""
    try:
        df = pd.read_csv(path, sep=delimiter, skipinitialspace=True, encoding="utf-8-sig")
    except (ValueError, pd.errors.ParserError, UnicodeDecodeError):
        return None
    df = df[[c for c in df.columns if str(c).strip().lower() not in IGNORED_COLUMNS]]
    if len(df) == 0 or not all(pd.api.types.is_numeric_dtype(t) for t in df.dtypes):
        return None
    data = df.to_numpy(np.float64)
    return ([str(c).strip() for c in df.columns], data) if not np.isnan(data).any() else None


def read_frame_table(path: str | Path) -> FrameTable:
    """Read one feature file; a missing file, a ragged row, a non-numeric cell or no frameTime raises DataError."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: frame feature file not found")
    delimiter = sniff_delimiter(path)
    fast = _fast_table(path, delimiter)
    if fast is not None:
        header, data = fast
        lines = np.arange(2, len(data) + 2)
    else:  # something is odd: the strict reader names the line of any bad cell
        header, rows = read_csv_grid(path, delimiter=delimiter)
        keep = [i for i, h in enumerate(header) if h.lower() not in IGNORED_COLUMNS]
        header = [header[i] for i in keep]
        if not rows:
            raise DataError(f"{path}: no data rows")
        data = np.stack([parse_floats([c[i] for i in keep], path, line, header) for line, c in rows])
        lines = np.array([line for line, _ in rows])
    lower = [h.lower() for h in header]
    if "frametime" not in lower:
        raise DataError(f"{path}: no column 'frameTime' (columns: {', '.join(header[:6])}...)")
    t_col = lower.index("frametime")
    id_col = next((lower.index(n) for n in ID_COLUMNS if n in lower), None)
    feat = [i for i in range(len(header)) if i not in (t_col, id_col)]
    if not feat:
        raise DataError(f"{path}: no feature columns")
    bad_t = np.flatnonzero(np.isnan(data[:, t_col]))
    if len(bad_t):
        raise DataError(f"{path}: line {lines[bad_t[0]]}, column {header[t_col]!r}: empty cell")
    ids = None
    if id_col is not None:
        col = data[:, id_col]
        bad = np.flatnonzero(~(col == np.round(col)))  # NaN compares unequal too
        if len(bad):
            raise DataError(f"{path}: line {lines[bad[0]]}, column {header[id_col]!r}: not an integer song id")
        ids = [str(int(x)) for x in col]
    return FrameTable(path, [header[i] for i in feat], ids, data[:, t_col].copy(), data[:, feat], lines)


def nan_cells(table: FrameTable, rows: np.ndarray | None = None) -> list[str]:
    """One line per row (among `rows`, default all) holding an empty or NaN cell: file, line, first column, count."""
    idx = np.arange(len(table.times)) if rows is None else np.asarray(rows)
    out = []
    for r in idx[np.isnan(table.values[idx]).any(axis=1)]:
        cols = np.flatnonzero(np.isnan(table.values[r]))
        more = f" (and {len(cols) - 1} more columns)" if len(cols) > 1 else ""
        out.append(f"{table.path}: line {table.lines[r]} (frameTime {table.times[r]:g}), column "
                   f"{table.names[cols[0]]!r}: empty cell or NaN{more}; row not used")
    return out


def song_rows(table: FrameTable, song_id: str | None = None) -> dict[str, np.ndarray]:
    """Row indices per song id, sorted by frameTime (a file without id column is song `song_id` or its stem)."""
    if table.ids is None:
        keys = [song_id or table.path.stem] * len(table.times)
    else:
        keys = table.ids
    groups: dict[str, list[int]] = {}
    for r, sid in enumerate(keys):
        groups.setdefault(sid, []).append(r)
    return {sid: np.array(rs)[np.argsort(table.times[rs], kind="stable")] for sid, rs in groups.items()}


def _steps(times: np.ndarray) -> str:
    """Label times named briefly: '44, 44.5 s' or '30-44.5 s (30 steps)'."""
    if len(times) <= 4:
        return ", ".join(f"{t:g}" for t in times) + " s"
    return f"{times[0]:g}-{times[-1]:g} s ({len(times)} steps)"


def align_rows(table: FrameTable, rows: np.ndarray, song_id: str, label_times: np.ndarray,
               problems: list[str]) -> SongFrames | None:
    """The song's rows on its label times (module docstring); None, with the reason in problems, when the
    first label time has no usable row."""
    where = f"{table.path}: song {song_id}"
    times, values = table.times[rows], table.values[rows]
    usable = ~np.isnan(values).any(axis=1)
    dup = np.flatnonzero(np.diff(times) <= 1e-9)
    if len(dup):
        problems.append(f"{where}: repeated frameTime {times[dup[0] + 1]:g} ({len(dup)} rows); first row kept")
        usable[dup + 1] = False
    match = np.full(len(label_times), -1)
    if len(times):
        near = np.clip(np.searchsorted(times, label_times), 1, max(1, len(times) - 1))
        for i, t in enumerate(label_times):
            cands = [c for c in (near[i] - 1, near[i]) if c < len(times) and usable[c]
                     and abs(times[c] - t) <= FRAME_TOLERANCE]
            if cands:
                match[i] = min(cands, key=lambda c: abs(times[c] - t))
    found = match >= 0
    n = int(np.argmin(found)) if not found.all() else len(found)
    if n == 0:
        first = f"{times[0]:g}-{times[-1]:g} s" if len(times) else "none"
        problems.append(f"{where}: no usable row at its first label time {label_times[0]:g} s (frameTimes: "
                        f"{first}); song skipped")
        return None
    if n < len(label_times):
        last, rest = times[usable][-1], f"{_steps(label_times[n:])} of {len(label_times)} label times"
        if label_times[n] > last + FRAME_TOLERANCE:
            problems.append(f"{where}: rows end at {last:g} s: {rest} have no features; not used, never padded")
        else:
            problems.append(f"{where}: no usable row at {label_times[n]:g} s: {rest} are not used (the song is "
                            "cut there, never padded)")
    return SongFrames(song_id, label_times[:n].copy(), values[match[:n]].astype(np.float32), list(table.names))


def feature_folder(root: str | Path) -> Path | None:
    """The first of DEAM_FEATURE_DIRS under root that is a folder, or None."""
    return next((Path(root) / d for d in DEAM_FEATURE_DIRS if (Path(root) / d).is_dir()), None)


def feature_files(ds: MusicDataset, root: str | Path | None = None) -> list[Path]:
    """The frame feature files `load_frame_features` reads for `ds` (sorted; [] when there are none)."""
    root = Path(ds.root if root is None else root)
    if ds.name == "pmemo":
        return [root / PMEMO_FEATURE_FILE] if (root / PMEMO_FEATURE_FILE).is_file() else []
    folder = feature_folder(root)
    return sorted(folder.glob("*.csv")) if folder is not None else []


def load_frame_features(ds: MusicDataset, root: str | Path | None = None, progress: bool = True,
                        song_ids: list[str] | None = None) -> dict[str, SongFrames]:
    """SongFrames per song of `ds` with features (module docstring); every problem is appended to ds.problems.

    root: where the features live (default ds.root). PMEmo ("pmemo") reads features/dynamic_features.csv,
    DEAM and synthetic roots read features/<song_id>.csv. No feature file at all raises DataError.
    song_ids: only these songs (default every song with a MEAN curve; files of other songs are not reported).
    """
    root = Path(ds.root if root is None else root)
    problems = ds.problems
    only = None if song_ids is None else set(song_ids)
    wanted = {sid: s.curves[MEAN].times for sid, s in ds.songs.items()
              if MEAN in s.curves and (only is None or sid in only)}
    out: dict[str, SongFrames] = {}
    names: list[str] | None = None

    def add(table: FrameTable, rows: np.ndarray, sid: str) -> None:
        nonlocal names
        problems.extend(nan_cells(table, rows))
        sf = align_rows(table, rows, sid, wanted[sid], problems)
        if sf is None:
            return
        if names is not None and sf.names != names:
            problems.append(f"{table.path}: song {sid}: feature columns differ from the other songs'; skipped")
            return
        names = sf.names
        out[sid] = sf

    if ds.name == "pmemo":
        path = root / PMEMO_FEATURE_FILE
        table = read_frame_table(path)
        groups = song_rows(table)
        for sid in wanted:
            if sid in groups:
                add(table, groups[sid], sid)
            else:
                problems.append(f"{path}: no rows for song {sid}; song skipped")
        extra = sorted(set(groups) - set(ds.songs), key=int)
        if extra and only is None:
            problems.append(f"{path}: {len(extra)} songs without annotations (e.g. {extra[0]}); not used")
        return out

    folder = feature_folder(root)
    if folder is None:
        tried = ", ".join(str(root / d) for d in DEAM_FEATURE_DIRS)
        raise DataError(f"{root}: no frame features found (tried {tried}); `dsaml features` computes them")
    for sid in tqdm(list(wanted), desc="frame features", unit="song", disable=not progress or len(wanted) < 50,
                    leave=False):
        path = folder / f"{sid}.csv"
        if not path.is_file():
            problems.append(f"song {sid}: {path}: frame feature file not found; song skipped")
            continue
        try:
            table = read_frame_table(path)
        except DataError as exc:
            problems.append(f"song {sid}: {exc}; song skipped")
            continue
        groups = song_rows(table, song_id=sid)
        if set(groups) != {sid}:
            problems.append(f"{path}: rows of song(s) {', '.join(sorted(groups))}, not {sid}; song skipped")
            continue
        add(table, groups[sid], sid)
    extra = sorted(p.name for p in folder.glob("*.csv") if p.stem not in ds.songs)
    if extra and only is None:
        problems.append(f"{folder}: {len(extra)} feature files of songs without annotations (e.g. {extra[0]}); "
                        "not used")
    return out
