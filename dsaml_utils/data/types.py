"""The in-memory model of a DMER dataset that every later stage uses.

A dataset is a set of songs; each song has (maybe) an audio file and one valence/arousal curve per
listener. The average over listeners is itself a listener called ``"mean"``, so that DMER (predict the
mean) and PDMER (predict one listener) read their labels the same way.

Time convention (the one place it is written down): labels come at 2 Hz. ``Curve.times[i]`` is the
time in seconds named by the annotation column (DEAM's ``sample_15000ms`` is 15.0 s, PMEmo's
``frameTime`` 15.5 is 15.5 s), and label i describes the audio slice ``[times[i], times[i] + 0.5)``.
``dsaml_utils.audio.slice_audio`` cuts exactly those slices.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

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


def is_flat(curve: Curve, threshold: float, window: int, either: bool = False) -> bool:
    """True when both dimensions (`either`: one of them) barely move over the first `window` labels."""
    def dev(x: np.ndarray) -> float:
        x = x[:window]
        return float(np.mean(np.abs(x - x.mean()))) if len(x) else 0.0

    flat = (dev(curve.arousal) < threshold, dev(curve.valence) < threshold)
    # either: the authors drop each dimension's flat curve apart and keep a pair only with both
    # (Littleor/Personalized-DMER utils/DEAM/dataset.py, loading_personalized_data and load_data)
    return any(flat) if either else all(flat)


def personalized_tasks(
    ds: MusicDataset, song_ids: list[str], filt: TaskFilter | None = None, flat_either: bool = False
) -> dict[str, list[str]]:
    """Listener -> the songs (among song_ids) they annotated, after the authors' filters.

    This is the paper's personalized task construction: one task per annotator. Near-flat curves are
    dropped first (`flat_either`: flat in one dimension is enough), then listeners left with fewer than
    `filt.min_songs` songs.
    """
    filt = filt or TaskFilter()
    tasks: dict[str, list[str]] = {}
    for sid in song_ids:
        for lst, curve in ds.songs[sid].curves.items():
            if lst == MEAN:
                continue
            if filt.flat_threshold > 0 and is_flat(curve, filt.flat_threshold, filt.flat_window, flat_either):
                continue
            tasks.setdefault(lst, []).append(sid)
    return {k: v for k, v in sorted(tasks.items()) if len(v) >= filt.min_songs}
