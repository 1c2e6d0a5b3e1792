"""Run configuration: every setting a training run depends on, as plain dataclasses saved as config.json.

Three presets, one vocabulary for `dsaml train`, `dsaml experiment`, `dsaml workbook` and the notebooks:
  paper   the paper's setup (values the paper leaves open come from the authors' code)
  quick   a CPU-sized setup for the default synthetic dataset (minutes per run on 2 cores)
  smoke   the quick setup shrunk to seconds (two updates on short windows): exercises the code, no results
Any preset runs under one of two protocols (`protocol`, `training.protocol`): "paper" (default) or
"authors", the authors' code's training and evaluation protocol (model selection on the test split
included); `preset("paper", protocol="authors")` also takes the authors' batch of 15 and 2000 DMER epochs.
How a preset departs from the paper is computed, never written by hand: `deviations(cfg)` compares it
with `preset("paper")` field by field and gives each difference its one-line reason from `REASONS`.

Each setting lives in one place (MAML's outer loop runs for `train.steps` at `train.lr`), and an override
that cannot take effect is an error naming the field. `RunConfig.check` holds every field (nested ones too) to
its type hint, `RANGES` and `CHOICES`, so a bad override or config.json is refused before anything runs.
`encoder="auto"` stays as written until a run starts; `resolve_run` then fixes the encoder name and the
absolute dataset root, which is what config.json records.
Run identity (`RunConfig.settings`) compares settings: not how a path is spelled, nor where the cache is.

A run is one (mode, strategy) pair:
- mode "dmer": plain supervised training (Adam on mini-batches of windows), no MAML;
- mode "pdmer": MAML meta-training (`dsaml_utils.meta.batched.meta_step`);
- strategy "traditional": labels are each song's MEAN curve (DMER's usual labels; for MAML, tasks of
  random songs);
- strategy "personalized": labels are individual listeners' curves (for MAML, one task per listener).
So the paper's Table 4 rows are: pdmer+personalized (DSAML), dmer+personalized (w/o MAML),
pdmer+traditional (w/o personalized tasks), dmer+traditional (w/o both, the usual DMER model).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import typing
from dataclasses import dataclass, field
from pathlib import Path

from dsaml_utils.data.registry import DATASETS
from dsaml_utils.data.types import TaskFilter
from dsaml_utils.encoders.registry import (
    ENCODER_DIMS,
    ENCODERS,
    NORMALIZED_ENCODERS,
    default_encoder_name,
)
from dsaml_utils.errors import UserError
from dsaml_utils.features.mel import MelConfig
from dsaml_utils.io.atomic import atomic_write_text
from dsaml_utils.meta.maml import MetaConfig
from dsaml_utils.models.registry import MODELS
from dsaml_utils.training import fields
from dsaml_utils.training import protocol as protocols

MODES = ("dmer", "pdmer")
STRATEGIES = ("personalized", "traditional")
PRESETS = ("smoke", "quick", "paper")
DEVICES = ("auto", "cpu", "cuda")


@dataclass
class TrainConfig:
    """Optimisation, data windows, validation and checkpointing of one run."""

    steps: int = 2000  # optimizer updates (dmer) or meta-updates (pdmer); paper: 2000 episodes
    batch_size: int = 16  # windows per update in mode dmer (paper silent; = the 16 tasks of a meta-step)
    lr: float = 5e-5  # Adam learning rate (paper); in mode pdmer this is MAML's outer learning rate
    window: int = 60  # steps per training window: 60 x 0.5 s = 30 s (DEAM clips: labels 15-45 s)
    eval_every: int = 100  # validate every N updates (0: only after the last one)
    checkpoint_every: int = 100  # write checkpoint.pt every N updates (a killed run loses at most N)
    val_fraction: float = 0.1  # held out for validation: training songs (dmer) or listeners (pdmer)
    select: str = "best"  # weights that evaluation uses: "best" validation score or "last"
    seed: int = 0  # seeds weights, data order, task sampling, dropout and the validation split
    device: str = "auto"  # "auto" (cuda when available, else cpu), "cpu" or "cuda"
    grad_clip: float | None = None  # clip the update's gradient norm (None: no clipping, as the paper)
    batched_meta: bool = True  # meta-steps with meta.meta_loss_batched (vmap over tasks) vs the task loop
    epochs: int | None = None  # protocol authors, mode dmer: passes over the training samples (authors: 2000);
    # None: train.steps rounded up to whole passes. Only the authors' protocol counts epochs


@dataclass
class EvalConfig:
    """How a trained run is scored (DMER on test songs, PDMER on held-out listeners)."""

    hop: int = 30  # sliding-window hop (steps) on full songs; overlapping predictions are averaged
    kshots: tuple[int, ...] = (1, 2, 4, 8)  # support songs per held-out listener; 1 is the paper's case
    support_steps: int | None = 60  # adapt on the first N labelled steps of each support song (authors:
    # 60); None = every window of the support song
    draws: int = 1  # support draws per listener: draw d rotates the listener's seeded song order by d
    interval: str = "t"  # 95% interval over songs: "t" or "bootstrap" (metrics.interval)
    same_song: bool = True  # also score the authors' protocol: adapt on a song's first support steps, score its rest
    unseen_listeners_only: bool = True  # PDMER only on listeners without a curve on any training song


@dataclass
class RunConfig:
    """Everything one training run depends on; saved as config.json in the run folder."""

    preset: str = "paper"  # the preset these settings started from: "smoke", "quick" or "paper"
    protocol: str = "paper"  # "paper" (the paper's method) or "authors" (their code's protocol: training.protocol)
    mode: str = "dmer"  # "dmer" (no MAML) or "pdmer" (MAML meta-training)
    strategy: str | None = None  # "personalized" | "traditional"; None = traditional (dmer), personalized (pdmer)
    dataset: str = "deam"  # "deam", "pmemo" or "synthetic" (data.registry.load_dataset)
    root: str = "data/DEAM"  # dataset root folder (made absolute when the run starts)
    model: str = "dsaml"  # a name in models.registry.MODELS
    model_config: dict = field(default_factory=dict)  # overrides of the model's preset config
    mel: MelConfig = field(default_factory=MelConfig)
    encoder: str = "auto"  # global encoder (encoders.registry.ENCODERS) or "auto": imagebind when its checkpoint
    # is configured (argument, DSAML_IMAGEBIND_CHECKPOINT, data/checkpoints/), else the offline musicnn
    encoder_checkpoint: str | None = None  # ImageBind .pth / musicnn folder / vibenet .onnx (None: found)
    train: TrainConfig = field(default_factory=TrainConfig)
    meta: MetaConfig = field(default_factory=MetaConfig)
    tasks: TaskFilter = field(default_factory=TaskFilter)
    eval: EvalConfig = field(default_factory=EvalConfig)
    init: str | None = None  # start from the weights of this trained run (e.g. a DMER run) instead of scratch
    cache_dir: str = "data/cache"  # FeatureCache root (features and global embeddings); not part of identity

    def __post_init__(self) -> None:
        self.check()

    def check(self) -> "RunConfig":
        """Normalise types and check every field's type, range and choice (reads no file and no environment);
        call after editing. A bad value is a one-line UserError naming the field, the value and what it takes."""
        _check_fields(self, "")
        if self.train.epochs is not None and self.protocol != "authors":
            raise UserError(f"train.epochs {self.train.epochs!r}: only protocol 'authors' counts DMER epochs; "
                            "protocol 'paper' runs train.steps updates (set train.epochs=null)")
        if self.strategy is None:
            self.strategy = "personalized" if self.mode == "pdmer" else "traditional"
        self.meta.inner_params = tuple(p for p in self.meta.inner_params if p not in ("", "all"))
        if self.mel.f_max is not None and self.mel.f_max <= self.mel.f_min:
            raise UserError(f"mel.f_max {self.mel.f_max!r}: expected above mel.f_min ({self.mel.f_min!r}) or null")
        for name in ("win", "hop"):
            if getattr(self.mel, f"{name}_length") < 1:
                raise UserError(f"mel.{name}_ms {getattr(self.mel, name + '_ms')!r}: expected at least one sample "
                                f"({1000 / self.mel.sample_rate:.3g} ms at mel.sample_rate {self.mel.sample_rate})")
        _check_model_config(self.model, self.model_config)
        return self

    @property
    def maml(self) -> bool:
        """True when the run meta-trains with MAML."""
        return self.mode == "pdmer"

    @property
    def model_size(self) -> str:
        """The model config preset ("paper" or "quick") this run's model starts from."""
        return "paper" if self.preset == "paper" else "quick"

    def resolved_encoder(self) -> str:
        """The encoder name, with "auto" resolved (looks for an ImageBind checkpoint)."""
        return default_encoder_name(self.encoder_checkpoint) if self.encoder == "auto" else self.encoder

    def model_overrides(self) -> dict:
        """model_config plus the input sizes implied by the mel settings and the encoder."""
        names = {f.name for f in dataclasses.fields(MODELS[self.model][1])}
        auto = {"n_frames": self.mel.n_frames, "n_mels": self.mel.n_mels}
        encoder = self.resolved_encoder()
        if encoder == "none":
            auto["use_global_encoder"] = False
        else:
            auto["global_dim"] = ENCODER_DIMS[encoder]
            auto["normalize_global"] = encoder not in NORMALIZED_ENCODERS
        auto = {k: v for k, v in auto.items() if k in names}
        return {**auto, **self.model_config}

    def copy(self) -> "RunConfig":
        """An independent copy."""
        return copy.deepcopy(self)

    # ---- JSON

    def to_dict(self) -> dict:
        """JSON-ready nested dict, with the computed `deviations` from the paper."""
        return {**dataclasses.asdict(self), "deviations": deviations(self)}

    def settings(self) -> dict:
        """What decides whether two configs are the same run: every setting, the dataset root as an absolute
        path, and not the cache folder, the device it runs on or the descriptive deviations."""
        d = json.loads(json.dumps(dataclasses.asdict(self)))
        del d["cache_dir"], d["train"]["device"]
        d["root"], d["init"] = _absolute(self.root), _absolute(self.init)
        return d

    def to_json(self) -> str:
        """Indented JSON text."""
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict) -> "RunConfig":
        """Inverse of to_dict (its computed "deviations" are dropped); unknown keys are an error."""
        return _from_dict(cls, {k: v for k, v in d.items() if k != "deviations"}, "config")

    def save(self, path: str | Path) -> None:
        """Write config JSON to path (atomically)."""
        atomic_write_text(Path(path), self.to_json() + "\n")

    @classmethod
    def load(cls, path: str | Path) -> "RunConfig":
        """Read a config.json."""
        path = Path(path)
        try:
            d = json.loads(path.read_text())
        except FileNotFoundError:
            raise UserError(f"{path}: config file not found") from None
        except json.JSONDecodeError as exc:
            raise UserError(f"{path}: not valid JSON ({exc})") from None
        try:
            return cls.from_dict(d)
        except UserError as exc:
            raise UserError(f"{path}: {exc}") from None


def resolve_run(cfg: RunConfig) -> RunConfig:
    """The config as a run records it when it starts: encoder "auto" resolved, dataset root absolute."""
    out = cfg.copy()
    out.encoder = cfg.resolved_encoder()
    out.root, out.init = _absolute(cfg.root), _absolute(cfg.init)
    return out.check()


def _absolute(path: str | None) -> str | None:
    """A run path made absolute against the working directory, symbolic links resolved (None stays None)."""
    return os.path.realpath(path) if path else None


def _from_dict(cls, d, where: str):
    """Build dataclass `cls` from a dict, recursing into dataclass-typed fields (RunConfig.check normalises)."""
    if not isinstance(d, dict):
        raise UserError(f"{where}: expected an object, got {type(d).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - set(fields))
    if unknown:
        raise UserError(f"{where}: unknown field(s) {unknown} for {cls.__name__}")
    kwargs = {}
    for name, value in d.items():
        tp = hints[name]
        kwargs[name] = _from_dict(tp, value, f"{where}.{name}") if dataclasses.is_dataclass(tp) else value
    return cls(**kwargs)


# ---------------------------------------------------------------------------------------------------
# field checks: each field's type hint, plus the ranges and choices below


CHOICES = {"preset": PRESETS, "protocol": protocols.PROTOCOLS, "mode": MODES, "strategy": STRATEGIES, "dataset": DATASETS,
           "model": tuple(sorted(MODELS)), "encoder": ("auto", *ENCODERS), "train.select": ("best", "last"),
           "train.device": DEVICES, "eval.interval": ("t", "bootstrap"), "meta.calibrate_dims": ("arousal", "valence")}
"""Fields that take one of a few names."""

RANGES = {
    **dict.fromkeys(("train.steps", "train.epochs", "train.batch_size", "train.window", "eval.hop", "eval.kshots",
                     "eval.support_steps", "eval.draws", "meta.inner_steps", "meta.tasks_per_step",
                     "meta.support_songs", "meta.query_songs", "meta.task_chunk", "tasks.min_songs",
                     "tasks.flat_window", "mel.sample_rate", "mel.n_mels"), ">= 1"),
    **dict.fromkeys(("train.lr", "train.grad_clip", "meta.inner_lr", "mel.win_ms", "mel.hop_ms", "mel.f_max",
                     "mel.log_offset", "mel.slice_seconds"), "> 0"),
    **dict.fromkeys(("train.eval_every", "train.checkpoint_every", "train.seed", "tasks.flat_threshold",
                     "mel.f_min", "meta.calibrate"), ">= 0"),
    "train.val_fraction": "in [0, 1)",
}
"""Numeric fields with a range (each element, for a list); every other number only has to be finite."""

NON_EMPTY = ("eval.kshots",)
"""List fields that need at least one element."""

def _check_value(key: str, value, tp):
    """`value` normalised to its type hint, within RANGES and CHOICES, or a one-line UserError."""
    return fields.check_value(key, value, tp, RANGES.get(key), CHOICES.get(key), key in NON_EMPTY)


def _check_fields(obj, prefix: str) -> None:
    """Normalise and check every field of dataclass `obj` (and of the dataclasses in it) by its type hint."""
    fields.check_fields(obj, prefix, _check_value)


def _check_model_config(model: str, overrides: dict) -> None:
    """Check the types of model_config's values against the model's config dataclass (normalised in place); an
    unknown key is left to build_model, which names it (an experiment's rows may change the model)."""
    cls = MODELS[model][1]
    hints, names = typing.get_type_hints(cls), {f.name for f in dataclasses.fields(cls)}
    for name, value in overrides.items():
        if name in names:
            overrides[name] = _check_value(f"model_config.{name}", value, hints[name])


# ---------------------------------------------------------------------------------------------------
# presets and their deviations from the paper


QUICK = {
    "dataset": "synthetic", "root": "data/synthetic", "encoder": "none",
    "mel.sample_rate": 16000, "mel.n_mels": 96, "mel.hop_ms": 40.0,
    "train.steps": 100, "train.batch_size": 16, "train.lr": 1e-3, "train.eval_every": 25,
    "train.checkpoint_every": 25, "train.val_fraction": 0.15,
    "meta.inner_lr": 3e-2, "meta.inner_steps": 3, "meta.tasks_per_step": 4, "meta.query_songs": 4,
    "meta.calibrate": 0.05, "meta.calibrate_dims": ["valence"], "meta.adapt_front_end": False,
}
"""The quick preset: these fields changed from the paper preset."""

SMOKE = {
    "train.steps": 2, "train.batch_size": 2, "train.window": 20, "train.eval_every": 0,
    "train.checkpoint_every": 0, "meta.tasks_per_step": 2, "meta.inner_steps": 1, "meta.query_songs": 2,
    "tasks.min_songs": 2, "eval.kshots": [1], "eval.hop": 10, "eval.support_steps": 20,
}
"""The smoke preset: these fields changed from the quick preset (same model, a couple of updates)."""

REASONS = {
    "protocol": protocols.REASON,
    "dataset": "the default data is the synthetic dataset in DEAM's layout (DEAM is not redistributable)",
    "encoder": "no global feature z_g: ImageBind's weights are not redistributable, and embedding every song "
               "with musicnn (`--encoder musicnn`) costs several CPU seconds per song once (cached)",
    "mel.sample_rate": "16 kHz audio instead of 44.1 kHz: fewer samples per slice on a CPU",
    "mel.n_mels": "96 mel bands instead of 128: the adapter's two max-pools leave 26 of them (34 of 128 in the "
                  "paper); with 32 bands (10 left) the quick model could not hear valence (DMER valence CCC "
                  "0.05-0.15 against 0.41 with 96 bands, seed 0, 400 updates)",
    "mel.hop_ms": "a 40 ms hop instead of 10 ms: 13 frames per 0.5 s slice instead of 51 (60 ms window kept); "
                  "the adapter's cost follows the frames. Measured against a 20 ms hop (seed 0, 400 updates, "
                  "docs/performance.md): a DMER update 0.48 -> 0.29 CPU s, a meta-step 1.02 -> 0.75; "
                  "test-song DMER CCC arousal 0.776 -> 0.779, valence 0.534 -> 0.439",
    "model_config": "a smaller model (quick: DSAMLConfig.quick, D 64, 2 layers, 2 heads, FFN 128, adapter "
                    "channels 4/8, no dropout, instead of D 1024, 3 layers, 16 heads, FFN 2048, dropout 0.1). "
                    "Without dropout a meta-step is about 13% faster (no masks to draw in its five forwards); "
                    "measured (seeds 0-2, personalization experiment): DMER test-song CCC arousal 0.774 +- 0.035 "
                    "-> 0.765 +- 0.030, valence 0.365 +- 0.035 -> 0.376 +- 0.071; 1-shot other songs, MAML "
                    "0.672 / 0.201 -> 0.688 / 0.205, without personalization (not adapted) 0.599 / 0.105 -> "
                    "0.619 / 0.116 (docs/performance.md)",
    "train.steps": "100 updates instead of the paper's 2000 episodes, at a larger learning rate, so that the "
                   "workbook's 32 runs fit on 2 CPU cores; measured (seed 0, 40 ms hop): DMER test-song CCC "
                   "arousal 0.809 / valence 0.462 after 200 updates, 0.650 / 0.369 after 100 (docs/performance.md)",
    "train.lr": "lr 1e-3 instead of 5e-5, for the few updates",
    "train.batch_size": "16 windows per dmer update (= 4 tasks x 4 query songs of a meta-step, so both modes "
                        "see the same labelled windows per update)",
    "train.eval_every": "validation as often as the shorter run needs",
    "train.checkpoint_every": "checkpoints as often as the shorter run needs",
    "train.val_fraction": "15% of the training listeners held out for validation (more than 10% of few listeners)",
    "train.window": "shorter training windows, for the short smoke clips",
    "meta.inner_lr": "inner lr 0.03 instead of 5e-3 (chosen among 0.01 / 0.03 / 0.1 by the validation "
                     "listeners' adapted score, seed 0)",
    "meta.inner_steps": "fewer inner SGD steps per task (paper 16)",
    "meta.calibrate": "a closed-form output affine (gain and shift, ridge 0.05 towards gain 1) fitted to the "
                      "support song after the inner SGD steps, in meta-training and adaptation alike "
                      "(models.calibration; not the paper's method). Measured on the quick preset, seeds 0-2, "
                      "listeners' other songs, 1-shot (docs/performance.md): without it MAML's adaptation left "
                      "valence where it was (0.105 +- 0.060 against 0.101 +- 0.009 for the model without "
                      "personalization); fitted on valence only, MAML reaches arousal 0.693 +- 0.024, valence "
                      "0.172 +- 0.011 (no personalization: 0.599 / 0.105); on both dimensions arousal fell to 0.641",
    "meta.calibrate_dims": "the output affine fitted on valence only: SGD steps adapt arousal well, the closed "
                           "form on arousal too cost it (arousal 0.641 +- 0.047 against 0.693 +- 0.024)",
    "meta.adapt_front_end": "the inner loop adapts every parameter but the front end's (DSAML's adapter, the "
                            "baselines' slice encoders; kept at the meta-parameters, still meta-learnt), so each "
                            "task's support goes through it once instead of at every inner step: a DSAML meta-step "
                            "0.37 -> 0.27 s on one CPU thread. Measured on the "
                            "personalization experiment (seeds 0-2, listeners' other songs, 1-shot, with dropout): "
                            "MAML arousal 0.708 +- 0.012 -> 0.672 +- 0.012, valence 0.184 +- 0.043 -> 0.201 +- 0.057 "
                            "(docs/performance.md)",
    "meta.tasks_per_step": "fewer tasks per meta-step (paper 16)",
    "meta.query_songs": "fewer query songs per task (paper 15)",
    "tasks.min_songs": "listeners with 2 songs make tasks (the smoke dataset is tiny)",
    "eval.kshots": "1-shot only",
    "eval.hop": "a shorter sliding-window hop, for the shorter windows",
    "eval.support_steps": "adapt on the first 20 steps (the smoke windows are 20 steps long)",
    "eval.draws": "several support draws per listener, so the k-shot means rest on more pairs",
}
"""One line per field a preset may change: why it differs from the paper."""

NOT_DEVIATIONS = ("preset", "mode", "strategy", "model", "root", "init", "cache_dir", "encoder_checkpoint",
                  "train.seed", "train.device")
"""Choices of a run, not departures from the paper's method."""


def _flat(obj, prefix: str = "") -> dict:
    out = {}
    for f in dataclasses.fields(obj):
        v = getattr(obj, f.name)
        if dataclasses.is_dataclass(v):
            out.update(_flat(v, f"{prefix}{f.name}."))
        else:
            out[f"{prefix}{f.name}"] = v
    return out


def deviations(cfg: RunConfig) -> list[str]:
    """How cfg departs from the paper preset, one line per differing field: "field: paper -> ours: reason"."""
    paper, ours = _flat(RunConfig(preset="paper")), _flat(cfg)
    out = []
    for key, value in ours.items():
        if key in NOT_DEVIATIONS or paper[key] == value:
            continue
        if key == "encoder" and value == "auto":
            continue
        authors = cfg.protocol == "authors" and protocols.AUTHORS_PAPER.get(key, ...) == value
        reason = protocols.REASONS[key] if authors else REASONS.get(key, "no reason recorded")
        out.append(f"{key}: {paper[key]!r} -> {value!r}: {reason}")
    return out


def preset(name: str, **kw) -> RunConfig:
    """The named preset ("smoke", "quick" or "paper") with top-level fields overridden by keyword; the paper
    preset with protocol="authors" also takes the authors' values (training.protocol.AUTHORS_PAPER)."""
    if name not in PRESETS:
        raise UserError(f"unknown preset {name!r}; choose one of {PRESETS}")
    cfg = RunConfig(preset=name)
    if name in ("quick", "smoke"):
        apply_overrides(cfg, [f"{k}={json.dumps(v)}" for k, v in QUICK.items()])
    if name == "smoke":
        apply_overrides(cfg, [f"{k}={json.dumps(v)}" for k, v in SMOKE.items()])
    for k, v in kw.items():
        if k not in {f.name for f in dataclasses.fields(RunConfig)}:
            raise UserError(f"RunConfig has no field {k!r}")
        setattr(cfg, k, v)
    if name == "paper" and cfg.protocol == "authors":
        apply_overrides(cfg, [f"{k}={json.dumps(v)}" for k, v in protocols.AUTHORS_PAPER.items()])
    return cfg.check()


HINTS = {"meta.outer_lr": "MAML's outer learning rate is train.lr", "meta.meta_steps": "meta-steps are train.steps",
         "deviations": "deviations are computed from the settings"}
"""What to set instead, for names that are not fields."""


def apply_overrides(cfg: RunConfig, items: list[str]) -> RunConfig:
    """Set fields from "a.b=VALUE" strings (VALUE parsed as JSON, else kept as text), then check."""
    for item in items:
        path, sep, raw = item.partition("=")
        if not sep or not path:
            raise UserError(f"override {item!r}: expected FIELD=VALUE, e.g. meta.inner_steps=8")
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        obj, parts = cfg, path.split(".")
        for i, name in enumerate(parts):
            last = i == len(parts) - 1
            if isinstance(obj, dict):
                if last:
                    obj[name] = value
                elif name not in obj:
                    raise UserError(f"override {item!r}: {'.'.join(parts[:i + 1])} does not exist")
                else:
                    obj = obj[name]
            elif dataclasses.is_dataclass(obj) and name in {f.name for f in dataclasses.fields(obj)}:
                if last:
                    setattr(obj, name, value)
                else:
                    obj = getattr(obj, name)
            else:
                hint = HINTS.get(path)
                raise UserError(f"override {item!r}: {type(obj).__name__} has no field {name!r}"
                                + (f" ({hint})" if hint else ""))
    return cfg.check()
