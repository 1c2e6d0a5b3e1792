"""DEAM loader: reads the folders and files of the public DEAM release into a MusicDataset.

Layout under ``root`` (the folder holding ``DEAM_Annotations`` and ``DEAM_audio``)::

    DEAM_Annotations/annotations/
      annotations averaged per song/dynamic (per second annotations)/{arousal,valence}.csv
      annotations averaged per song/song_level/static_annotations_averaged_songs_{1_2000,2000_2058}.csv
      annotations per each rater/dynamic (per second annotations)/{arousal,valence}/<song_id>.csv
    DEAM_audio/MEMD_audio/<song_id>.mp3

Choices made here (each one is reported in ``MusicDataset.problems`` when it applies):
- A curve ends at its last non-empty cell (shorter songs leave the row's tail empty). An empty cell
  before that is a gap: the curve is cut just before it.
- A sample_<ms>ms column off the 0.5 s label grid (e.g. sample_15250ms) is named and its values are not
  used; where the remaining columns skip a step, curves are cut before the jump (both reported).
- Values outside [-1, 1] are kept as they are and reported.
- A per-rater file that cannot be parsed is reported and that song's rater curves are skipped; an
  averaged or static file that cannot be parsed raises DataError.
- A WorkerId repeated inside one rater file: the first row is kept, the others are reported.
- Rater files without a WorkerId column (the 2013 set) are counted in ``anonymous_curves``.
- The static song-level means of songs <= 1000 are swapped (valence <-> arousal) in public copies:
  ``check_static_swap`` detects it from the dynamic curves (given >= ``MIN_SWAP_SONGS`` such songs), warns
  and swaps them back. A root written by ``dsaml synth`` records whether it reproduced the swap
  (``SYNTH_CONFIG``); that record is followed instead of the estimate.
- With ``decode_audio`` every audio file is decoded and one shorter than its labels (``attach_audio``)
  is reported and not used (`dsaml inspect` does this; training checks it where it decodes anyway).
- Songs with id >= 2001 are the full songs and the paper's test split; all others are training songs.
"""

from __future__ import annotations

import json
import re
import warnings
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from dsaml_utils.data.files import (
    attach_audio,
    on_grid,
    parse_floats,
    read_csv_grid,
    with_problems,
)
from dsaml_utils.data.types import (
    HOP_SECONDS,
    MEAN,
    Curve,
    MusicDataset,
    Song,
)
from dsaml_utils.errors import DataError

ANNOTATION_DIRS = ("DEAM_Annotations/annotations", "annotations", ".")  # tried in this order
AUDIO_DIRS = ("DEAM_audio/MEMD_audio", "MEMD_audio")  # tried in this order
AVERAGED_DYNAMIC = "annotations averaged per song/dynamic (per second annotations)"
RATER_DYNAMIC = "annotations per each rater/dynamic (per second annotations)"
STATIC_DIR = "annotations averaged per song/song_level"
STATIC_FILES = (
    "static_annotations_averaged_songs_1_2000.csv",
    "static_annotations_averaged_songs_2000_2058.csv",
)
FULL_SONG_MIN_ID = 2001  # ids 2001..2058 are full songs: the paper's test split
SWAP_BOUNDARY = 1000  # static columns of songs <= this id are swapped in public copies
MIN_SWAP_SONGS = 20  # fewer songs than this: correlations of song means are too noisy to decide a swap
SYNTH_CONFIG = "synthetic_truth/config.json"  # written by `dsaml synth`: records swap_static_le_1000
VALUE_RANGE = (-1.0, 1.0)
STATIC_RANGE = (1.0, 9.0)

_SAMPLE = re.compile(r"^sample_(\d+(?:\.\d+)?)ms$")


def sample_seconds(name: str) -> float | None:
    """Seconds named by a `sample_<ms>ms` column, or None for any other name."""
    m = _SAMPLE.match(name.strip())
    return float(m.group(1)) / 1000.0 if m else None


def _sample_times(names: list[str], path: Path) -> np.ndarray:
    """Times of the sample columns; any other column name, or times not increasing, raises DataError."""
    times = []
    for name in names:
        t = sample_seconds(name)
        if t is None:
            raise DataError(f"{path}: unexpected column {name!r} (expected sample_<ms>ms)")
        times.append(t)
    times = np.array(times)
    if len(times) and np.any(np.diff(times) <= 0):
        raise DataError(f"{path}: sample_<ms>ms columns are not in increasing time order")
    return times


def _grid_columns(times: np.ndarray, names: list[str], path: Path, problems: list[str]) -> np.ndarray:
    """Indices of the columns to use: on the 0.5 s grid, up to the first skipped step (both reported)."""
    keep = np.array([i for i, t in enumerate(times) if on_grid(t)], dtype=np.int64)
    off = [names[i] for i in range(len(times)) if not on_grid(times[i])]
    if off:
        problems.append(
            f"{path}: column{'s' if len(off) > 1 else ''} {', '.join(off[:5])}"
            + (f" and {len(off) - 5} more" if len(off) > 5 else "")
            + " off the 0.5 s label grid; values not used"
        )
    steps = np.diff(times[keep])
    jumps = np.flatnonzero(np.abs(steps - HOP_SECONDS) > 1e-6)
    if len(jumps):
        j = int(jumps[0])
        problems.append(
            f"{path}: columns jump from {names[keep[j]]} to {names[keep[j + 1]]} (not 0.5 s); "
            f"curves cut after {names[keep[j]]}"
        )
        keep = keep[: j + 1]
    return keep


def _song_id(cell: str, path: Path, line: int) -> str:
    """A song id cell as the string of its integer; anything else raises DataError."""
    try:
        value = float(cell)
    except ValueError:
        raise DataError(f"{path}: line {line}: song id {cell.strip()!r} is not a number") from None
    if not value.is_integer():
        raise DataError(f"{path}: line {line}: song id {cell.strip()!r} is not an integer")
    return str(int(value))


def _trim(values: np.ndarray, where: str, names: list[str], problems: list[str]) -> int:
    """Usable length of a row: up to its last value, cut at an earlier gap (reported)."""
    ok = ~np.isnan(values)
    if not ok.any():
        problems.append(f"{where}: no values")
        return 0
    n = int(np.flatnonzero(ok)[-1]) + 1
    if not ok[:n].all():
        gap = int(np.argmin(ok[:n]))
        problems.append(f"{where}: empty cell at {names[gap]} before later values; curve cut there")
        n = gap
    return n


def _check_range(values: np.ndarray, where: str, names: list[str], problems: list[str],
                 lo: float = VALUE_RANGE[0], hi: float = VALUE_RANGE[1]) -> None:
    """Report values outside [lo, hi] (kept as they are)."""
    bad = np.flatnonzero(~((values >= lo) & (values <= hi)))
    if len(bad):
        i = int(bad[0])
        problems.append(
            f"{where}, column {names[i]}: value {values[i]:g} outside [{lo:g}, {hi:g}]"
            + (f" ({len(bad)} values out of range in this row)" if len(bad) > 1 else "")
        )


def read_averaged_dynamic(path: Path, problems: list[str]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Song id -> (times, values) from an averaged dynamic file (song_id, sample_<ms>ms, ...)."""
    header, rows = read_csv_grid(path, pad_short=True)  # short songs may omit trailing empty cells
    if header[0].lower() != "song_id":
        raise DataError(f"{path}: first column is {header[0]!r}, expected 'song_id'")
    all_names = header[1:]
    all_times = _sample_times(all_names, path)
    cols = _grid_columns(all_times, all_names, path, problems)
    names, times = [all_names[i] for i in cols], all_times[cols]
    out: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for line, cells in rows:
        sid = _song_id(cells[0], path, line)
        values = parse_floats(cells[1:], path, line, all_names)[cols]
        where = f"{path}: song {sid}"
        n = _trim(values, where, names, problems)
        if n == 0:
            continue
        _check_range(values[:n], where, names, problems)
        if sid in out:
            problems.append(f"{where}: repeated row at line {line}; the first one is kept")
            continue
        out[sid] = (times[:n], values[:n])
    return out


def read_rater_file(path: Path, problems: list[str]):
    """One per-rater file: ({worker: (times, values)}, 0) with WorkerId, or (None, row count) without.

    Raises DataError when the file cannot be parsed; row-level issues go to `problems`.
    """
    header, rows = read_csv_grid(path, pad_short=True)
    if header[0].lower() == "workerid":
        all_names = header[1:]
        all_times = _sample_times(all_names, path)
        cols = _grid_columns(all_times, all_names, path, problems)
        names, times = [all_names[i] for i in cols], all_times[cols]
        curves: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        for line, cells in rows:
            worker = cells[0].strip()
            values = parse_floats(cells[1:], path, line, all_names)[cols]
            where = f"{path}: worker {worker}"
            if not worker:
                problems.append(f"{path}: line {line}: empty WorkerId; row skipped")
                continue
            if worker == MEAN:
                problems.append(f"{path}: line {line}: WorkerId {MEAN!r} is reserved; row skipped")
                continue
            if worker in curves:
                problems.append(
                    f"{path}: WorkerId {worker} appears more than once (line {line}); "
                    "the first row is kept"
                )
                continue
            n = _trim(values, where, names, problems)
            if n == 0:
                continue
            _check_range(values[:n], where, names, problems)
            curves[worker] = (times[:n], values[:n])
        return curves, 0
    # No WorkerId: rows of anonymous raters, with a sample_<ms>ms header or no header at all.
    if all(sample_seconds(h) is not None for h in header):
        _sample_times(header, path)
        for line, cells in rows:
            parse_floats(cells, path, line, header)
        return None, len(rows)
    parse_floats(header, path, 1, [f"field {i + 1}" for i in range(len(header))])
    return None, len(rows) + 1


def _pair(a: tuple[np.ndarray, np.ndarray], v: tuple[np.ndarray, np.ndarray], where: str,
          problems: list[str]) -> Curve | None:
    """Arousal and valence (times, values) as one Curve over their common time prefix."""
    n = min(len(a[0]), len(v[0]))
    if not np.allclose(a[0][:n], v[0][:n]):
        problems.append(f"{where}: arousal and valence times differ; curve skipped")
        return None
    if len(a[0]) != len(v[0]):
        problems.append(
            f"{where}: arousal has {len(a[0])} values, valence {len(v[0])}; cut to {n}"
        )
    return Curve(a[0][:n], a[1][:n], v[1][:n])


def _read_static(path: Path, problems: list[str]) -> dict[str, dict[str, float]]:
    """Song id -> {"arousal", "valence"} song-level means (1..9) from a static file."""
    header, rows = read_csv_grid(path)  # names are stripped: the real header has ", " separators
    cols = {h.lower(): i for i, h in enumerate(header)}
    for need in ("song_id", "valence_mean", "arousal_mean"):
        if need not in cols:
            raise DataError(f"{path}: no column {need!r} (columns: {', '.join(header)})")
    idx = [cols["song_id"], cols["arousal_mean"], cols["valence_mean"]]
    out: dict[str, dict[str, float]] = {}
    for line, cells in rows:
        sid = _song_id(cells[idx[0]], path, line)
        a, v = parse_floats([cells[idx[1]], cells[idx[2]]], path, line, ["arousal_mean", "valence_mean"])
        if np.isnan(a) or np.isnan(v):
            problems.append(f"{path}: song {sid}: empty static value; skipped")
            continue
        _check_range(np.array([a, v]), f"{path}: song {sid}", ["arousal_mean", "valence_mean"],
                     problems, *STATIC_RANGE)
        if sid in out:
            problems.append(f"{path}: song {sid}: repeated row at line {line}; the first one is kept")
            continue
        out[sid] = {"arousal": float(a), "valence": float(v)}
    return out


def _corr(x: list[float], y: list[float]) -> float:
    """Pearson correlation, NaN when either side is constant."""
    x, y = np.asarray(x), np.asarray(y)
    if x.std() == 0 or y.std() == 0:
        return float("nan")
    return float(np.corrcoef(x, y)[0, 1])


def _swap(songs: dict[str, Song], ids: list[str]) -> None:
    """Exchange the static arousal and valence of these songs."""
    for i in ids:
        st = songs[i].static
        st["arousal"], st["valence"] = st["valence"], st["arousal"]


def _swap_group(songs: dict[str, Song], boundary: int) -> list[str]:
    """Ids <= boundary with static labels and a MEAN curve: the songs the swap check looks at."""
    return [sid for sid, s in songs.items() if int(sid) <= boundary and s.static is not None and MEAN in s.curves]


def check_static_swap(songs: dict[str, Song], boundary: int = SWAP_BOUNDARY,
                      min_songs: int = MIN_SWAP_SONGS) -> list[str]:
    """Swap back the static arousal/valence of songs <= boundary where they match the crossed dynamic
    dimension better; returns the message (also warned) when it swaps, else [].

    Only ids <= boundary are checked: that is where public DEAM copies (and, by default, ``dsaml synth``)
    swap the columns; the full songs 2001.. are never swapped, so a chance win of the crossed correlation
    over a handful of them must not swap them. The song-level static means are correlated with the means
    of the songs' MEAN dynamic curves, straight (valence with valence, arousal with arousal) and crossed;
    with fewer than `min_songs` songs the correlations are too noisy (3 songs gave 0.41 vs 0.20 by chance)
    and nothing is changed.
    """
    ids = _swap_group(songs, boundary)
    if len(ids) < max(min_songs, 2):
        return []
    sa = [songs[i].static["arousal"] for i in ids]
    sv = [songs[i].static["valence"] for i in ids]
    da = [float(np.mean(songs[i].curves[MEAN].arousal)) for i in ids]
    dv = [float(np.mean(songs[i].curves[MEAN].valence)) for i in ids]
    straight = (_corr(sa, da) + _corr(sv, dv)) / 2
    crossed = (_corr(sv, da) + _corr(sa, dv)) / 2
    if np.isnan(straight) or np.isnan(crossed) or crossed <= straight:
        return []
    _swap(songs, ids)
    msg = (
        f"static annotations of songs <= {boundary}: valence and arousal columns look swapped relative "
        f"to the dynamic curves (mean correlation straight {straight:.2f}, crossed {crossed:.2f}, "
        f"{len(ids)} songs); swapped back"
    )
    warnings.warn(msg, UserWarning, stacklevel=2)
    return [msg]


def recorded_swap(root: Path) -> bool | None:
    """swap_static_le_1000 as recorded by `dsaml synth` in root/SYNTH_CONFIG; None when not recorded."""
    path = Path(root) / SYNTH_CONFIG
    try:
        value = json.loads(path.read_text())["config"]["swap_static_le_1000"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return value if isinstance(value, bool) else None


def _fix_static_swap(root: Path, songs: dict[str, Song]) -> list[str]:
    """Undo the swapped static columns of songs <= SWAP_BOUNDARY: as a synthetic root records, else estimated."""
    recorded = recorded_swap(root)
    if recorded is None:
        n = len(_swap_group(songs, SWAP_BOUNDARY))
        if 0 < n < MIN_SWAP_SONGS:
            return [(f"static annotations of songs <= {SWAP_BOUNDARY}: only {n} songs with static and dynamic "
                     f"labels, fewer than the {MIN_SWAP_SONGS} needed to tell whether their valence and arousal "
                     "columns are exchanged (as in public DEAM copies); left as written")]
        return check_static_swap(songs)
    ids = [sid for sid, s in songs.items() if int(sid) <= SWAP_BOUNDARY and s.static is not None]
    if not recorded or not ids:
        return []
    _swap(songs, ids)
    msg = (f"static annotations of songs <= {SWAP_BOUNDARY}: valence and arousal columns swapped back, as "
           f"{Path(root) / SYNTH_CONFIG} records (swap_static_le_1000, {len(ids)} songs)")
    return [msg]  # expected (the generator wrote it so): reported in problems, not warned


def _find_dir(root: Path, candidates: tuple[str, ...], marker: str) -> tuple[Path | None, list[Path]]:
    """First root/candidate that contains `marker`, and the paths tried."""
    tried = []
    for c in candidates:
        path = (root / c / marker)
        tried.append(path)
        if path.exists():
            return (root / c), tried
    return None, tried


def load_deam(root: str | Path, *, name: str = "deam", audio_required: bool = False,
              check_audio: bool = True, decode_audio: bool = False) -> MusicDataset:
    """Load DEAM (or a tree in its layout) with MEAN and per-WorkerId curves and the paper's split.

    audio_required: drop songs whose audio is missing or not decodable (each is still reported).
    check_audio: open every audio file with libsndfile (cheap); False only checks that it exists.
    decode_audio: decode every audio file fully and leave out audio shorter than its labels (slow).
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: dataset root not found")
    problems: list[str] = []

    ann, tried = _find_dir(root, ANNOTATION_DIRS, f"{AVERAGED_DYNAMIC}/arousal.csv")
    if ann is None:
        raise DataError(
            f"{root}: no DEAM annotations found; tried " + ", ".join(str(p) for p in tried)
        )
    avg_dir = ann / AVERAGED_DYNAMIC
    if not (avg_dir / "valence.csv").is_file():
        raise DataError(f"{avg_dir / 'valence.csv'}: missing (arousal.csv is there)")
    arousal = read_averaged_dynamic(avg_dir / "arousal.csv", problems)
    valence = read_averaged_dynamic(avg_dir / "valence.csv", problems)

    songs: dict[str, Song] = {}
    for sid in sorted(set(arousal) | set(valence), key=int):
        if sid not in arousal or sid not in valence:
            missing = "arousal" if sid not in arousal else "valence"
            problems.append(f"{avg_dir / (missing + '.csv')}: no curve for song {sid}; song skipped")
            continue
        curve = _pair(arousal[sid], valence[sid], f"{avg_dir}: song {sid}", problems)
        if curve is not None:
            songs[sid] = Song(sid, None, {MEAN: curve}, full_length=int(sid) >= FULL_SONG_MIN_ID)
    if not songs:
        raise DataError(with_problems(f"{avg_dir}: no song has both an arousal and a valence curve", problems))

    anonymous = _load_raters(ann / RATER_DYNAMIC, songs, problems)

    static_found = False
    for fname in STATIC_FILES:
        path = ann / STATIC_DIR / fname
        if not path.is_file():
            problems.append(f"{path}: static annotation file not found")
            continue
        static_found = True
        for sid, st in _read_static(path, problems).items():
            if sid in songs and songs[sid].static is None:
                songs[sid].static = st
    if static_found:
        problems.extend(_fix_static_swap(root, songs))

    _attach_audio(root, songs, problems, check_audio, decode_audio)
    if audio_required:
        songs = {k: s for k, s in songs.items() if s.audio_path is not None}
        if not songs:
            raise DataError(with_problems(f"{root}: no song has usable audio (audio_required=True)", problems))

    ids = sorted(songs, key=int)
    return MusicDataset(
        name=name,
        root=root,
        songs=songs,
        train_ids=[s for s in ids if int(s) < FULL_SONG_MIN_ID],
        test_ids=[s for s in ids if int(s) >= FULL_SONG_MIN_ID],
        value_range=VALUE_RANGE,
        problems=problems,
        anonymous_curves=anonymous,
    )


def _load_raters(rater_dir: Path, songs: dict[str, Song], problems: list[str]) -> int:
    """Add one curve per WorkerId to songs; return the number of anonymous rater curves."""
    a_dir, v_dir = rater_dir / "arousal", rater_dir / "valence"
    if not a_dir.is_dir() and not v_dir.is_dir():
        problems.append(f"{rater_dir}: no per-rater annotations (arousal/ and valence/ not found)")
        return 0
    a_files = {p.stem: p for p in a_dir.glob("*.csv")} if a_dir.is_dir() else {}
    v_files = {p.stem: p for p in v_dir.glob("*.csv")} if v_dir.is_dir() else {}
    anonymous = 0
    stems = sorted(set(a_files) | set(v_files), key=lambda s: (len(s), s))  # numeric order for ids
    for stem in tqdm(stems, desc="DEAM rater files", disable=len(stems) < 200, leave=False):
        if stem not in a_files or stem not in v_files:
            have, lack = (a_files, v_dir) if stem in a_files else (v_files, a_dir)
            problems.append(f"{have[stem]}: no matching file {lack / (stem + '.csv')}; skipped")
            continue
        if not stem.isdigit() or str(int(stem)) not in songs:
            problems.append(f"{a_files[stem]}: song {stem} has no averaged curve; rater files ignored")
            continue
        sid = str(int(stem))
        try:
            a_curves, a_anon = read_rater_file(a_files[stem], problems)
            v_curves, v_anon = read_rater_file(v_files[stem], problems)
        except DataError as exc:
            problems.append(f"{exc}; rater curves of song {sid} skipped")
            continue
        if (a_curves is None) != (v_curves is None):
            problems.append(
                f"{a_files[stem]} and {v_files[stem]}: only one of them has a WorkerId column; skipped"
            )
            continue
        if a_curves is None:
            if a_anon != v_anon:
                problems.append(
                    f"song {sid}: {a_anon} anonymous arousal rows but {v_anon} valence rows"
                )
            anonymous += max(a_anon, v_anon)
            continue
        for worker, a in a_curves.items():
            if worker in v_curves:
                curve = _pair(a, v_curves[worker], f"song {sid}: worker {worker}", problems)
                if curve is not None:
                    songs[sid].curves[worker] = curve
        unmatched = sorted(set(a_curves) ^ set(v_curves))
        if unmatched:
            problems.append(
                f"song {sid}: WorkerId(s) {', '.join(unmatched)} have only one of arousal/valence "
                f"in {a_files[stem].parent.parent}; skipped"
            )
    return anonymous


def _attach_audio(root: Path, songs: dict[str, Song], problems: list[str], check: bool, decode: bool) -> None:
    """Set each song's audio_path when its MP3 exists (and opens); report the others."""
    audio_dir = next((root / c for c in AUDIO_DIRS if (root / c).is_dir()), None)
    if audio_dir is None:
        tried = ", ".join(str(root / c) for c in AUDIO_DIRS)
        problems.append(f"no audio folder found (tried {tried}): {len(songs)} songs have no audio")
        return
    attach_audio(songs, audio_dir, problems, check, decode=decode)
