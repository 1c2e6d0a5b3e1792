"""Frame feature files for every song of a dataset root that has audio (`dsaml features`), in its own layout.

DEAM and synthetic roots get ``features/<song_id>.csv`` (';'); PMEmo roots get one file per song in
``features/dynamic_features/<musicId>.csv`` (as PMEmo's own script writes them) and the long file
``features/dynamic_features.csv`` assembled from them. What is computed: ``features.opensmile``.

Nothing is silently replaced. A feature file that exists and is not older than its audio is kept (not
recomputed); one older than its audio (or, for PMEmo's long file, one that is older than some audio or lacks
songs) is refused and named, unless ``overwrite=True``, which recomputes and replaces every file. A song
whose audio is missing or does not decode is reported and skipped.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from tqdm.auto import tqdm

from dsaml_utils.data.frames import (
    DEAM_FEATURE_DIRS,
    PMEMO_FEATURE_FILE,
    feature_folder,
    read_frame_table,
    song_rows,
)
from dsaml_utils.data.registry import load_dataset
from dsaml_utils.data.synthetic import SynthConfig, SynthSummary, generate
from dsaml_utils.errors import DataError, UserError
from dsaml_utils.features.opensmile import SmileConfig, deam_text, pmemo_text, song_summary
from dsaml_utils.io.atomic import atomic_write_text

PMEMO_SONG_DIR = Path("features") / "dynamic_features"


@dataclass
class FeatureReport:
    """What a run wrote, kept, refused and skipped (paths and one-line reasons)."""

    root: Path
    written: list[Path] = field(default_factory=list)
    kept: list[Path] = field(default_factory=list)  # up to date: not recomputed
    refused: list[str] = field(default_factory=list)  # existing files not replaced (pass overwrite)
    skipped: list[str] = field(default_factory=list)  # songs without usable audio
    seconds: float = 0.0

    def lines(self, show: int = 10) -> list[str]:
        """A short human-readable account: counts, then the first `show` refusals and skips."""
        out = [f"{self.root}: wrote {len(self.written)} feature files, kept {len(self.kept)} up to date, "
               f"refused {len(self.refused)}, skipped {len(self.skipped)} songs ({self.seconds:.1f} s)"]
        for kind, items in (("refused", self.refused), ("skipped", self.skipped)):
            out += [f"  {kind}: {x}" for x in items[:show]]
            if len(items) > show:
                out.append(f"  ... and {len(items) - show} more {kind}")
        return out


def up_to_date(out: Path, inputs: list[Path]) -> bool:
    """True when `out` exists and is not older than any of `inputs`."""
    if not out.is_file():
        return False
    mtime = out.stat().st_mtime_ns
    return all(mtime >= p.stat().st_mtime_ns for p in inputs)


def write_song_file(audio: Path, out: Path, cfg: SmileConfig | None = None, layout: str = "deam",
                    song_id: str | None = None) -> None:
    """Compute one song's features from its audio file and write them (atomically) in the layout's format."""
    summary = song_summary(audio, cfg)
    text = deam_text(summary) if layout == "deam" else pmemo_text({song_id or audio.stem: summary})
    atomic_write_text(out, text)


def _plan(audio: dict[str, Path], targets: dict[str, Path], overwrite: bool,
          report: FeatureReport) -> list[str]:
    """Song ids to compute; up-to-date files go to report.kept, stale ones (without overwrite) to refused."""
    todo = []
    for sid, out in targets.items():
        if out.exists() and not overwrite:
            if up_to_date(out, [audio[sid]]):
                report.kept.append(out)
            else:
                report.refused.append(f"{out}: older than its audio {audio[sid]}; not replaced (--overwrite "
                                      "recomputes it)")
            continue
        todo.append(sid)
    return todo


def _compute(todo: list[str], audio: dict[str, Path], targets: dict[str, Path], layout: str,
             cfg: SmileConfig | None, workers: int, progress: bool, report: FeatureReport) -> None:
    """Write the files of `todo` (threads: openSMILE runs outside the GIL); failures go to report.skipped."""
    def one(sid: str) -> str | None:
        try:
            write_song_file(audio[sid], targets[sid], cfg, layout, sid)
        except DataError as exc:
            return f"song {sid}: {exc}"
        return None

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        results = list(tqdm(pool.map(one, todo), total=len(todo), desc="openSMILE features", unit="song",
                            disable=not progress or not todo))
    for sid, err in zip(todo, results):
        if err:
            report.skipped.append(err)
        else:
            report.written.append(targets[sid])


def _pmemo_long(root: Path, songs: dict[str, Path], report: FeatureReport) -> None:
    """Assemble features/dynamic_features.csv from the per-song files (every song that has one), by musicId."""
    have = sorted(((sid, p) for sid, p in songs.items() if p.is_file()), key=lambda kv: int(kv[0]))
    if not have:
        return
    texts = [p.read_text() for _, p in have]
    header = texts[0].split("\n", 1)[0]
    for (_, p), text in zip(have, texts):
        if text.split("\n", 1)[0] != header:
            raise DataError(f"{p}: header differs from {have[0][1]}'s; delete the stale one or pass --overwrite")
    path = root / PMEMO_FEATURE_FILE
    atomic_write_text(path, texts[0] + "".join(t.split("\n", 1)[1] for t in texts[1:]))
    report.written.append(path)


def _pmemo_long_state(path: Path, audio: dict[str, Path]) -> str | None:
    """None when PMEmo's long file covers every song with audio and is not older than any of them, else why."""
    try:
        covered = set(song_rows(read_frame_table(path)))
    except DataError as exc:
        return f"{path}: unreadable ({exc})"
    missing = sorted(set(audio) - covered, key=int)
    if missing:
        return f"{path}: has no rows for {len(missing)} songs with audio (e.g. {missing[0]})"
    if not up_to_date(path, list(audio.values())):
        return f"{path}: older than some of the audio files"
    return None


def write_features(dataset: str, root: str | Path, *, overwrite: bool = False, cfg: SmileConfig | None = None,
                   workers: int = 1, progress: bool = True) -> FeatureReport:
    """Compute the frame feature files of every song of `root` (a "deam", "pmemo" or "synthetic" root) that
    has audio; see the module docstring for what is kept, refused and skipped."""
    t0 = time.perf_counter()
    root = Path(root)
    ds = load_dataset(dataset, root, check_audio=True)
    report = FeatureReport(root)
    audio = {sid: Path(s.audio_path) for sid, s in ds.songs.items() if s.audio_path is not None}
    for sid, s in ds.songs.items():
        if s.audio_path is None:
            why = next((p for p in ds.problems if p.startswith(f"song {sid}: ")), f"song {sid}: no audio file")
            report.skipped.append(why)
    if not audio:
        raise DataError(f"{root}: no song has usable audio; no frame features can be computed")
    if dataset == "pmemo":
        long_path = root / PMEMO_FEATURE_FILE
        if long_path.exists() and not overwrite:
            problem = _pmemo_long_state(long_path, audio)
            if problem is None:
                report.kept.append(long_path)
            else:
                report.refused.append(f"{problem}; not replaced (--overwrite recomputes it)")
            report.seconds = round(time.perf_counter() - t0, 2)
            return report
        targets = {sid: root / PMEMO_SONG_DIR / f"{sid}.csv" for sid in audio}
        layout = "pmemo"
    else:
        folder = feature_folder(root) or root / DEAM_FEATURE_DIRS[0]
        targets = {sid: folder / f"{sid}.csv" for sid in audio}
        layout = "deam"
    todo = _plan(audio, targets, overwrite, report)
    _compute(todo, audio, targets, layout, cfg, workers, progress, report)
    if dataset == "pmemo":
        if report.refused:
            report.refused.append(f"{root / PMEMO_FEATURE_FILE}: not written while per-song files are refused")
        else:
            done = set(report.written) | set(report.kept)
            _pmemo_long(root, {sid: p for sid, p in targets.items() if p in done}, report)
    report.seconds = round(time.perf_counter() - t0, 2)
    return report


def synthesize(out: str | Path, cfg: SynthConfig | None = None, overwrite: bool = False, features: bool = True,
               smile: SmileConfig | None = None) -> tuple[SynthSummary, float]:
    """`data.synthetic.generate`, plus DEAM-layout frame features (features/<id>.csv) for every song when
    `features`; returns the summary and the seconds openSMILE took (summed over the rendering threads)."""
    spent: list[float] = []

    def hook(song_id: int, audio: Path) -> None:
        t = time.perf_counter()
        try:
            write_song_file(audio, Path(out) / DEAM_FEATURE_DIRS[0] / f"{song_id}.csv", smile)
        except DataError as exc:  # a rendered song is never too short for openSMILE; say so if it ever is
            raise UserError(f"synthetic song {song_id}: frame features failed: {exc}") from exc
        spent.append(time.perf_counter() - t)

    summary = generate(out, cfg, overwrite=overwrite, song_hook=hook if features else None)
    return summary, round(sum(spent), 2)


def has_features(dataset: str, root: str | Path) -> bool:
    """Whether `root` holds frame features in its layout (PMEmo's long file, or a DEAM features folder)."""
    root = Path(root)
    if dataset == "pmemo":
        return (root / PMEMO_FEATURE_FILE).is_file()
    return feature_folder(root) is not None


def ensure_features(dataset: str, root: str | Path, workers: int = 2, progress: bool = True) -> FeatureReport | None:
    """Compute the frame features of a root that has none (`write_features`); None when it has some already
    (the files a dataset ships, or an earlier `dsaml features`, are used as they are)."""
    if has_features(dataset, root):
        return None
    return write_features(dataset, root, workers=workers, progress=progress)
