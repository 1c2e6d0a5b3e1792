"""A listener's curve as a CSV file: time,arousal,valence at 2 Hz."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from dsaml_utils.data.types import HOP_SECONDS, Curve
from dsaml_utils.errors import DataError
from dsaml_utils.io.atomic import atomic_write_text


def read_curve_csv(path: str | Path) -> Curve:
    """A listener's curve from a CSV with header time,arousal,valence (time in s on a 0.5 s grid)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: curve file not found")
    lines = [ln.strip() for ln in path.read_text(encoding="utf-8-sig").splitlines() if ln.strip()]
    if not lines:
        raise DataError(f"{path}: curve file is empty")
    header = [h.strip().lower() for h in lines[0].split(",")]
    need = ("time", "arousal", "valence")
    if any(n not in header for n in need):
        raise DataError(f"{path}: header must name the columns time,arousal,valence; got {lines[0]!r}")
    cols = [header.index(n) for n in need]
    rows = []
    for i, ln in enumerate(lines[1:], start=2):
        cells = ln.split(",")
        try:
            rows.append([float(cells[c]) for c in cols])
        except (ValueError, IndexError):
            raise DataError(f"{path}: line {i}: expected numbers in columns time,arousal,valence, got {ln!r}") from None
    if not rows:
        raise DataError(f"{path}: no curve values after the header")
    a = np.asarray(rows, dtype=np.float64)
    if not np.isfinite(a).all():
        raise DataError(f"{path}: curve contains NaN or infinite values")
    steps = np.diff(a[:, 0])
    if len(steps) and not np.allclose(steps, HOP_SECONDS, atol=1e-3):
        bad = int(np.argmax(~np.isclose(steps, HOP_SECONDS, atol=1e-3))) + 3
        raise DataError(f"{path}: line {bad}: times must increase by {HOP_SECONDS} s (2 Hz labels)")
    if a[0, 0] < 0:
        raise DataError(f"{path}: negative time {a[0, 0]}")
    return Curve(a[:, 0], a[:, 1], a[:, 2])


def write_curve_csv(path: Path, times: np.ndarray, pred: np.ndarray) -> None:
    """Write time,arousal,valence rows (the read_curve_csv format)."""
    lines = ["time,arousal,valence"] + [f"{t:.1f},{p[0]:.4f},{p[1]:.4f}" for t, p in zip(times, pred)]
    atomic_write_text(path, "\n".join(lines) + "\n")
