"""The paper's comparisons as run specs: each table row says how its runs differ from the base config.

An experiment is a list of `RunSpec`s (a row label, mode, strategy, model and config overrides). Each
spec is trained once per seed into ``<out>/<spec slug>/seed<k>`` (a finished run with the same config is
reused, an unfinished one resumed), evaluated (metrics.json, reused when current), and the rows of the
table are mean +- std over seeds. Specs with the same settings share their runs across experiments
(Table 2's "DSAML" row is Table 4's "Ours").

Experiments (`EXPERIMENTS`):
  table1           DMER on test songs (mean labels): DSAML vs CRNN, DNN, MCRNN, DAMFF
  table2           PDMER: every model trained with MAML on personalized tasks (marked †) and without
  table3           DMER ablations: w/o local attention, w/o global attention, w/o attention loss, w/o adapter
  table4           PDMER: DSAML, w/o MAML (†), w/o personalized tasks (‡), w/o both (†‡)
  kshot            PDMER after adapting on k = 1, 2, 4, 8 support songs (those that a dataset allows)
  order            first- vs second-order MAML
  personalization  DSAML with MAML and personalized tasks vs the same model without personalization
                   (no MAML, mean labels): held-out listeners, with and without adaptation, both PDMER
                   protocols (support = another song of the listener / the first 30 s of the same song)
  features         DMER on the dataset's openSMILE frame features (no audio read): seed 003's model family
                   and DSAML on frames; scored with seed 004's Kendall tau, RMSE and R2 next to CCC and PCC

In `personalization` and `kshot` the MAML row starts from the weights of the no-MAML row's run of the same
seed (`RunSpec.init_from`): personalization is then an addition to the usual DMER model, and the
comparison isolates it. (From scratch, the quick preset's few hundred meta-updates on 2 cores left the
MAML model a weaker DMER model, arousal CCC 0.65 against 0.78 on the test songs, seed 0.)
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from dsaml_utils.training.config import RunConfig, apply_overrides


@dataclass
class RunSpec:
    """One row of a table: how its runs differ from the base config."""

    name: str  # row label
    mode: str = "pdmer"  # "dmer" or "pdmer"
    strategy: str | None = None  # None: the mode's default (pdmer: personalized, dmer: traditional)
    model: str = "dsaml"
    overrides: dict[str, Any] = field(default_factory=dict)  # config field path -> value (config.apply_overrides)
    init_from: str | None = None  # name of another row of the experiment: start from its run of the same seed

    def config(self, base: RunConfig, seed: int) -> RunConfig:
        """The run config of this spec for one seed (a copy of base)."""
        cfg = RunConfig.from_dict(json.loads(json.dumps(base.to_dict())))
        cfg.mode, cfg.strategy, cfg.model = self.mode, self.strategy, self.model
        cfg.train.seed = int(seed)
        return apply_overrides(cfg, [f"{k}={json.dumps(v)}" for k, v in self.overrides.items()])

    def slug(self) -> str:
        """Folder name: model-mode-strategy, plus a hash of the overrides when there are any."""
        strategy = self.strategy or ("personalized" if self.mode == "pdmer" else "traditional")
        s = f"{self.model}-{self.mode}-{strategy}"
        if self.overrides:
            s += "-" + hashlib.sha1(json.dumps(self.overrides, sort_keys=True).encode()).hexdigest()[:8]
        return s


FRAME_FAMILY = {"frame_cnn": "CNN", "bilstm": "BiLSTM", "cnn_bilstm": "CNN-BiLSTM",
                "cnn_bilstm_temporal": "CNN-BiLSTM (temporal scale)", "cnn_bilstm_spatial": "CNN-BiLSTM (spatial scale)",
                "rescnn_bilstm": "ResCNN-BiLSTM", "se_cnn_bilstm": "SE + spatial attention", "cbam_cnn_bilstm": "CBAM",
                "wsam_cnn_bilstm": "WSAM", "dselfattention": "DSelfAttention"}
"""Seed 003's models on frame features (models.frame_models, models.frame_attention) and their row labels."""

DSAML_FRAMES = RunSpec("DSAML (frames)", "dmer", "traditional", "dsaml",
                       overrides={"model_config.frontend": "frames", "encoder": "none"})
"""DSAML with a Linear front end on the frame features and no global encoder (nothing reads the audio)."""


def _dsaml_pair(model: str, label: str) -> list[RunSpec]:
    return [RunSpec(f"{label}†", "pdmer", "personalized", model), RunSpec(label, "dmer", "traditional", model)]


BASELINES = {"damff": "DAMFF", "mcrnn": "MCRNN", "dnn": "DNN", "crnn": "CRNN"}


EXPERIMENTS: dict[str, dict] = {
    "table1": {"title": "Table 1: traditional DMER on the test songs (mean labels)", "part": "dmer",
               "specs": [RunSpec("DSAML", "dmer", "traditional")]
               + [RunSpec(v, "dmer", "traditional", k) for k, v in BASELINES.items()]},
    "table2": {"title": "Table 2: PDMER on held-out listeners (1-shot); † = trained with MAML on personalized tasks",
               "part": "pdmer",
               "specs": [RunSpec("DSAML", "pdmer", "personalized")]
               + [s for k, v in BASELINES.items() for s in _dsaml_pair(k, v)]},
    "table3": {"title": "Table 3: DMER ablations of DSAML", "part": "dmer",
               "specs": [RunSpec("DSAML", "dmer", "traditional"),
                         RunSpec("w/o local attention", "dmer", "traditional",
                                 overrides={"model_config.use_local_attention": False}),
                         RunSpec("w/o global attention", "dmer", "traditional",
                                 overrides={"model_config.use_global_attention": False}),
                         RunSpec("w/o attention loss", "dmer", "traditional",
                                 overrides={"model_config.use_attention_loss": False}),
                         RunSpec("w/o adapter", "dmer", "traditional", overrides={"model_config.use_adapter": False})]},
    "table4": {"title": "Table 4: PDMER ablations (1-shot); † w/o MAML, ‡ w/o personalized task construction",
               "part": "pdmer",
               "specs": [RunSpec("DSAML", "pdmer", "personalized"), RunSpec("DSAML †", "dmer", "personalized"),
                         RunSpec("DSAML ‡", "pdmer", "traditional"), RunSpec("DSAML †‡", "dmer", "traditional")]},
    "kshot": {"title": "PDMER after adapting on k support songs", "part": "kshot",
              "specs": [RunSpec("DSAML", "pdmer", "personalized", init_from="DSAML †‡"),
                        RunSpec("DSAML †‡", "dmer", "traditional")]},
    "order": {"title": "First- vs second-order MAML (PDMER, 1-shot)", "part": "pdmer",
              "specs": [RunSpec("first order", "pdmer", "personalized"),
                        RunSpec("second order", "pdmer", "personalized", overrides={"meta.first_order": False})]},
    "personalization": {"title": "Personalized (MAML + personalized tasks) vs not (no MAML, mean labels): "
                                 "held-out listeners, 1-shot", "part": "personalization",
                        "specs": [RunSpec("DSAML (MAML, personalized tasks)", "pdmer", "personalized",
                                          init_from="DSAML w/o personalization (no MAML, mean labels)"),
                                  RunSpec("DSAML w/o personalization (no MAML, mean labels)", "dmer", "traditional")]},
    "features": {"title": "DMER on frame features (openSMILE, 260 per 0.5 s step; test songs, mean labels)",
                 "part": "dmer", "metrics": ("ccc", "pcc", "kendall_tau", "rmse", "r2"),
                 "specs": [RunSpec(v, "dmer", "traditional", k) for k, v in FRAME_FAMILY.items()] + [DSAML_FRAMES]},
}
"""Name -> {"title", "part" (what the table shows), "specs", optionally "metrics" (the table's columns)}."""
