"""The in-memory model of a DMER dataset that every later stage uses.

A dataset is a set of songs; each song has (maybe) an audio file and one valence/arousal curve per
listener. The average over listeners is itself a listener called ``"mean"``, so that DMER (predict the
mean) and PDMER (predict one listener) read their labels the same way.

Time convention (the one place it is written down): labels come at 2 Hz. ``Curve.times[i]`` is the
time in seconds named by the annotation column (DEAM's ``sample_15000ms`` is 15.0 s, PMEmo's
``frameTime`` 15.5 is 15.5 s), and label i describes the audio slice ``[times[i], times[i] + 0.5)``.
``dsaml_utils.audio.slice_audio`` cuts exactly those slices.

Below the model: CSV/audio checks shared by the loaders (deam.py, pmemo.py), ``load_dataset`` and
``summarize``, and the ``dsaml inspect`` subcommand.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from dsaml_utils.errors import DataError, UserError

MEAN = "mean"
"""The listener id under which a song's averaged curve is stored."""

HOP_SECONDS = 0.5
"""Label period: one valence/arousal value every 0.5 s (2 Hz)."""


@dataclass
class Curve:
    """One listener's arousal and valence curve for one song, sampled at 2 Hz."""

    times: np.ndarray  # [T] float seconds; label i covers audio [times[i], times[i] + 0.5)
    arousal: np.ndarray  # [T] float
    valence: np.ndarray  # [T] float

    def __post_init__(self) -> None:
        self.times = np.asarray(self.times, dtype=np.float64)
        self.arousal = np.asarray(self.arousal, dtype=np.float32)
        self.valence = np.asarray(self.valence, dtype=np.float32)
        if not (len(self.times) == len(self.arousal) == len(self.valence)):
            raise ValueError(
                f"curve lengths differ: times {len(self.times)}, arousal {len(self.arousal)}, "
                f"valence {len(self.valence)}"
            )

    def __len__(self) -> int:
        return len(self.times)

    def values(self) -> np.ndarray:
        """The curve as a [T, 2] array of (arousal, valence)."""
        return np.stack([self.arousal, self.valence], axis=1)

    def crop(self, start: int, length: int) -> "Curve":
        """Labels start .. start+length-1 as a new curve."""
        s = slice(start, start + length)
        return Curve(self.times[s], self.arousal[s], self.valence[s])


@dataclass
class Song:
    """A song: its id, its audio file (None when absent) and its curves per listener."""

    song_id: str
    audio_path: Path | None
    curves: dict[str, Curve] = field(default_factory=dict)  # listener id -> curve; MEAN = average
    static: dict[str, float] | None = None  # song-level {"arousal": a, "valence": v}, when known
    full_length: bool = False  # a full song (DEAM 2001..2058) rather than a 45 s clip
    mean_std: Curve | None = None  # listeners' std around the MEAN curve, same times (PMEmo only)

    @property
    def listeners(self) -> list[str]:
        """Identified listeners who annotated this song (MEAN excluded)."""
        return [k for k in self.curves if k != MEAN]


@dataclass
class MusicDataset:
    """Songs, their curves per listener, the paper's split, and the problems met while loading."""

    name: str  # "deam", "pmemo" or "synthetic"
    root: Path
    songs: dict[str, Song]
    train_ids: list[str]
    test_ids: list[str]
    value_range: tuple[float, float]  # documented label range: DEAM (-1, 1), PMEmo (0, 1)
    problems: list[str] = field(default_factory=list)
    anonymous_curves: int = 0  # rater rows without a WorkerId (DEAM 2013 set): counted, not usable

    def listeners(self, song_ids: list[str] | None = None) -> list[str]:
        """Sorted distinct listener identities over the given songs (all songs by default)."""
        ids = self.songs if song_ids is None else song_ids
        return sorted({lst for sid in ids for lst in self.songs[sid].listeners})

    def songs_of(self, listener: str, song_ids: list[str] | None = None) -> list[str]:
        """Ids of the songs (among song_ids, default all) that this listener annotated."""
        ids = self.songs if song_ids is None else song_ids
        return [sid for sid in ids if listener in self.songs[sid].curves]

    def subset(self, song_ids: list[str]) -> "MusicDataset":
        """A dataset restricted to these songs (split lists filtered accordingly)."""
        keep = set(song_ids)
        return dataclasses.replace(
            self,
            songs={k: v for k, v in self.songs.items() if k in keep},
            train_ids=[s for s in self.train_ids if s in keep],
            test_ids=[s for s in self.test_ids if s in keep],
            problems=list(self.problems),
        )


@dataclass
class TaskFilter:
    """The authors' filters for personalized tasks; every threshold can be changed or disabled."""

    min_songs: int = 16  # drop listeners with fewer songs (authors: drop raters with <= 15 songs)
    flat_threshold: float = 0.01  # drop a curve whose mean |x - mean(x)| is below this ...
    flat_window: int = 60  # ... over its first this-many values (arousal and valence both flat)


def is_flat(curve: Curve, threshold: float, window: int) -> bool:
    """True when both dimensions barely move over the first `window` labels."""
    def dev(x: np.ndarray) -> float:
        x = x[:window]
        return float(np.mean(np.abs(x - x.mean()))) if len(x) else 0.0

    return dev(curve.arousal) < threshold and dev(curve.valence) < threshold


def personalized_tasks(
    ds: MusicDataset, song_ids: list[str], filt: TaskFilter | None = None
) -> dict[str, list[str]]:
    """Listener -> the songs (among song_ids) they annotated, after the authors' filters.

    This is the paper's personalized task construction: one task per annotator. Near-flat curves are
    dropped first, then listeners left with fewer than `filt.min_songs` songs.
    """
    filt = filt or TaskFilter()
    tasks: dict[str, list[str]] = {}
    for sid in song_ids:
        for lst, curve in ds.songs[sid].curves.items():
            if lst == MEAN:
                continue
            if filt.flat_threshold > 0 and is_flat(curve, filt.flat_threshold, filt.flat_window):
                continue
            tasks.setdefault(lst, []).append(sid)
    return {k: v for k, v in sorted(tasks.items()) if len(v) >= filt.min_songs}


# ----------------------------------------------------------------------------------------------------
# Helpers shared by the dataset loaders (deam.py, pmemo.py): strict CSV reading and a cheap audio check.


def read_csv_grid(
    path: Path, delimiter: str = ",", pad_short: bool = False
) -> tuple[list[str], list[tuple[int, list[str]]]]:
    """Header (names stripped) and (line number, cells) per non-blank row; ragged rows raise DataError.

    With `pad_short`, a row shorter than the header is read as ending in empty cells (a writer that drops
    trailing commas of a short song); a row longer than the header is still an error.
    """
    path = Path(path)
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f, delimiter=delimiter)
            header = [h.strip() for h in next(reader, [])]
            rows = []
            for cells in reader:
                if not cells or all(not c.strip() for c in cells):
                    continue  # blank line
                if pad_short and len(cells) < len(header):
                    cells = cells + [""] * (len(header) - len(cells))
                if len(cells) != len(header):
                    raise DataError(
                        f"{path}: line {reader.line_num} has {len(cells)} fields but the header has "
                        f"{len(header)}"
                    )
                rows.append((reader.line_num, cells))
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not a UTF-8 text file ({exc.reason})") from None
    except csv.Error as exc:
        raise DataError(f"{path}: malformed CSV ({exc})") from None
    if not header:
        raise DataError(f"{path}: empty file (no header)")
    return header, rows


def parse_floats(cells: list[str], path: Path, line: int, names: list[str]) -> np.ndarray:
    """Cells as float64; empty cells (and 'nan') become NaN; a non-numeric cell raises DataError."""
    try:  # fast path: every cell numeric or empty
        return np.fromiter((float(c) if c and not c.isspace() else np.nan for c in cells),
                           np.float64, len(cells))
    except ValueError:
        pass
    out = np.empty(len(cells), dtype=np.float64)
    for i, c in enumerate(cells):
        c = c.strip()
        if not c:
            out[i] = np.nan
            continue
        try:
            out[i] = float(c)
        except ValueError:
            raise DataError(f"{path}: line {line}, column {names[i]!r}: {c!r} is not a number") from None
    return out


def audio_problem(path: Path) -> str | None:
    """None when the audio file exists and libsndfile can open it with samples, else a one-line reason."""
    import soundfile as sf

    path = Path(path)
    if not path.is_file():
        return f"{path}: audio file missing"
    try:
        info = sf.info(str(path))
    except (RuntimeError, OSError, ValueError) as exc:  # LibsndfileError is a RuntimeError
        # libsndfile says "File does not exist" for files it cannot parse; the file does exist here.
        detail = "" if "does not exist" in str(exc) else f": {str(exc).strip().splitlines()[0]}"
        return f"{path}: audio file not decodable (unknown format or corrupt data{detail})"
    if info.frames <= 0 or info.samplerate <= 0:
        return f"{path}: audio file has no samples"
    return None


def attach_audio(songs: dict[str, Song], audio_dir: Path, problems: list[str], check: bool = True,
                 suffix: str = ".mp3") -> None:
    """Set each song's audio_path to audio_dir/<id><suffix> when usable; report the others.

    check: open each file with libsndfile (cheap); False only checks that it exists.
    """
    from tqdm.auto import tqdm

    for sid in tqdm(list(songs), desc="audio check", disable=len(songs) < 200, leave=False):
        path = Path(audio_dir) / f"{sid}{suffix}"
        issue = audio_problem(path) if check else (None if path.is_file() else f"{path}: audio file missing")
        if issue:
            problems.append(f"song {sid}: {issue}")
        else:
            songs[sid].audio_path = path


# ----------------------------------------------------------------------------------------------------
# Entry points: load a dataset by name, summarise it, and the `dsaml inspect` subcommand.

DATASETS = ("deam", "pmemo", "synthetic")


def load_dataset(name: str, root: str | Path, **kwargs) -> MusicDataset:
    """Load "deam", "pmemo" or "synthetic" (a DEAM-layout tree written by `dsaml synth`) from root."""
    if name == "deam":
        from dsaml_utils.deam import load_deam

        return load_deam(root, **kwargs)
    if name == "synthetic":
        from dsaml_utils.deam import load_deam

        return load_deam(root, name="synthetic", **kwargs)
    if name == "pmemo":
        from dsaml_utils.pmemo import load_pmemo

        return load_pmemo(root, **kwargs)
    raise UserError(f"unknown dataset {name!r}; expected one of {', '.join(DATASETS)}")


def summarize(ds: MusicDataset) -> dict:
    """Counts that say what a loaded dataset can be used for, plus its problems (JSON-ready)."""
    songs = ds.songs.values()
    split = set(ds.train_ids) | set(ds.test_ids)
    lengths = [len(s.curves[MEAN]) for s in songs if MEAN in s.curves]
    summary = {
        "name": ds.name,
        "root": str(ds.root),
        "value_range": list(ds.value_range),
        "songs_annotated": len(ds.songs),
        "songs_with_audio": sum(s.audio_path is not None for s in songs),
        "full_length_songs": sum(s.full_length for s in songs),
        "static_songs": sum(s.static is not None for s in songs),
        "train_songs": len(ds.train_ids),
        "test_songs": len(ds.test_ids),
        "unsplit_songs": sum(sid not in split for sid in ds.songs),
        "mean_labels_min": min(lengths, default=0),
        "mean_labels_max": max(lengths, default=0),
        "listeners": len(ds.listeners()),
        "listener_curves": sum(len(s.listeners) for s in songs),
        "task_listeners_train": len(personalized_tasks(ds, ds.train_ids)),
        "anonymous_curves": ds.anonymous_curves,
        "problems": list(ds.problems),
    }
    reason = None
    if not ds.songs:
        reason = "no annotated songs"
    elif not ds.train_ids:
        reason = "no training songs in the paper's split"
    elif not ds.test_ids:
        reason = "no test songs in the paper's split"
    summary["usable"] = reason is None
    summary["reason"] = reason
    return summary


def format_summary(summary: dict, max_problems: int = 20) -> str:
    """The summary as a few human-readable lines."""
    s = summary
    lines = [
        f"dataset    {s['name']}  (root {s['root']}, labels in "
        f"[{s['value_range'][0]}, {s['value_range'][1]}])",
        f"songs      {s['songs_annotated']} annotated, {s['songs_with_audio']} with audio, "
        f"{s['full_length_songs']} full-length, {s['static_songs']} with static labels",
        f"split      train {s['train_songs']}, test {s['test_songs']}, "
        f"outside the split {s['unsplit_songs']}",
        f"labels     {s['mean_labels_min']}..{s['mean_labels_max']} mean-curve values per song (2 Hz)",
        f"listeners  {s['listeners']} identified, {s['listener_curves']} listener-song curves, "
        f"{s['task_listeners_train']} with a personalized training task (default filters), "
        f"{s['anonymous_curves']} anonymous rater curves",
        f"usable     {'yes' if s['usable'] else 'no: ' + s['reason']}",
        f"problems   {len(s['problems'])}",
    ]
    lines += [f"  - {p}" for p in s["problems"][:max_problems]]
    if len(s["problems"]) > max_problems:
        lines.append(f"  ... and {len(s['problems']) - max_problems} more (see --json)")
    return "\n".join(lines)


def _inspect_main(args: argparse.Namespace) -> int:
    """`dsaml inspect`: load, print the summary, exit 2 when the dataset is not usable."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # every warning is also listed in the summary's problems
            ds = load_dataset(args.dataset, args.root)
    except UserError as exc:
        if args.json:
            print(json.dumps({"usable": False, "reason": str(exc)}))
        raise
    summary = summarize(ds)
    print(json.dumps(summary, indent=1) if args.json else format_summary(summary))
    sys.stdout.flush()
    if not summary["usable"]:
        raise DataError(f"{args.root}: not usable as {args.dataset}: {summary['reason']}")
    return 0


def register_cli(subparsers) -> None:
    """Add `dsaml inspect`."""
    p = subparsers.add_parser(
        "inspect", help="load a dataset and report what is usable",
        description="Load a dataset, print how many songs, listeners and curves it has and every "
        "problem met; exit status 2 when it cannot be used.",
    )
    p.add_argument("--dataset", choices=DATASETS, required=True, help="which loader to use")
    p.add_argument("--root", type=Path, required=True, help="the dataset's root folder")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    p.set_defaults(func=_inspect_main)
