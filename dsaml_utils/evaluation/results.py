"""metrics.json: typed records of what one evaluated run scored, written and read only here; runs combined.

The file's layout (keys) is the one `dsaml evaluate` has always written, so older files still read:

    {"run", "seed", "preset", "mode", "strategy", "model", "protocol", "selected_on_test",
     "config": {...}, "data": {...}, "code_version",
     "model_digest", "created", "train": {...},
     "dmer": {"summary": {metric: {"mean", "lo", "hi", "n"}}, "per_song": [...]} | {"skipped"},
     "pdmer": {"listeners", "songs_per_listener", "notes",
               "kshot": {"<k>": {"listeners", "pairs", "adapted": {"summary", "per_pair"}, "no_adaptation": ...}
                        | {"skipped"}},
               "same_song": {"pairs", "support_steps", "adapted", "no_adaptation"} | {"skipped"}}
              | {"skipped", "notes"},
     "headline": {part: {metric: mean}}, "eval_wall_seconds"}

"protocol" is the protocol the file was scored under ("paper" / "authors", `training.protocol`) and
"selected_on_test" whether the weights were chosen by their score on the test split (the authors'
protocol: test-set leakage); files from before the switch have neither (read as None: paper, not marked)
and are written back without them.
"headline" is written for readers outside Python and recomputed from the summaries when read. Numbers that
are undefined (an interval from one value) are NaN in the records and null in the file (strict JSON).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from dsaml_utils.errors import UserError
from dsaml_utils.io.atomic import atomic_write_text
from dsaml_utils.metrics import aggregate_seeds

PARTS = ("dmer", "pdmer", "pdmer_no_adaptation", "pdmer_same_song", "pdmer_same_song_no_adaptation")
"""The scored parts of a run: DMER, PDMER (other songs, k-shot) and PDMER on the same song, adapted or not."""

Row = dict[str, Any]
"""One scored song (DMER) or (listener, song) pair (PDMER): its ids and every metrics.score_song value."""


class _Bad(Exception):
    """A missing or malformed field of a metrics.json, named by its dotted location."""


def _same(a: float, b: float) -> bool:
    return a == b or (isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b))


# --------------------------------------------------------------------------------------------------
# the records


class _Numbers:
    """A record of numbers: equal field by field with NaN equal to NaN (a null in the file reads back as NaN)."""

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        return all(_same(getattr(self, f.name), getattr(other, f.name)) for f in fields(self))

    def to_dict(self) -> dict:
        """The fields as a dict, in their order."""
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass(frozen=True, eq=False)
class Stat(_Numbers):
    """One metric over songs or pairs (metrics.interval): mean, 95% interval [lo, hi] (NaN from one value), n."""

    mean: float
    lo: float
    hi: float
    n: int


@dataclass(frozen=True, eq=False)
class SeedStat(_Numbers):
    """One headline metric over runs (seeds, metrics.aggregate_seeds): mean, std (NaN from one run), n."""

    mean: float
    std: float
    n: int


def stats(aggregate: dict[str, dict]) -> dict[str, Stat]:
    """metrics.aggregate_songs output as Stat records, keyed "arousal_ccc", ..."""
    return {k: Stat(v["mean"], v["lo"], v["hi"], v["n"]) for k, v in aggregate.items()}


@dataclass(frozen=True)
class Scores:
    """Scores of one set of songs or pairs: the per-metric summary and the rows it summarizes."""

    summary: dict[str, Stat]
    rows: list[Row]


@dataclass(frozen=True)
class DMERResult:
    """DMER: each test song scored against its MEAN curve, or why nothing was scored."""

    scores: Scores | None = None
    skipped: str | None = None


@dataclass(frozen=True)
class KShot:
    """k-shot PDMER: adapted on k support songs of a held-out listener, scored on their other songs."""

    k: int
    listeners: int = 0
    pairs: int = 0
    adapted: Scores | None = None
    no_adaptation: Scores | None = None
    skipped: str | None = None


@dataclass(frozen=True)
class SameSong:
    """Same-song PDMER (the authors' protocol): adapted on a song's first steps, scored on the rest of it."""

    pairs: int = 0
    support_steps: int = 0
    adapted: Scores | None = None
    no_adaptation: Scores | None = None
    skipped: str | None = None


@dataclass(frozen=True)
class PDMERResult:
    """PDMER on held-out listeners: k-shot results by k, the same-song protocol, or why it was skipped."""

    listeners: int = 0
    songs_per_listener: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    kshot: dict[int, KShot] = field(default_factory=dict)
    same_song: SameSong | None = None
    skipped: str | None = None


@dataclass(frozen=True)
class DataInfo:
    """The data a run was scored on: dataset, root, fingerprint and song counts."""

    dataset: str
    root: str
    fingerprint: str
    train_songs: int
    test_songs: int
    test_songs_scored: int


@dataclass(frozen=True)
class RunMetrics:
    """Everything metrics.json holds about one evaluated run: provenance, DMER and PDMER scores."""

    run: str
    seed: int
    preset: str
    mode: str
    strategy: str | None
    model: str
    config: dict
    data: DataInfo
    code_version: str
    model_digest: str
    created: str
    train: dict
    dmer: DMERResult
    pdmer: PDMERResult
    eval_wall_seconds: float
    protocol: str | None = None  # "paper" or "authors" (None: a file from before the switch, i.e. paper)
    selected_on_test: bool | None = None  # weights chosen on the test split (authors' protocol: leakage)

    @property
    def protocol_name(self) -> str:
        """The protocol the scores were made under ("paper" for files from before the switch)."""
        return self.protocol or "paper"

    def scores(self, part: str, k: int = 1) -> Scores | None:
        """The Scores of one part ("dmer", "pdmer", ..., see PARTS) at k-shot k; None when not scored."""
        if part not in PARTS:
            raise ValueError(f"part must be one of {PARTS}")
        if part == "dmer":
            return self.dmer.scores
        block = self.pdmer.same_song if part.startswith("pdmer_same_song") else self.pdmer.kshot.get(k)
        if block is None:
            return None
        return block.no_adaptation if part.endswith("no_adaptation") else block.adapted

    def summary(self, part: str, k: int = 1) -> dict[str, Stat] | None:
        """The {metric: Stat} summary of one part at k-shot k; None when not scored."""
        s = self.scores(part, k)
        return s.summary if s is not None else None

    def headline(self, k: int = 1) -> dict[str, dict[str, float]]:
        """{part: {metric: mean}} for every scored part (k-shot k)."""
        sums = {part: self.summary(part, k) for part in PARTS}
        return {part: {m: v.mean for m, v in s.items()} for part, s in sums.items() if s is not None}

    def pairs(self, k: int) -> int:
        """How many (listener, song) query pairs k-shot PDMER scored (0 when skipped)."""
        return self.pdmer.kshot[k].pairs if k in self.pdmer.kshot else 0

    @property
    def train_seconds(self) -> float:
        """Training wall time from the train summary (NaN when it is not recorded)."""
        v = self.train.get("train_wall_seconds")
        return math.nan if v is None else float(v)

    def to_dict(self) -> dict:
        """The metrics.json form (strict JSON data: NaN and inf as None), "headline" (k = 1) included."""
        marks = {k: v for k, v in (("protocol", self.protocol), ("selected_on_test", self.selected_on_test))
                 if v is not None}
        return _finite({
            "run": self.run, "seed": self.seed, "preset": self.preset, "mode": self.mode,
            "strategy": self.strategy, "model": self.model, **marks, "config": self.config,
            "data": {"dataset": self.data.dataset, "root": self.data.root, "fingerprint": self.data.fingerprint,
                     "train_songs": self.data.train_songs, "test_songs": self.data.test_songs,
                     "test_songs_scored": self.data.test_songs_scored},
            "code_version": self.code_version, "model_digest": self.model_digest, "created": self.created,
            "train": self.train, "dmer": _dmer_dict(self.dmer), "pdmer": _pdmer_dict(self.pdmer),
            "headline": self.headline(), "eval_wall_seconds": self.eval_wall_seconds,
        })


# --------------------------------------------------------------------------------------------------
# records -> JSON data


def _finite(x):
    """NaN/inf -> None, tuples -> lists, so metrics.json is strict JSON."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_finite(v) for v in x]
    return x


def _scores_dict(s: Scores, rows_key: str) -> dict:
    return {"summary": {m: v.to_dict() for m, v in s.summary.items()}, rows_key: s.rows}


def _dmer_dict(r: DMERResult) -> dict:
    return {"skipped": r.skipped} if r.scores is None else _scores_dict(r.scores, "per_song")


def _adapted_dict(r: KShot | SameSong, head: dict) -> dict:
    """A PDMER block: `head` and its adapted / no-adaptation scores, or why it was skipped."""
    if r.adapted is None or r.no_adaptation is None:
        return {"skipped": r.skipped}
    return {**head, "adapted": _scores_dict(r.adapted, "per_pair"),
            "no_adaptation": _scores_dict(r.no_adaptation, "per_pair")}


def _kshot_dict(r: KShot) -> dict:
    return _adapted_dict(r, {"listeners": r.listeners, "pairs": r.pairs})


def _same_song_dict(r: SameSong) -> dict:
    return _adapted_dict(r, {"pairs": r.pairs, "support_steps": r.support_steps})


def _pdmer_dict(r: PDMERResult) -> dict:
    if r.skipped is not None:
        return {"skipped": r.skipped, "notes": r.notes}
    out = {"listeners": r.listeners, "songs_per_listener": r.songs_per_listener, "notes": r.notes,
           "kshot": {str(k): _kshot_dict(v) for k, v in r.kshot.items()}}
    if r.same_song is not None:
        out["same_song"] = _same_song_dict(r.same_song)
    return out


def jsonable(x):
    """x as strict-JSON data: records (RunMetrics, Stat, SeedStat) as their dicts, NaN/inf as None."""
    if hasattr(x, "to_dict"):
        return _finite(x.to_dict())
    if isinstance(x, dict):
        return {k: jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [jsonable(v) for v in x]
    return _finite(x)


def json_data(x):
    """x as it reads back from JSON (NaN/inf -> None, tuples -> lists, keys -> str): for free-form fields."""
    return json.loads(json.dumps(jsonable(x), allow_nan=False))


# --------------------------------------------------------------------------------------------------
# JSON data -> records


def _get(d, key: str, where: str, kind: type | tuple[type, ...] | None = None, default=...):
    if not isinstance(d, dict):
        raise _Bad(f"{where.rstrip('.') or 'the file'} is not a JSON object")
    if key not in d:
        if default is not ...:
            return default
        raise _Bad(f"no field {where}{key}")
    v = d[key]
    if kind is not None and not isinstance(v, kind):
        names = " or ".join(t.__name__ for t in (kind if isinstance(kind, tuple) else (kind,)))
        raise _Bad(f"field {where}{key} is {type(v).__name__}, not {names}")
    return v


def _num(x, where: str) -> float:
    if x is None:
        return math.nan
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        raise _Bad(f"field {where} is {type(x).__name__}, not a number")
    return float(x)


def _int(d: dict, key: str, where: str) -> int:
    v = _get(d, key, where)
    if isinstance(v, bool) or not isinstance(v, int):
        raise _Bad(f"field {where}{key} is {type(v).__name__}, not an integer")
    return v


def _opt_str(d: dict, key: str, where: str) -> str | None:
    return _get(d, key, where, (str, type(None)), default=None)


def _stat(d, where: str) -> Stat:
    return Stat(_num(_get(d, "mean", where), where + "mean"), _num(_get(d, "lo", where), where + "lo"),
                _num(_get(d, "hi", where), where + "hi"), _int(d, "n", where))


def _scores(d, rows_key: str, where: str) -> Scores:
    summary = _get(d, "summary", where, dict)
    rows = _get(d, rows_key, where, list)
    for i, r in enumerate(rows):
        if not isinstance(r, dict):
            raise _Bad(f"field {where}{rows_key}[{i}] is not a JSON object")
    return Scores({m: _stat(v, f"{where}summary.{m}.") for m, v in summary.items()},
                  [{k: math.nan if v is None else v for k, v in r.items()} for r in rows])


def _dmer(d, where: str) -> DMERResult:
    if "skipped" in d and "summary" not in d:
        return DMERResult(skipped=_opt_str(d, "skipped", where))
    return DMERResult(scores=_scores(d, "per_song", where))


def _skipped(d) -> bool:
    return isinstance(d, dict) and "skipped" in d and "adapted" not in d


def _adapted(d, where: str) -> tuple[Scores, Scores]:
    """A PDMER block's (adapted, no-adaptation) scores."""
    return (_scores(_get(d, "adapted", where), "per_pair", where + "adapted."),
            _scores(_get(d, "no_adaptation", where), "per_pair", where + "no_adaptation."))


def _kshot(k: int, d, where: str) -> KShot:
    if _skipped(d):
        return KShot(k, skipped=_opt_str(d, "skipped", where))
    return KShot(k, _int(d, "listeners", where), _int(d, "pairs", where), *_adapted(d, where))


def _same_song(d, where: str) -> SameSong:
    if _skipped(d):
        return SameSong(skipped=_opt_str(d, "skipped", where))
    return SameSong(_int(d, "pairs", where), _int(d, "support_steps", where), *_adapted(d, where))


def _pdmer(d, where: str) -> PDMERResult:
    notes = [str(n) for n in _get(d, "notes", where, list, default=[])]
    if "skipped" in d:
        return PDMERResult(notes=notes, skipped=_opt_str(d, "skipped", where))
    kshot = {}
    for key, v in _get(d, "kshot", where, dict).items():
        try:
            k = int(key)
        except ValueError:
            raise _Bad(f"field {where}kshot has key {key!r}, not a k") from None
        kshot[k] = _kshot(k, v, f"{where}kshot.{key}.")
    same = _get(d, "same_song", where, dict, default=None)
    return PDMERResult(_int(d, "listeners", where), dict(_get(d, "songs_per_listener", where, dict)), notes,
                       kshot, _same_song(same, where + "same_song.") if same is not None else None)


def _data(d) -> DataInfo:
    w = "data."
    return DataInfo(_get(d, "dataset", w, str), _get(d, "root", w, str), _get(d, "fingerprint", w, str),
                    _int(d, "train_songs", w), _int(d, "test_songs", w), _int(d, "test_songs_scored", w))


def _run_metrics(d) -> RunMetrics:
    return RunMetrics(
        run=_get(d, "run", "", str), seed=_int(d, "seed", ""), preset=_get(d, "preset", "", str),
        mode=_get(d, "mode", "", str), strategy=_opt_str(d, "strategy", ""), model=_get(d, "model", "", str),
        config=_get(d, "config", "", dict), data=_data(_get(d, "data", "", dict)),
        code_version=_get(d, "code_version", "", str), model_digest=_get(d, "model_digest", "", str),
        created=_get(d, "created", "", str), train=_get(d, "train", "", dict),
        dmer=_dmer(_get(d, "dmer", "", dict), "dmer."), pdmer=_pdmer(_get(d, "pdmer", "", dict), "pdmer."),
        eval_wall_seconds=_num(_get(d, "eval_wall_seconds", ""), "eval_wall_seconds"),
        protocol=_opt_str(d, "protocol", ""), selected_on_test=_get(d, "selected_on_test", "", (bool, type(None)), default=None),
    )


# --------------------------------------------------------------------------------------------------
# the file


def write_metrics(path: str | Path, m: RunMetrics) -> None:
    """Write m to path (metrics.json) atomically, as strict JSON (NaN and inf as null)."""
    atomic_write_text(Path(path), json.dumps(m.to_dict(), indent=1, allow_nan=False) + "\n")


def read_metrics(path: str | Path) -> RunMetrics:
    """The RunMetrics of a metrics.json; a UserError naming the file when it is missing, not JSON or incomplete."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: not found (evaluate the run with `dsaml evaluate --run {path.parent}`)")
    try:
        d = json.loads(path.read_text())
    except (UnicodeDecodeError, ValueError) as exc:
        raise UserError(f"{path}: not JSON ({exc}); re-run `dsaml evaluate --run {path.parent}`") from None
    try:
        return _run_metrics(d)
    except _Bad as exc:
        raise UserError(f"{path}: not a complete metrics.json ({exc}); re-run `dsaml evaluate --run "
                        f"{path.parent}`") from None


def combine_runs(runs: list[RunMetrics], k: int = 1) -> dict[str, dict[str, SeedStat]]:
    """Mean +- std over runs (seeds) of each headline metric: {part: {metric: SeedStat}}."""
    out = {}
    heads = [m.headline(k) for m in runs]
    for part in PARTS:
        have = [h[part] for h in heads if part in h]
        if have:
            out[part] = {m: SeedStat(v["mean"], v["std"], v["n"]) for m, v in aggregate_seeds(have).items()}
    return out
