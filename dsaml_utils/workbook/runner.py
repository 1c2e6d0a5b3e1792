"""`dsaml workbook`: run every notebook in notebooks/ in order with the same parameters (papermill).

Layout of one run (``--out``, default ``runs/<dataset>-<preset>``)::

    <run>/notebooks/NN_*.ipynb   executed copies, outputs included
    <run>/runs/<spec>/seed<k>/   training runs (experiments.run_specs layout), shared by the notebooks
    <run>/workbook.json          parameters, kernel, seconds of the pre-training and per notebook

Figures go to ``figures/<dataset>/`` (PNG, plus SVG) and tables to ``figures/<dataset>/tables/``
(Markdown with a provenance line, plus CSV), so the repository's figures/ directory holds the latest
quick or paper run; the smoke preset writes both under the run directory instead (PNG only).

Before the notebooks run, every run their tables need (`experiments.plan.WORKBOOK_PLAN`: the experiments
the notebooks call, three seeds for the personalization and k-shot tables) is trained and evaluated
(`pretrain`), `--jobs` runs at a time in worker processes (default: 2 on CPU, 1 on CUDA and for the paper
preset); the notebooks then find them finished and only read them, and run `--jobs` at a time too, each in
its own kernel (`run_notebooks`). `--jobs 0` leaves the training to the notebooks, one notebook and one run
after another in their kernels.

Every notebook gets the parameters of `WorkbookParams` (papermill injects them after the cell tagged
"parameters"); a failing notebook stops the run with its name and failing cell, exit status 1.

Presets: the notebooks train with `training.config.preset(name)`, the same runs `dsaml train --preset NAME`
and `dsaml experiment --preset NAME` make:
  smoke   seconds: a tiny synthetic dataset (SMOKE_SYNTH) and the smoke preset (two updates per run);
          what `make test` runs
  quick   the quick preset (CPU-sized) on the default synthetic dataset
  paper   the paper's settings, for a GPU and the real datasets
On the smoke and quick presets torch uses one thread per run (DSAML_THREADS=N changes it): on a 2-core
machine shared with other processes (measured on the project's CI machine), one thread ran the smoke
experiments 7x and quick updates 3x faster than two (OpenMP threads spin while they wait for each other).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import re
import sys
import tempfile
import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from dsaml_utils.data import synthetic
from dsaml_utils.data.registry import load_dataset
from dsaml_utils.errors import DataError, UserError
from dsaml_utils.experiments.plan import train_plan, workbook_plan
from dsaml_utils.features.frame_files import ensure_features
from dsaml_utils.training.config import PRESETS, RunConfig
from dsaml_utils.training.config import preset as preset_config

REPO = Path(__file__).resolve().parents[2]


NOTEBOOKS_DIR = REPO / "notebooks"




KERNEL = "dsaml"


BATCH_ENV = "DSAML_WORKBOOK_BATCH"
"""Set to "1" for the kernels the runner starts: `workbook.widgets.interactive()` is then False."""


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
        device = "cuda" if torch.cuda.is_available() else "cpu"
    figures = Path(figures).resolve()
    return WorkbookParams(dataset=dataset, root=str(Path(root).resolve()), preset=preset, seed=int(seed),
                          run_dir=str(run.resolve()), figures_dir=str(figures),
                          tables_dir=str(figures / "tables"), device=device)


def cache_dir(params: WorkbookParams) -> Path:
    """Feature cache: data/cache, shared by runs (entries are keyed by audio content); smoke: <run>/cache."""
    return Path(params.run_dir) / "cache" if params.preset == "smoke" else REPO / "data" / "cache"


def run_config(params: WorkbookParams, **fields) -> RunConfig:
    """The notebooks' training RunConfig: preset(params.preset) on their dataset, seed, device and cache;
    keyword fields are set last (a new `mode` brings its default strategy)."""
    cfg = preset_config(params.preset)
    cfg.dataset, cfg.root, cfg.cache_dir = params.dataset, str(Path(params.root)), str(cache_dir(params))
    cfg.train.seed, cfg.train.device = int(params.seed), params.device
    if "mode" in fields and "strategy" not in fields:
        cfg.strategy = None  # the new mode's default strategy
    for k, v in fields.items():
        setattr(cfg, k, v)
    return cfg.check()


def torch_threads(preset: str) -> int | None:
    """Torch threads per run: DSAML_THREADS, else 1 on the smoke and quick presets (see the module
    docstring), else None (torch's default)."""
    threads = os.environ.get("DSAML_THREADS") or ("1" if preset != "paper" else "")
    return int(threads) if threads else None


def default_jobs(params: WorkbookParams) -> int:
    """Runs trained at a time before the notebooks: 1 on CUDA and for the paper preset, else the CPU
    count capped at 2."""
    if params.device.startswith("cuda") or params.preset == "paper":
        return 1
    return max(1, min(2, os.cpu_count() or 1))


def _read(path: str | Path):
    """A notebook as nbformat v4 (nbformat is imported here: its schema validator takes about a second to
    import, which every notebook kernel would pay through workbook.session)."""
    import nbformat

    return nbformat.read(Path(path), as_version=4)


_CALL = re.compile(r"""\bwb\.(?:experiment|ensure|load)\(\s*["']([^"']+)["']""")


def notebook_experiments(path: str | Path) -> list[str]:
    """The experiments whose runs a notebook trains or loads (`wb.experiment`, `wb.ensure`, `wb.load`)."""
    nb = _read(path)
    names = [m for c in nb.cells if c.cell_type == "code" for m in _CALL.findall(c.source)]
    return list(dict.fromkeys(names))


def pretrain(params: WorkbookParams, notebooks: list[Path], jobs: int, progress: bool = True) -> dict:
    """Train and evaluate every run of WORKBOOK_PLAN that these notebooks use, `jobs` at a time (see the
    module docstring); returns what workbook.json records: seconds, runs, runs trained, the plan."""
    t0 = time.perf_counter()
    wanted = {name for nb in notebooks for name in notebook_experiments(nb)}
    record = {"jobs": jobs, "plan": {}, "runs": 0, "trained": 0}
    if wanted and jobs > 0:
        ds = load_dataset(params.dataset, params.root)
        plan = {k: v for k, v in workbook_plan(params.seed, bool(ds.listeners())).items() if k in wanted}
        if "features" in plan and ensure_features(params.dataset, params.root, workers=jobs) is not None:
            print(f"dsaml workbook: computed the frame features of {params.root} (openSMILE)", file=sys.stderr)
        print(f"dsaml workbook: training the notebooks' runs, {jobs} at a time: "
              + ", ".join(f"{k} (seed {','.join(map(str, v))})" for k, v in plan.items()), file=sys.stderr)
        runs = train_plan(plan, run_config(params), Path(params.run_dir) / "runs", workers=jobs,
                          threads=torch_threads(params.preset), ds=ds)
        if torch.cuda.is_available():
            torch.cuda.empty_cache()  # the notebooks' kernels use the GPU next
        record.update(plan=plan, runs=len(runs), trained=sum(r.trained for r in runs),
                      folders=[str(r.folder) for r in runs])
    record["seconds"] = round(time.perf_counter() - t0, 2)
    record["finished_ns"] = time.time_ns()
    return record


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


def parameters_cell(nb) -> int | None:
    """Index of the cell tagged "parameters" (None when there is none)."""
    for i, cell in enumerate(nb.cells):
        if "parameters" in cell.get("metadata", {}).get("tags", []):
            return i
    return None


def storage_problems(path: str | Path) -> list[str]:
    """What keeps a stored notebook from being clean: outputs, execution counts, no parameters cell."""
    path = Path(path)
    nb = _read(path)
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
    nb = _read(path)
    changed = False
    for cell in nb.cells:
        if cell.cell_type == "code" and (cell.outputs or cell.execution_count is not None):
            cell.outputs, cell.execution_count, changed = [], None, True
        if cell.cell_type == "code" and "execution" in cell.metadata:
            del cell.metadata["execution"]
            changed = True
    if changed:
        import nbformat

        nbformat.write(nb, path)
    return changed


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
    return (Path(root) / synthetic.TRUTH_DIR / "config.json").is_file()


def ensure_dataset(params: WorkbookParams) -> Path:
    """The dataset root; a missing synthetic dataset is generated (tiny for the smoke preset)."""
    root = Path(params.root)
    if params.dataset == "synthetic":
        if not synthetic_ready(root):
            overrides = SMOKE_SYNTH if params.preset == "smoke" else {}
            cfg = synthetic.SynthConfig(seed=params.seed, **overrides)
            partial = any((root / d).exists() for d in (synthetic.AUDIO_DIR.parts[0], synthetic.TRUTH_DIR))
            print(f"dsaml workbook: generating the synthetic dataset into {root}"
                  + (" (replacing an unfinished one)" if partial else ""), file=sys.stderr)
            synthetic.generate(root, cfg, overwrite=partial)
    elif not root.is_dir():
        raise DataError(f"{root}: dataset root for {params.dataset!r} does not exist")
    return root


@contextlib.contextmanager
def _kernel_environment():
    """Environment of the kernels the runner starts: the repository on PYTHONPATH (so dsaml_utils imports
    even without `pip install -e .`), progress bars that redraw every few seconds (each redraw is
    stored as an output of the executed notebook), and BATCH_ENV=1 (widget cells draw static output)."""
    old = {k: os.environ.get(k) for k in ("PYTHONPATH", "TQDM_MININTERVAL", BATCH_ENV)}
    path = [p for p in (old["PYTHONPATH"] or "").split(os.pathsep) if p]
    # idempotent, so that notebooks run in threads inside one outer use leave the environment as it was
    os.environ["PYTHONPATH"] = os.pathsep.join(path if path[:1] == [str(REPO)] else [str(REPO)] + path)
    os.environ["TQDM_MININTERVAL"] = "5"
    os.environ[BATCH_ENV] = "1"
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
                                # the kernel starts in the notebook's folder; papermill's cwd= would chdir
                                # this whole process, which the notebooks running in other threads share
                                resources={"metadata": {"path": str(src.parent)}},
                                # the kernel's own log only reports shutdown chatter here; errors inside
                                # the notebook still reach the executed copy and NotebookFailed
                                extra_arguments=["--IPKernelApp.log_level=CRITICAL"])
        except PapermillExecutionError as exc:
            raise NotebookFailed(src.name, exc.cell_index, exc.source, f"{exc.ename}: {exc.evalue}", dest) from None


NO_LISTENERS = ("pmemo",)
"""Datasets without rater identities (PMEmo publishes only mean and std curves): no PDMER."""


def skip_reason(path: Path, params: WorkbookParams) -> str | None:
    """Why a notebook cannot run with these parameters (its metadata "dsaml" says what it needs), or None."""
    needs = _read(path).metadata.get("dsaml", {})
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
    jobs: int | None = None,
) -> dict:
    """Train the notebooks' runs (`pretrain`, `jobs` at a time; default `default_jobs`, 0: none), then run
    the notebooks in order; returns (and writes to <run>/workbook.json) what ran and how long."""
    if log_output:  # papermill logs each cell's output at INFO level
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
    t0 = time.perf_counter()
    ensure_dataset(params)
    record = {"params": dataclasses.asdict(params), "kernel": kernel, "notebooks": [],
              "dataset_seconds": round(time.perf_counter() - t0, 2)}
    skipped = {nb: skip_reason(nb, params) for nb in nbs}
    jobs = default_jobs(params) if jobs is None else jobs
    if jobs < 0:
        raise UserError(f"--jobs {jobs}: give the number of runs to train at a time (0: none)")
    done: dict[Path, dict] = {}
    try:
        record["pretrain"] = pretrain(params, [nb for nb in nbs if not skipped[nb]], jobs)
        for nb in nbs:
            if skipped[nb]:
                print(f"dsaml workbook: skipping {nb.stem}: {skipped[nb]}", file=sys.stderr)
        t0 = time.perf_counter()
        run_notebooks([nb for nb in nbs if not skipped[nb]], run / "notebooks", params, kernel,
                      max(1, jobs), cell_progress, log_output, done)
        record["notebooks_wall_seconds"] = round(time.perf_counter() - t0, 2)
    finally:
        record["notebooks"] = [{"name": nb.stem, "seconds": 0.0, "skipped": skipped[nb]} if skipped[nb]
                               else {"name": nb.stem, **done[nb]} for nb in nbs if skipped[nb] or nb in done]
        (run / "workbook.json").write_text(json.dumps(record, indent=2) + "\n")
    return record


def run_notebooks(nbs: list[Path], out: Path, params: WorkbookParams, kernel: str, workers: int = 1,
                  cell_progress: bool = False, log_output: bool = False, done: dict | None = None
                  ) -> dict[Path, dict]:
    """Execute notebooks into out/, `workers` at a time in their own kernels (they only read the pretrained
    runs); returns (and fills `done` with) notebook -> {"seconds", "started"} (seconds after the first
    start) for those that finished. The first failure cancels the notebooks not yet started and is raised."""
    done = {} if done is None else done
    t0 = time.perf_counter()

    def one(nb: Path) -> None:
        start = time.perf_counter()
        run_notebook(nb, out / nb.name, params, kernel, cell_progress and workers == 1, log_output)
        done[nb] = {"seconds": round(time.perf_counter() - start, 2), "started": round(start - t0, 2)}

    with _kernel_environment(), ThreadPoolExecutor(max_workers=workers) as pool, \
            tqdm(total=len(nbs), desc="notebooks", unit="nb") as bar:
        todo, running = list(nbs), {}
        while todo or running:
            while todo and len(running) < workers:  # a notebook starts only while none has failed
                nb = todo.pop(0)
                running[pool.submit(one, nb)] = nb
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for fut in finished:
                nb = running.pop(fut)
                fut.result()  # a failure is raised once the other running notebooks end
                bar.set_postfix_str(nb.stem)
                bar.update()
    return done
