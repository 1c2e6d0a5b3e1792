"""Checks shared by the dataset loaders: CSV grids of numbers, label times on the 2 Hz grid, and audio files
that decode and cover their labels."""

from __future__ import annotations

import csv
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import soundfile as sf
from tqdm.auto import tqdm

from dsaml_utils.data.types import HOP_SECONDS, MEAN, Song
from dsaml_utils.errors import DataError

AUDIO_TOLERANCE = 0.1
"""Seconds decoded audio may fall short of its label span (last label time + 0.5 s) and still be used.

MP3 encoders may add or drop up to one frame (26 ms at 44.1 kHz, 72 ms at 8 kHz); 0.1 s covers that, so
at most a fifth of the last 0.5 s slice is zeros. Audio shorter than that is reported and not used.
"""

GRID_TOLERANCE = 1e-6
"""Seconds a label time may differ from a multiple of 0.5 s (the 2 Hz label grid) and still be on it."""

PROBLEMS_IN_ERROR = 3
"""How many per-song problems a fatal loader error quotes (with a count of all of them)."""


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


def on_grid(t: float) -> bool:
    """True when t (seconds) is a multiple of the 0.5 s label period."""
    return abs(t / HOP_SECONDS - round(t / HOP_SECONDS)) * HOP_SECONDS <= GRID_TOLERANCE


def with_problems(message: str, problems: list[str], first: int = PROBLEMS_IN_ERROR) -> str:
    """A fatal error message followed by the first few problems that led to it and their count."""
    if not problems:
        return message
    shown = "; ".join(problems[:first])
    more = f" (and {len(problems) - first} more)" if len(problems) > first else ""
    return f"{message}; {len(problems)} problems met first: {shown}{more}"


def short_audio(path: Path, seconds: float, times) -> str | None:
    """A one-line reason when `seconds` of decoded audio do not cover labels at `times`, else None."""
    times = np.asarray(times, dtype=np.float64)
    if len(times) == 0:
        return None
    end = float(times[-1]) + HOP_SECONDS
    if seconds >= end - AUDIO_TOLERANCE:
        return None
    return (f"{path}: audio decodes to {seconds:.2f} s but the labels span {times[0]:g}-{end:g} s "
            f"(shorter by more than the {AUDIO_TOLERANCE:g} s tolerance); not used, never zero-padded")


def decoded_seconds(path: Path) -> float:
    """Seconds of audio a full decode yields (a truncated MP3's header may claim more); errors propagate."""
    with sf.SoundFile(str(path)) as f:
        frames, block = 0, np.empty((1 << 16, f.channels), dtype=np.float32)
        while True:
            n = len(f.read(len(block), dtype="float32", out=block))
            frames += n
            if n < len(block):
                return frames / f.samplerate


def audio_problem(path: Path, need=None) -> str | None:
    """None when the audio file exists and libsndfile can open it with samples, else a one-line reason.

    need: label times; when given, the file is fully decoded and must cover them (``short_audio``).
    """
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
    if need is None:
        return None
    try:
        seconds = decoded_seconds(path)
    except (RuntimeError, OSError, ValueError) as exc:
        return f"{path}: audio file not decodable ({str(exc).strip().splitlines()[0]})"
    return short_audio(path, seconds, need)


def attach_audio(songs: dict[str, Song], audio_dir: Path, problems: list[str], check: bool = True,
                 suffix: str = ".mp3", decode: bool = False) -> None:
    """Set each song's audio_path to audio_dir/<id><suffix> when usable; report the others.

    check: open each file with libsndfile (cheap); False only checks that it exists.
    decode: also decode each file fully (threads; minutes for DEAM) and drop audio shorter than its
    MEAN curve's span (``AUDIO_TOLERANCE``); training checks this anyway where it decodes for features.
    """
    def issue(sid: str) -> str | None:
        path = Path(audio_dir) / f"{sid}{suffix}"
        if not check and not decode:
            return None if path.is_file() else f"{path}: audio file missing"
        mean = songs[sid].curves.get(MEAN)
        return audio_problem(path, mean.times if decode and mean is not None else None)

    ids = list(songs)
    workers = min(4, os.cpu_count() or 1) if decode else 1
    with ThreadPoolExecutor(max_workers=workers) as pool:  # libsndfile decodes without holding the GIL
        found = list(tqdm(pool.map(issue, ids), total=len(ids), desc="audio decode" if decode else "audio check",
                          disable=len(ids) < (20 if decode else 200), leave=False))
    for sid, problem in zip(ids, found):
        if problem:
            problems.append(f"song {sid}: {problem}")
        else:
            songs[sid].audio_path = Path(audio_dir) / f"{sid}{suffix}"
