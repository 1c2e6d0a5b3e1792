"""`dsaml workbook`: run every notebook in notebooks/ in order with the same parameters (papermill).

Layout of one run (``--out``, default ``runs/<dataset>-<preset>``)::

    <run>/notebooks/NN_*.ipynb   executed copies, outputs included
    <run>/runs/<spec>/seed<k>/   training runs (experiments.run_specs layout), shared by the notebooks
    <run>/workbook.json          parameters, kernel, and seconds per notebook

Figures go to ``figures/<dataset>/`` (PNG, plus SVG) and tables to ``figures/<dataset>/tables/``
(Markdown with a provenance line, plus CSV), so the repository's figures/ directory holds the latest
quick or paper run; the smoke preset writes both under the run directory instead (PNG only).
Every notebook gets the parameters of `WorkbookParams` (papermill injects them after the cell tagged
"parameters"); a failing notebook stops the run with its name and failing cell, exit status 1.

Presets (`Session.run_config`):
  smoke   seconds: a tiny synthetic dataset (SMOKE_SYNTH), two updates per run (SMOKE_RUN); `make test`
  quick   config.preset("quick") with QUICK_RUN (fewer updates per run): all notebooks in < 20 min on 2 cores
  paper   config.preset("paper"): the paper's settings, for a GPU and the real datasets
On the smoke and quick presets torch uses one thread (DSAML_THREADS=N changes it): on this project's 2-core
machine, with other processes sharing the cores, one thread ran the smoke experiments 7x and quick updates
3x faster than two (OpenMP threads spin while they wait for each other).

Inside a notebook, `Session` turns the parameters into paths, a provenance stamp, the dataset, the run
configuration and the experiments' runs, so that the notebooks stay thin.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import random
import shutil
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import nbformat

from dsaml_utils.errors import DataError, UserError

REPO = Path(__file__).resolve().parent.parent
NOTEBOOKS_DIR = REPO / "notebooks"
PRESETS = ("smoke", "quick", "paper")
KERNEL = "dsaml"
PARAMETER_NAMES = ("dataset", "root", "preset", "seed", "run_dir", "figures_dir", "tables_dir", "device")


class NotebookFailed(RuntimeError):
    """A notebook raised; carries the notebook, the failing cell and the executed copy."""

    def __init__(self, notebook: str, cell: int | None, source: str, error: str, executed: Path):
        self.notebook, self.cell, self.source, self.error, self.executed = notebook, cell, source, error, executed
        first = (source.strip().splitlines() or [""])[0][:100]
        where = f"cell {cell} (`{first}`)" if cell is not None else "before any cell ran"
        super().__init__(f"notebook {notebook} failed in {where}: {error}\n  executed copy: {executed}")


@dataclass
class WorkbookParams:
    """The parameters every notebook receives (all paths absolute strings, so papermill can pass them)."""

    dataset: str = "synthetic"  # "synthetic", "deam" or "pmemo"
    root: str = str(REPO / "data" / "synthetic")  # dataset root directory
    preset: str = "quick"  # "smoke" (seconds, fixtures), "quick" (CPU, minutes) or "paper" (GPU, hours)
    seed: int = 0  # seeds data generation, sampling and initialisation
    run_dir: str = str(REPO / "runs" / "synthetic-quick")  # checkpoints, results, executed notebooks
    figures_dir: str = str(REPO / "figures" / "synthetic")  # PNG/SVG figures
    tables_dir: str = str(REPO / "figures" / "synthetic" / "tables")  # Markdown/CSV tables
    device: str = "cpu"  # torch device for training ("cpu", "cuda", "cuda:1", ...)


def default_params(
    preset: str = "quick",
    dataset: str = "synthetic",
    root: str | Path | None = None,
    out: str | Path | None = None,
    figures: str | Path | None = None,
    seed: int = 0,
    device: str | None = None,
) -> WorkbookParams:
    """Fill in every path the user left out (see the module docstring for the layout)."""
    if preset not in PRESETS:
        raise UserError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    if dataset not in ("synthetic", "deam", "pmemo"):
        raise UserError(f"unknown dataset {dataset!r}; choose synthetic, deam or pmemo")
    run = Path(out) if out else REPO / "runs" / f"{dataset}-{preset}"
    if root is None:
        if dataset != "synthetic":
            raise UserError(f"--root is required for dataset {dataset!r} (the directory you unpacked it to)")
        root = run / "data" / "synthetic" if preset == "smoke" else REPO / "data" / "synthetic"
    if figures is None:
        figures = run / "figures" if preset == "smoke" else REPO / "figures" / dataset
    if device is None:
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    figures = Path(figures).resolve()
    return WorkbookParams(dataset=dataset, root=str(Path(root).resolve()), preset=preset, seed=int(seed),
                          run_dir=str(run.resolve()), figures_dir=str(figures),
                          tables_dir=str(figures / "tables"), device=device)


# ---------------------------------------------------------------------------------------------------
# Notebooks on disk


def list_notebooks(notebooks_dir: str | Path = NOTEBOOKS_DIR, only: list[str] | None = None) -> list[Path]:
    """The numbered notebooks (NN_name.ipynb) in order, restricted to the `only` numbers or names."""
    nbs = sorted(p for p in Path(notebooks_dir).glob("[0-9][0-9]_*.ipynb"))
    if not nbs:
        raise UserError(f"no numbered notebooks (NN_name.ipynb) in {notebooks_dir}")
    if not only:
        return nbs
    picked = []
    for want in only:
        hits = [p for p in nbs if p.stem == want or p.name == want or p.stem.split("_")[0] == want.zfill(2)]
        if not hits:
            raise UserError(f"--only {want!r} matches no notebook; have {', '.join(p.stem for p in nbs)}")
        picked += [p for p in hits if p not in picked]
    return sorted(picked)


def parameters_cell(nb: nbformat.NotebookNode) -> int | None:
    """Index of the cell tagged "parameters" (None when there is none)."""
    for i, cell in enumerate(nb.cells):
        if "parameters" in cell.get("metadata", {}).get("tags", []):
            return i
    return None


def storage_problems(path: str | Path) -> list[str]:
    """What keeps a stored notebook from being clean: outputs, execution counts, no parameters cell."""
    path = Path(path)
    nb = nbformat.read(path, as_version=4)
    problems = []
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "code" and (cell.get("outputs") or cell.get("execution_count") is not None):
            problems.append(f"{path.name}: cell {i} has stored outputs or an execution count")
    if parameters_cell(nb) is None:
        problems.append(f"{path.name}: no cell tagged 'parameters'")
    kernel = nb.metadata.get("kernelspec", {}).get("name")
    if kernel != KERNEL:
        problems.append(f"{path.name}: kernelspec is {kernel!r}, not {KERNEL!r}")
    return problems


def strip_outputs(path: str | Path) -> bool:
    """Remove outputs and execution counts from a notebook in place; True when it changed."""
    path = Path(path)
    nb = nbformat.read(path, as_version=4)
    changed = False
    for cell in nb.cells:
        if cell.cell_type == "code" and (cell.outputs or cell.execution_count is not None):
            cell.outputs, cell.execution_count, changed = [], None, True
        if cell.cell_type == "code" and "execution" in cell.metadata:
            del cell.metadata["execution"]
            changed = True
    if changed:
        nbformat.write(nb, path)
    return changed


# ---------------------------------------------------------------------------------------------------
# Running


def pick_kernel(preferred: str = KERNEL) -> str:
    """The project's kernel when installed, else "python3" (with a message saying how to install it)."""
    from jupyter_client.kernelspec import KernelSpecManager

    specs = KernelSpecManager().find_kernel_specs()
    if preferred in specs:
        return preferred
    print(f"dsaml workbook: kernel {preferred!r} is not installed; using 'python3' (install it with "
          f"`{sys.executable} -m ipykernel install --sys-prefix --name {preferred} "
          f"--display-name 'Python ({preferred})'`, which `make venv` does)", file=sys.stderr)
    return "python3"


SMOKE_SYNTH = dict(songs=6, full_songs=2, anonymous_songs=1, listeners=3, test_listeners=2, lazy_listeners=1,
                   raters_per_song=3, raters_per_full_song=2, clip_seconds=25.0, full_seconds=(30.0, 35.0),
                   sample_rate=16000)
"""SynthConfig fields of the smoke preset's dataset: 6 clips of 25 s (20 labels), 2 test songs of 30-35 s."""


def synthetic_ready(root: str | Path) -> bool:
    """True when `dsaml synth` finished writing a dataset under root (its config.json is written last)."""
    from dsaml_utils import synth

    return (Path(root) / synth.TRUTH_DIR / "config.json").is_file()


def ensure_dataset(params: WorkbookParams) -> Path:
    """The dataset root; a missing synthetic dataset is generated (tiny for the smoke preset)."""
    root = Path(params.root)
    if params.dataset == "synthetic":
        from dsaml_utils import synth

        if not synthetic_ready(root):
            overrides = SMOKE_SYNTH if params.preset == "smoke" else {}
            cfg = synth.SynthConfig(seed=params.seed, **overrides)
            partial = any((root / d).exists() for d in (synth.AUDIO_DIR.parts[0], synth.TRUTH_DIR))
            print(f"dsaml workbook: generating the synthetic dataset into {root}"
                  + (" (replacing an unfinished one)" if partial else ""), file=sys.stderr)
            synth.generate(root, cfg, overwrite=partial)
    elif not root.is_dir():
        raise DataError(f"{root}: dataset root for {params.dataset!r} does not exist")
    return root


@contextlib.contextmanager
def _kernel_environment():
    """Environment of the kernels the runner starts: the repository on PYTHONPATH (so dsaml_utils imports
    even without `pip install -e .`), and progress bars that redraw every few seconds (each redraw is
    stored as an output of the executed notebook)."""
    old = {k: os.environ.get(k) for k in ("PYTHONPATH", "TQDM_MININTERVAL")}
    os.environ["PYTHONPATH"] = os.pathsep.join([str(REPO)] + ([old["PYTHONPATH"]] if old["PYTHONPATH"] else []))
    os.environ["TQDM_MININTERVAL"] = "5"
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def run_notebook(src: Path, dest: Path, params: WorkbookParams, kernel: str, progress: bool = False,
                 log_output: bool = False) -> None:
    """Execute one notebook into `dest` (log_output: echo its cells' output); raises NotebookFailed naming
    the failing cell."""
    import papermill as pm
    from papermill.exceptions import PapermillExecutionError
    from traitlets.config import Config

    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="dsaml-kernel-") as sock, _kernel_environment():
        # IPC sockets in a private directory: no open TCP ports, and no warning about them.
        config = Config({"KernelManager": {"transport": "ipc", "ip": str(Path(sock) / "kernel")}})
        try:
            pm.execute_notebook(str(src), str(dest), parameters=dataclasses.asdict(params), kernel_name=kernel,
                                config=config, progress_bar=progress, log_output=log_output,
                                cwd=str(src.parent),
                                # the kernel's own log only reports shutdown chatter here; errors inside
                                # the notebook still reach the executed copy and NotebookFailed
                                extra_arguments=["--IPKernelApp.log_level=CRITICAL"])
        except PapermillExecutionError as exc:
            raise NotebookFailed(src.name, exc.cell_index, exc.source, f"{exc.ename}: {exc.evalue}", dest) from None


NO_LISTENERS = ("pmemo",)
"""Datasets without rater identities (PMEmo publishes only mean and std curves): no PDMER."""


def skip_reason(path: Path, params: WorkbookParams) -> str | None:
    """Why a notebook cannot run with these parameters (its metadata "dsaml" says what it needs), or None."""
    needs = nbformat.read(path, as_version=4).metadata.get("dsaml", {})
    if needs.get("needs_listeners") and params.dataset in NO_LISTENERS:
        return f"dataset {params.dataset!r} has no listener identities, so no personalized (PDMER) experiments"
    return None


def run_workbook(
    params: WorkbookParams,
    notebooks_dir: str | Path = NOTEBOOKS_DIR,
    only: list[str] | None = None,
    cell_progress: bool = False,
    kernel: str | None = None,
    log_output: bool = False,
) -> dict:
    """Run the notebooks in order; returns (and writes to <run>/workbook.json) what ran and how long."""
    from tqdm.auto import tqdm

    if log_output:  # papermill logs each cell's output at INFO level
        import logging

        log = logging.getLogger("papermill")
        if not any(getattr(h, "dsaml", False) for h in log.handlers):
            handler = logging.StreamHandler(sys.stderr)
            handler.setFormatter(logging.Formatter("%(message)s"))
            handler.dsaml = True
            log.addHandler(handler)
        log.setLevel(logging.INFO)

    nbs = list_notebooks(notebooks_dir, only)
    kernel = kernel or pick_kernel()
    run = Path(params.run_dir)
    run.mkdir(parents=True, exist_ok=True)
    ensure_dataset(params)
    record = {"params": dataclasses.asdict(params), "kernel": kernel, "notebooks": []}
    bar = tqdm(nbs, desc="notebooks", unit="nb")
    try:
        for nb in bar:
            bar.set_postfix_str(nb.stem)
            reason = skip_reason(nb, params)
            if reason:
                print(f"dsaml workbook: skipping {nb.stem}: {reason}", file=sys.stderr)
                record["notebooks"].append({"name": nb.stem, "seconds": 0.0, "skipped": reason})
                continue
            start = time.perf_counter()
            run_notebook(nb, run / "notebooks" / nb.name, params, kernel, cell_progress, log_output)
            record["notebooks"].append({"name": nb.stem, "seconds": round(time.perf_counter() - start, 2)})
    finally:
        bar.close()
        (run / "workbook.json").write_text(json.dumps(record, indent=2) + "\n")
    return record


def _cli(args: argparse.Namespace) -> int:
    if args.strip:
        for nb in list_notebooks(args.notebooks, args.only):
            if strip_outputs(nb):
                print(f"stripped {nb}")
        return 0
    params = default_params(args.preset, args.dataset, args.root, args.out, args.figures, args.seed, args.device)
    if args.fresh:
        for sub in ("runs", "notebooks", "cache", "workbook.json"):  # this run's outputs, nothing else
            path = Path(params.run_dir) / sub
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()
    print(f"dsaml workbook: preset {params.preset}, dataset {params.dataset} ({params.root})\n"
          f"  run: {params.run_dir}\n  figures: {params.figures_dir}\n  tables: {params.tables_dir}",
          file=sys.stderr)
    try:
        record = run_workbook(params, args.notebooks, args.only, args.cell_progress, log_output=args.log_output)
    except NotebookFailed as exc:
        print(f"dsaml workbook: error: {exc}", file=sys.stderr)
        return 1
    total = sum(n["seconds"] for n in record["notebooks"])
    for n in record["notebooks"]:
        print(f"  {n['name']:<34} {n['seconds']:8.1f} s")
    print(f"  {'total':<34} {total:8.1f} s")
    return 0


def register_cli(subparsers) -> None:
    """Add `dsaml workbook`."""
    p = subparsers.add_parser("workbook", help="run every notebook (papermill) and regenerate figures/tables",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", choices=PRESETS, default="quick",
                   help="smoke: seconds on tiny fixtures; quick: CPU, < 20 min; paper: the paper's settings")
    p.add_argument("--dataset", choices=("synthetic", "deam", "pmemo"), default="synthetic")
    p.add_argument("--root", help="dataset root (default: data/synthetic, generated when absent)")
    p.add_argument("--out", help="run directory (default: runs/<dataset>-<preset>)")
    p.add_argument("--figures", help="figures directory (default: figures/<dataset>; smoke: <run>/figures)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", help="torch device (default: cuda when available, else cpu)")
    p.add_argument("--only", nargs="+", metavar="NN", help="run only these notebooks (numbers or names)")
    p.add_argument("--notebooks", default=str(NOTEBOOKS_DIR), help=argparse.SUPPRESS)
    p.add_argument("--cell-progress", action="store_true", help="show papermill's per-cell progress bar")
    p.add_argument("--log-output", action="store_true",
                   help="echo every cell's output (training progress included) to the terminal")
    p.add_argument("--fresh", action="store_true",
                   help="delete this run's earlier training runs and executed notebooks first (needed after "
                        "changing settings: runs with another config are never overwritten)")
    p.add_argument("--strip", action="store_true",
                   help="instead of running, remove outputs from the stored notebooks (after editing them)")
    p.set_defaults(func=_cli)


# ---------------------------------------------------------------------------------------------------
# Inside a notebook


SMOKE_RUN = {
    "train.steps": 2, "train.batch_size": 2, "train.window": 20, "train.eval_every": 0,
    "train.checkpoint_every": 0, "meta.tasks_per_step": 2, "meta.inner_steps": 1, "meta.query_songs": 2,
    "tasks.min_songs": 2, "eval.kshots": [1], "eval.hop": 10, "eval.support_steps": 20,
    "mel.sample_rate": 16000,
}
"""RunConfig overrides of the smoke preset (on top of the quick preset): seconds, not results."""
QUICK_RUN = {"train.steps": 60, "train.eval_every": 20, "train.checkpoint_every": 20, "eval.draws": 1,
             "mel.n_mels": 32}
"""RunConfig overrides of the workbook's quick preset: the notebooks train 16 runs (Tables 1-4, MAML order),
so each gets fewer updates than `dsaml experiment --preset quick` gives it, and 32 mel bands instead of 96
(measured: 96 bands made notebook 04 take 6.1 min instead of 3.8, on course for ~25 min in all), to finish
in < 20 min on 2 cores. The price: at 32 bands the small model hears little valence (see config.py)."""
class Session:
    """What a notebook needs from its parameters: paths, provenance, the dataset, figure/table saving."""

    def __init__(self, dataset: str, root: str, preset: str, seed: int, run_dir: str, figures_dir: str,
                 tables_dir: str, device: str = "cpu"):
        if preset not in PRESETS:
            raise UserError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
        self.params = WorkbookParams(dataset, str(root), preset, int(seed), str(run_dir), str(figures_dir),
                                     str(tables_dir), device)
        self.root, self.run_dir = Path(root), Path(run_dir)
        self.figures_dir, self.tables_dir = Path(figures_dir), Path(tables_dir)
        for d in (self.run_dir, self.figures_dir, self.tables_dir):
            d.mkdir(parents=True, exist_ok=True)
        self.dataset_name, self.preset, self.seed, self.device = dataset, preset, int(seed), device
        self._ds = None
        seed_everything(self.seed)
        threads = os.environ.get("DSAML_THREADS") or ("1" if preset != "paper" else "")
        if threads:
            # see the module docstring: one thread is far faster when the cores are shared
            import torch

            torch.set_num_threads(int(threads))
        warnings.filterwarnings("ignore", message="IProgress not found")  # tqdm without ipywidgets

    @property
    def cache_dir(self) -> Path:
        """Feature cache: data/cache, shared by runs (entries are keyed by audio content); smoke: <run>/cache."""
        return self.run_dir / "cache" if self.preset == "smoke" else REPO / "data" / "cache"

    @property
    def provenance(self) -> dict:
        """The stamp on every figure and table: data, preset, seed."""
        data = self.dataset_name if self.root.name == self.dataset_name else f"{self.dataset_name} ({self.root.name})"
        return {"data": data, "preset": self.preset, "seed": self.seed}

    def save(self, fig, name: str, svg: bool | None = None) -> list[Path]:
        """Save a figure as PNG (+ SVG except in smoke runs) into the figures directory; it stays open."""
        from dsaml_utils.plots import save_figure

        return save_figure(fig, name, self.figures_dir, svg=self.preset != "smoke" if svg is None else svg)

    def table(self, df, name: str, title: str | None = None) -> Path:
        """Save a table (Markdown + CSV) into the tables directory; returns the Markdown path."""
        from dsaml_utils.plots import save_table

        return save_table(df, name, self.tables_dir, self.provenance, title=title)[0]

    def run_config(self, **fields):
        """A training RunConfig for this session: the preset's, on this dataset, seed, device and cache.

        "paper" is config.preset("paper"); "quick" is config.preset("quick"); "smoke" is the quick one
        shrunk by SMOKE_RUN (a couple of updates of a tiny model). Keyword fields are set last.
        """
        from dsaml_utils.config import apply_overrides, preset

        cfg = preset("paper" if self.preset == "paper" else "quick")
        cfg.dataset, cfg.root, cfg.cache_dir = self.dataset_name, str(self.root), str(self.cache_dir)
        cfg.train.seed, cfg.train.device = self.seed, self.device
        if self.preset == "smoke":
            apply_overrides(cfg, [f"{k}={json.dumps(v)}" for k, v in SMOKE_RUN.items()])
            cfg.deviations.append("smoke: two updates on 10 s windows, to exercise the code only")
        elif self.preset == "quick":
            apply_overrides(cfg, [f"{k}={json.dumps(v)}" for k, v in QUICK_RUN.items()])
            cfg.deviations.append(f"workbook: {QUICK_RUN['train.steps']} updates per run, one support draw per "
                                  f"listener and {QUICK_RUN['mel.n_mels']} mel bands, so that the workbook's 16 runs "
                                  "fit in 20 minutes on 2 CPU cores")
        if "mode" in fields and "strategy" not in fields:
            cfg.strategy = None  # the new mode's default strategy
        for k, v in fields.items():
            setattr(cfg, k, v)
        return cfg.resolve()

    def experiment(self, name: str, progress: bool = True):
        """experiments.run_experiment(name) with this session's config and seed: trains (or reuses) its runs
        under <run_dir>/runs, writes the table into the tables directory; returns (table, results, paths)."""
        from dsaml_utils.experiments import run_experiment

        return run_experiment(name, self.run_config(), [self.seed], self.run_dir / "runs", self.tables_dir,
                              progress=progress, ds=self.dataset())

    def spec(self, experiment: str, row: str):
        """The experiments.RunSpec of one row of an experiment (e.g. "table3", "w/o attention loss")."""
        from dsaml_utils.experiments import EXPERIMENTS

        if experiment not in EXPERIMENTS:
            raise UserError(f"unknown experiment {experiment!r}; choose from {', '.join(EXPERIMENTS)}")
        specs = {s.name: s for s in EXPERIMENTS[experiment]["specs"]}
        if row not in specs:
            raise UserError(f"experiment {experiment!r} has no row {row!r}; rows: {', '.join(specs)}")
        return specs[row]

    def run_folder(self, experiment: str, row: str) -> Path:
        """Where the run of one experiment row lives for this session's seed."""
        return self.run_dir / "runs" / self.spec(experiment, row).slug() / f"seed{self.seed}"

    def ensure(self, experiment: str, row: str, progress: bool = True) -> dict:
        """Train (or reuse) and evaluate the run of one experiment row; returns its metrics."""
        from dsaml_utils.experiments import run_specs

        spec = self.spec(experiment, row)
        res = run_specs([spec], self.run_config(), [self.seed], self.run_dir / "runs", progress=progress,
                        ds=self.dataset())
        return res[spec.name][0]

    def load(self, experiment: str, row: str):
        """(RunConfig, model in eval mode) of one experiment row's run (trained first when needed)."""
        from dsaml_utils.train import load_run_model

        self.ensure(experiment, row, progress=False)
        return load_run_model(self.run_folder(experiment, row), self.device)

    def song_data(self, cfg, model, song_ids: list[str]) -> dict:
        """train.SongData (model inputs and every listener's labels) of these songs, from the cache."""
        from dsaml_utils.features import FeatureCache
        from dsaml_utils.train import build_store

        return build_store(self.dataset(), list(song_ids), cfg, model, FeatureCache(self.cache_dir), progress=False)

    def history(self, experiment: str, row: str):
        """One experiment row's training history (loss, validation scores per evaluation) as a DataFrame."""
        import pandas as pd

        path = self.run_folder(experiment, row) / "history.json"
        return pd.DataFrame(json.loads(path.read_text())) if path.is_file() else pd.DataFrame()

    @property
    def personalized(self) -> bool:
        """True when the dataset has listener identities, i.e. PDMER experiments are possible."""
        return bool(self.dataset().listeners())

    def dataset(self):
        """The dataset (generated first when synthetic and absent), loaded once."""
        if self._ds is None:
            from dsaml_utils.data import load_dataset

            ensure_dataset(self.params)
            self._ds = load_dataset(self.dataset_name, self.root)
        return self._ds


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch."""
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
