"""Run presets: every setting a training run depends on, as plain dataclasses saved as JSON in the run folder.

`preset("paper")` is the paper's setup (values the paper leaves open come from the authors' code, see
SPEC.md). `preset("quick")` shrinks it so that training and evaluating DSAML on the default synthetic
dataset takes minutes on a 2-core CPU; every way in which it departs from the paper is listed in
``RunConfig.deviations`` (and so in each run's config.json).

A run is one (mode, strategy) pair:
- mode "dmer": plain supervised training (Adam on mini-batches of windows), no MAML;
- mode "pdmer": MAML meta-training (`dsaml_utils.meta.meta_step`);
- strategy "traditional": labels are each song's MEAN curve (DMER's usual labels; for MAML, tasks of
  random songs);
- strategy "personalized": labels are individual listeners' curves (for MAML, one task per listener).
So the paper's Table 4 rows are: pdmer+personalized (DSAML), dmer+personalized (w/o MAML),
pdmer+traditional (w/o personalized tasks), dmer+traditional (w/o both, the usual DMER model).
"""

from __future__ import annotations

import dataclasses
import json
import typing
from dataclasses import dataclass, field
from pathlib import Path

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

MODES = ("dmer", "pdmer")
STRATEGIES = ("personalized", "traditional")
PRESETS = ("paper", "quick")


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

    preset: str = "paper"
    mode: str = "dmer"  # "dmer" (no MAML) or "pdmer" (MAML meta-training)
    strategy: str | None = None  # "personalized" | "traditional"; None = traditional (dmer), personalized (pdmer)
    dataset: str = "deam"  # "deam", "pmemo" or "synthetic" (data.load_dataset)
    root: str = "data/DEAM"  # dataset root folder
    model: str = "dsaml"  # a name in model.MODELS
    model_config: dict = field(default_factory=dict)  # overrides of the model's preset config
    mel: MelConfig = field(default_factory=MelConfig)
    encoder: str = "auto"  # global encoder (encoders.ENCODERS) or "auto": imagebind when its checkpoint is
    # configured (argument, DSAML_IMAGEBIND_CHECKPOINT, data/checkpoints/), else the offline musicnn
    encoder_checkpoint: str | None = None  # ImageBind .pth / musicnn folder / vibenet .onnx (None: found)
    train: TrainConfig = field(default_factory=TrainConfig)
    meta: MetaConfig = field(default_factory=MetaConfig)
    tasks: TaskFilter = field(default_factory=TaskFilter)
    eval: EvalConfig = field(default_factory=EvalConfig)
    init: str | None = None  # start from the weights of this trained run (e.g. a DMER run) instead of scratch
    cache_dir: str = "data/cache"  # FeatureCache root (features and global embeddings)
    deviations: list[str] = field(default_factory=list)  # how this config departs from the paper

    def __post_init__(self) -> None:
        self.resolve()

    def resolve(self) -> "RunConfig":
        """Fill the derived fields and check the choices; call again after editing fields."""
        if self.mode not in MODES:
            raise UserError(f"mode {self.mode!r}: choose one of {MODES}")
        if self.encoder == "auto":
            self.encoder = default_encoder_name(self.encoder_checkpoint)
        if self.encoder not in ENCODERS:
            raise UserError(f"encoder {self.encoder!r}: choose one of {ENCODERS} or 'auto'")
        if self.strategy is None:
            self.strategy = "personalized" if self.mode == "pdmer" else "traditional"
        if self.strategy not in STRATEGIES:
            raise UserError(f"strategy {self.strategy!r}: choose one of {STRATEGIES}")
        if self.preset not in PRESETS:
            raise UserError(f"preset {self.preset!r}: choose one of {PRESETS}")
        if self.train.select not in ("best", "last"):
            raise UserError(f"train.select {self.train.select!r}: choose 'best' or 'last'")
        if self.train.steps < 1 or self.train.window < 1 or self.train.batch_size < 1:
            raise UserError("train.steps, train.window and train.batch_size must be positive")
        # one source of truth: MAML's outer loop runs for train.steps at train.lr
        self.meta.meta_steps = self.train.steps
        self.meta.outer_lr = self.train.lr
        self.eval.kshots = tuple(int(k) for k in self.eval.kshots)
        inner = self.meta.inner_params
        inner = (inner,) if isinstance(inner, str) else tuple(inner)
        self.meta.inner_params = tuple(str(p) for p in inner if p not in ("", "all"))
        return self

    @property
    def maml(self) -> bool:
        """True when the run meta-trains with MAML."""
        return self.mode == "pdmer"

    def model_overrides(self) -> dict:
        """model_config plus the input sizes implied by the mel settings and the encoder."""
        if self.model not in MODELS:
            raise UserError(f"unknown model {self.model!r}; choose one of {sorted(MODELS)}")
        names = {f.name for f in dataclasses.fields(MODELS[self.model][1])}
        auto = {"n_frames": self.mel.n_frames, "n_mels": self.mel.n_mels}
        if self.encoder == "none":
            auto["use_global_encoder"] = False
        else:
            auto["global_dim"] = ENCODER_DIMS[self.encoder]
            auto["normalize_global"] = self.encoder not in NORMALIZED_ENCODERS
        auto = {k: v for k, v in auto.items() if k in names}
        return {**auto, **self.model_config}

    # ---- JSON

    def to_dict(self) -> dict:
        """JSON-ready nested dict."""
        return dataclasses.asdict(self)

    def settings(self) -> dict:
        """to_dict() without the descriptive `deviations`: what decides whether two runs are the same run."""
        return json.loads(json.dumps({k: v for k, v in self.to_dict().items() if k != "deviations"}))

    def to_json(self) -> str:
        """Indented JSON text."""
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict) -> "RunConfig":
        """Inverse of to_dict; unknown keys are an error."""
        return _from_dict(cls, d, "config")

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


def _from_dict(cls, d, where: str):
    """Build dataclass `cls` from a dict, recursing into dataclass-typed fields."""
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
        if dataclasses.is_dataclass(tp):
            value = _from_dict(tp, value, f"{where}.{name}")
        elif typing.get_origin(tp) is tuple or (typing.get_origin(tp) is typing.Union and any(
                typing.get_origin(a) is tuple for a in typing.get_args(tp))):
            value = tuple(value) if isinstance(value, list) else value
        kwargs[name] = value
    return cls(**kwargs)


# ---------------------------------------------------------------------------------------------------
# presets


def paper_config(**kw) -> RunConfig:
    """The paper's setup (DEAM, ImageBind, D = 1024, MAML 16 tasks x 16 inner steps, 2000 steps)."""
    return RunConfig(preset="paper", **kw)


QUICK_DEVIATIONS = [
    "mel: 16 kHz, 96 mel bands and a 20 ms hop (26 frames per 0.5 s slice) instead of 44.1 kHz, 128 bands "
    "and a 10 ms hop (51 frames); 60 ms window kept. The adapter's two max-pools leave 26 of the 96 bands "
    "(34 of 128 in the paper); with 32 bands (10 left) the model could not hear valence (DMER valence CCC "
    "0.05-0.15 against 0.41 with 96 bands, seed 0, 400 updates)",
    "encoder: none (no global feature z_g): ImageBind weights are not available offline, and embedding every song "
    "with musicnn (`--encoder musicnn`) costs several CPU seconds per song once (cached)",
    "model: DSAMLConfig.quick() (D 64, 2 layers, 2 heads, FFN 128, adapter channels 4/8) instead of D 1024, "
    "3 layers, 16 heads, FFN 2048",
    "MAML: 4 tasks per meta-step, 3 inner steps and 4 query songs instead of 16 / 16 / 15; inner lr 0.03 "
    "instead of 5e-3 (chosen among 0.01 / 0.03 / 0.1 by the validation listeners' adapted score, seed 0)",
    "optimisation: 400 updates at lr 1e-3 instead of 2000 at 5e-5; mode dmer uses 16 windows per update "
    "(= 4 tasks x 4 query songs of a meta-step, so both modes see the same labelled windows per update)",
]


def quick_config(**kw) -> RunConfig:
    """A CPU-sized setup for the default synthetic dataset; `deviations` lists what differs from the paper."""
    cfg = RunConfig(
        preset="quick",
        dataset="synthetic",
        root="data/synthetic",
        mel=MelConfig(sample_rate=16000, n_mels=96, hop_ms=20.0),
        encoder="none",
        train=TrainConfig(steps=400, batch_size=16, lr=1e-3, eval_every=25, checkpoint_every=25, val_fraction=0.15),
        meta=MetaConfig(inner_lr=3e-2, inner_steps=3, tasks_per_step=4, query_songs=4),
        eval=EvalConfig(kshots=(1, 2, 4, 8), draws=4),
        deviations=list(QUICK_DEVIATIONS),
    )
    for k, v in kw.items():
        setattr(cfg, k, v)
    return cfg.resolve()


def preset(name: str, **kw) -> RunConfig:
    """The named preset ("paper" or "quick") with top-level fields overridden by keyword."""
    if name == "paper":
        return paper_config(**kw)
    if name == "quick":
        return quick_config(**kw)
    raise UserError(f"unknown preset {name!r}; choose one of {PRESETS}")


def apply_overrides(cfg: RunConfig, items: list[str]) -> RunConfig:
    """Set fields from "a.b=VALUE" strings (VALUE parsed as JSON, else kept as text), then resolve."""
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
                raise UserError(f"override {item!r}: {type(obj).__name__} has no field {name!r}")
    return cfg.resolve()
