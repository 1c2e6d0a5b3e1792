"""Inside a notebook, `Session` turns the parameters into paths, a provenance stamp, the dataset, the run
configuration and the experiments' runs, so that the notebooks stay thin.

Paths are made absolute against the working directory (the notebook's folder in JupyterLab and under
`dsaml workbook`), as the CLI does, so a notebook's runs are the CLI's runs: `make workbook` trains them and
a notebook opened afterwards finds and reuses them, however its parameters spell the paths.
"""

from __future__ import annotations

import contextlib
import json
import random
import re
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from dsaml_utils.data.registry import load_dataset
from dsaml_utils.errors import RunConflict, UserError
from dsaml_utils.evaluation.compare import protocol_table
from dsaml_utils.evaluation.results import RunMetrics
from dsaml_utils.experiments.plan import workbook_seeds
from dsaml_utils.experiments.runner import experiment_scoring, run_experiment, run_specs, spec_jobs
from dsaml_utils.experiments.specs import EXPERIMENTS
from dsaml_utils.features.cache import FeatureCache
from dsaml_utils.features.frame_files import ensure_features
from dsaml_utils.plots.base import (
    SavedFigure,
    save_figure,
    save_table,
    short_code_version,
)
from dsaml_utils.training.runs import load_run_model
from dsaml_utils.training.store import build_store
from dsaml_utils.workbook.runner import (
    PRESETS,
    WorkbookParams,
    cache_dir,
    ensure_dataset,
    run_config,
    torch_threads,
)


class Session:
    """What a notebook needs from its parameters: paths, provenance, the dataset, figure/table saving."""

    def __init__(self, dataset: str, root: str, preset: str, seed: int, run_dir: str, figures_dir: str,
                 tables_dir: str, device: str = "cpu"):
        if preset not in PRESETS:
            raise UserError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
        self.root, self.run_dir, self.figures_dir, self.tables_dir = (
            absolute(p) for p in (root, run_dir, figures_dir, tables_dir))
        self.params = WorkbookParams(dataset, str(self.root), preset, int(seed), str(self.run_dir),
                                     str(self.figures_dir), str(self.tables_dir), device)
        for d in (self.run_dir, self.figures_dir, self.tables_dir):
            d.mkdir(parents=True, exist_ok=True)
        self.dataset_name, self.preset, self.seed, self.device = dataset, preset, int(seed), device
        self._ds = None
        seed_everything(self.seed)
        threads = torch_threads(preset)
        if threads:
            # see workbook.runner's docstring: one thread is far faster when the cores are shared
            torch.set_num_threads(threads)
        warnings.filterwarnings("ignore", message="IProgress not found")  # tqdm without ipywidgets

    @property
    def cache_dir(self) -> Path:
        """Feature cache: data/cache, shared by runs (entries are keyed by audio content); smoke: <run>/cache."""
        return cache_dir(self.params)

    @property
    def provenance(self) -> dict:
        """The stamp on every figure and table: data, preset, seed, code version."""
        data = self.dataset_name if self.root.name == self.dataset_name else f"{self.dataset_name} ({self.root.name})"
        return {"data": data, "preset": self.preset, "seed": self.seed, "code": short_code_version()}

    def save(self, fig, name: str, svg: bool | None = None) -> SavedFigure:
        """Save a figure as PNG (+ SVG except in smoke runs) into the figures directory; it stays open.
        Returns the paths (PNG first, `.path`), shown as one line when a cell ends with it."""
        return save_figure(fig, name, self.figures_dir, svg=self.preset != "smoke" if svg is None else svg)

    def table(self, df, name: str, title: str | None = None) -> Path:
        """Save a table (Markdown + CSV) into the tables directory; returns the Markdown path."""
        return save_table(df, name, self.tables_dir, self.provenance, title=title)[0]

    def run_config(self, **fields):
        """A training RunConfig for this session: preset(self.preset) on this dataset, seed, device and cache;
        keyword fields are set last (a new `mode` brings its default strategy)."""
        return run_config(self.params, **fields)

    def seeds(self, experiment: str) -> list[int]:
        """The seeds of one experiment in the workbook (experiments.plan.WORKBOOK_PLAN, from this session's
        seed): three for "personalization" and "kshot", one (this session's) for the other tables."""
        return workbook_seeds(experiment, self.seed)

    def provenance_for(self, experiment: str) -> dict:
        """The provenance stamp of a figure made from one experiment's table: its seeds in place of the seed."""
        prov = dict(self.provenance)
        seeds = self.seeds(experiment)
        if seeds != [self.seed]:
            code = prov.pop("code")
            del prov["seed"]
            prov["seeds"], prov["code"] = ",".join(map(str, seeds)), code  # the code version stays last
        return prov

    def experiment(self, name: str, progress: bool = True):
        """experiments.run_experiment(name) with this session's config over the experiment's seeds (`seeds`):
        trains (or reuses: `dsaml workbook` trains them all first) its runs under <run_dir>/runs, writes the
        table (mean ± std over seeds) into the tables directory; returns (table, results, paths)."""
        if name == "features":  # frame features are computed once from the audio when the root has none
            ensure_features(self.dataset_name, self.root, progress=progress)
        with notebook_hints():
            return run_experiment(name, self.run_config(), self.seeds(name), self.run_dir / "runs",
                                  self.tables_dir, progress=progress, ds=self.dataset())

    def spec(self, experiment: str, row: str):
        """The experiments.RunSpec of one row of an experiment (e.g. "table3", "w/o attention loss")."""
        if experiment not in EXPERIMENTS:
            raise UserError(f"unknown experiment {experiment!r}; choose from {', '.join(EXPERIMENTS)}")
        specs = {s.name: s for s in EXPERIMENTS[experiment]["specs"]}
        if row not in specs:
            raise UserError(f"experiment {experiment!r} has no row {row!r}; rows: {', '.join(specs)}")
        return specs[row]

    def _row_specs(self, experiment: str, row: str) -> list:
        """The row's RunSpec, and the row it starts from when it has one (its `init_from`)."""
        spec = self.spec(experiment, row)
        return [spec] + ([self.spec(experiment, spec.init_from)] if spec.init_from is not None else [])

    def run_folder(self, experiment: str, row: str) -> Path:
        """Where the run of one experiment row lives for this session's seed."""
        jobs = spec_jobs(self._row_specs(experiment, row), self.run_config(), [self.seed], self.run_dir / "runs")
        return next(job.folder for job in jobs if job.row == row)

    def ensure(self, experiment: str, row: str, progress: bool = True) -> RunMetrics:
        """Train (or reuse) and evaluate the run of one experiment row (and of the row it starts from);
        returns its metrics record."""
        with notebook_hints():
            res = run_specs(self._row_specs(experiment, row), self.run_config(), [self.seed], self.run_dir / "runs",
                            progress=progress, ds=self.dataset(), scoring=experiment_scoring(experiment))
        return res[row][0]

    def protocols(self, experiment: str, row: str, progress: bool = True) -> pd.DataFrame:
        """One experiment row's run (trained first when needed) scored under the paper's and the authors'
        protocol, side by side (`evaluation.compare.protocol_table`)."""
        self.ensure(experiment, row, progress=progress)
        return protocol_table(self.run_folder(experiment, row), ds=self.dataset(), cache=FeatureCache(self.cache_dir),
                              progress=progress)

    def load(self, experiment: str, row: str):
        """(RunConfig, model in eval mode) of one experiment row's run (trained first when needed)."""
        self.ensure(experiment, row, progress=False)
        return load_run_model(self.run_folder(experiment, row), self.device)

    def song_data(self, cfg, model, song_ids: list[str]) -> dict:
        """features.songs.SongData (model inputs and every listener's labels) of these songs, from the cache."""
        return build_store(self.dataset(), list(song_ids), cfg, model, FeatureCache(self.cache_dir), progress=False)

    def history(self, experiment: str, row: str):
        """One experiment row's training history (loss, validation scores per evaluation) as a DataFrame."""
        path = self.run_folder(experiment, row) / "history.json"
        return pd.DataFrame(json.loads(path.read_text())) if path.is_file() else pd.DataFrame()

    @property
    def personalized(self) -> bool:
        """True when the dataset has listener identities, i.e. PDMER experiments are possible."""
        return bool(self.dataset().listeners())

    def dataset(self):
        """The dataset (generated first when synthetic and absent), loaded once."""
        if self._ds is None:
            ensure_dataset(self.params)
            self._ds = load_dataset(self.dataset_name, self.root)
        return self._ds


def absolute(path: str | Path) -> Path:
    """A parameter path as the CLI takes it: ~ expanded, absolute against the working directory, resolved."""
    return Path(path).expanduser().resolve()


_CLI_HINT = re.compile(r"(?:; use another --out|; restore that data, or use another --out|\. \(Runs are reused).*$",
                       re.DOTALL)
"""Where a RunConflict's message starts its advice for the command line (training.runs, experiments.runner)."""


@contextlib.contextmanager
def notebook_hints():
    """Re-raise a RunConflict (a run folder holds another run) with what to change in a notebook instead of
    the CLI's `--out` advice."""
    try:
        yield
    except RunConflict as exc:
        what = _CLI_HINT.sub("", str(exc)).rstrip(" .")
        named = re.match(r"(.+?): (holds|was trained on other data)", what)
        folder, data = "that run folder", ""
        if named and named[2] == "holds":
            folder = named[1]
        elif named:  # a checkpoint file of a run folder
            folder, data = Path(named[1]).parent, "restore the data it was trained on, "
        raise RunConflict(
            f"{what}. In a notebook: set `run_dir` in the parameters cell to another folder, {data}or delete "
            f"{folder} to train it again; then run the notebook from the top") from None


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
