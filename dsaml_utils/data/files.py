"""Checks shared by the dataset loaders: CSV grids of numbers and audio files that decode."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import soundfile as sf
from tqdm.auto import tqdm

from dsaml_utils.data.types import Song
from dsaml_utils.errors import DataError


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
    for sid in tqdm(list(songs), desc="audio check", disable=len(songs) < 200, leave=False):
        path = Path(audio_dir) / f"{sid}{suffix}"
        issue = audio_problem(path) if check else (None if path.is_file() else f"{path}: audio file missing")
        if issue:
            problems.append(f"song {sid}: {issue}")
        else:
            songs[sid].audio_path = path
