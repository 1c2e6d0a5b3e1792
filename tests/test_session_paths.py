"""A notebook's Session resolves its paths like the CLI, so runs trained by `dsaml workbook` / `dsaml train`
are the notebook's runs (and the other way round) however the paths are spelled and wherever the kernel
runs; a run folder holding another run is reported with advice for the notebook; wb.save echoes one line
and the figure footer names the code version.

The runs train on the workbook's smoke dataset (runner.SMOKE_SYNTH) with the smoke preset (two updates).
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import matplotlib
import pandas as pd
import pytest
import torch
from IPython.lib.pretty import pretty

from dsaml_utils.cli import main as cli_main
from dsaml_utils.data import synthetic
from dsaml_utils.data.registry import load_dataset
from dsaml_utils.errors import RunConflict, UserError
from dsaml_utils.experiments.plan import train_plan
from dsaml_utils.io.provenance import code_version
from dsaml_utils.plots.base import save_figure, short_code_version, stamp
from dsaml_utils.training.runs import check_same_data
from dsaml_utils.workbook import runner
from dsaml_utils.workbook.session import Session, absolute, notebook_hints

matplotlib.use("Agg")
import matplotlib.pyplot as plt


@pytest.fixture(autouse=True)
def _restore():
    # a smoke Session sets torch to one thread (several test processes share the cores); figures are closed
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)
    plt.close("all")


@pytest.fixture(scope="module")
def smoke_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("session_paths") / "data" / "synthetic"
    synthetic.generate(root, synthetic.SynthConfig(seed=0, **runner.SMOKE_SYNTH), overwrite=True)
    return root


def _relative(path: Path, start: Path) -> str:
    return os.path.relpath(path, start)


def _session(root, run, cwd: Path | None = None, **kw) -> Session:
    """A notebook's Session from the parameters cell, paths spelled relative to `cwd` when given."""
    spell = (lambda p: _relative(p, cwd)) if cwd is not None else str
    run = Path(run)
    return Session("synthetic", spell(Path(root)), kw.get("preset", "smoke"), 0, spell(run), spell(run / "figures"),
                   spell(run / "figures" / "tables"), "cpu")


def _mtimes(run_dir: Path) -> dict[str, int]:
    return {str(p.relative_to(run_dir)): p.stat().st_mtime_ns for p in sorted(run_dir.rglob("model.pt"))}


def test_session_paths_are_absolute_like_the_cli(tmp_path, monkeypatch):
    nb_dir = tmp_path / "repo" / "notebooks"
    nb_dir.mkdir(parents=True)
    monkeypatch.chdir(nb_dir)  # a notebook's kernel runs in the notebook's folder
    wb = Session("synthetic", "../data/synthetic", "smoke", 0, "../runs/x", "../runs/x/figures",
                 "../runs/x/figures/tables", "cpu")
    repo = (tmp_path / "repo").resolve()
    assert (wb.root, wb.run_dir, wb.figures_dir, wb.tables_dir) == (
        repo / "data" / "synthetic", repo / "runs" / "x", repo / "runs" / "x" / "figures",
        repo / "runs" / "x" / "figures" / "tables")
    assert all(Path(getattr(wb.params, f)).is_absolute() for f in ("root", "run_dir", "figures_dir", "tables_dir"))
    # `dsaml workbook --preset smoke --out runs/x --root data/synthetic`, from the repository root:
    monkeypatch.chdir(repo)
    cli = runner.default_params("smoke", "synthetic", "data/synthetic", "runs/x", seed=0, device="cpu")
    assert wb.params == cli
    assert wb.run_config().to_dict() == runner.run_config(cli).to_dict()  # cache folder included
    assert wb.cache_dir == repo / "runs" / "x" / "cache"
    monkeypatch.setenv("HOME", str(tmp_path))
    assert absolute("~/data") == tmp_path.resolve() / "data"


def test_workbook_runs_are_reused_by_a_notebook_and_by_dsaml_train(smoke_root, tmp_path, monkeypatch):
    run = tmp_path / "wb"
    params = runner.default_params("smoke", "synthetic", smoke_root, run, seed=0, device="cpu")
    ds = load_dataset("synthetic", smoke_root)
    # what `dsaml workbook` trains before its notebooks (runner.pretrain), absolute paths throughout
    first = train_plan({"kshot": [0]}, runner.run_config(params), run / "runs", workers=1, threads=1,
                       progress=False, ds=ds)
    assert [r.trained for r in first] == [True, True]
    before = _mtimes(run)
    assert len(before) == 2

    elsewhere = tmp_path / "some" / "other" / "dir"
    elsewhere.mkdir(parents=True)
    for cwd in (tmp_path, elsewhere):  # relative spellings, from two working directories
        monkeypatch.chdir(cwd)
        wb = _session(smoke_root, run, cwd)
        assert wb.params.root == str(smoke_root.resolve())
        for row in ("DSAML", "DSAML †‡"):
            assert wb.ensure("kshot", row, progress=False).preset == "smoke"
        # a row that starts from another row's weights lives in its own "-from-" folder (experiments.spec_jobs)
        from_dmer = "dsaml-pdmer-personalized-from-dsaml-dmer-traditional"
        assert wb.run_folder("kshot", "DSAML") == run / "runs" / from_dmer / "seed0"
        cfg, model = wb.load("kshot", "DSAML")
        assert cfg.root == str(smoke_root.resolve()) and not model.training
        assert _mtimes(run) == before  # reused, not retrained

    # `dsaml train` with an absolute root on the same folder: nothing to train
    monkeypatch.chdir(elsewhere)
    folder = run / "runs" / "dsaml-dmer-traditional" / "seed0"
    assert cli_main(["train", "--mode", "dmer", "--preset", "smoke", "--dataset", "synthetic",
                     "--root", str(smoke_root.resolve()), "--device", "cpu", "--seed", "0",
                     "--out", str(folder), "--quiet"]) == 0
    assert _mtimes(run) == before
    again = train_plan({"kshot": [0]}, runner.run_config(params), run / "runs", workers=1, threads=1,
                       progress=False, ds=ds)
    assert [r.trained for r in again] == [False, False]


def test_notebook_runs_are_reused_by_dsaml_train_and_other_spellings(smoke_root, tmp_path, monkeypatch):
    nb_dir = tmp_path / "notebooks"
    nb_dir.mkdir()
    monkeypatch.chdir(nb_dir)
    wb = _session(smoke_root, tmp_path / "runs" / "nb", nb_dir)  # "../runs/nb", "../../…/data/synthetic"
    wb.ensure("table1", "DNN", progress=False)
    run = tmp_path / "runs" / "nb"
    before = _mtimes(run)
    assert list(before) == ["runs/dnn-dmer-traditional/seed0/model.pt"]

    monkeypatch.chdir(tmp_path)  # a terminal in the repository: absolute root, relative --out
    assert cli_main(["train", "--mode", "dmer", "--model", "dnn", "--preset", "smoke", "--dataset", "synthetic",
                     "--root", str(smoke_root.resolve()), "--device", "cpu", "--seed", "0",
                     "--out", "runs/nb/runs/dnn-dmer-traditional/seed0", "--quiet"]) == 0
    assert _mtimes(run) == before
    odd = Session("synthetic", str(smoke_root) + "/../synthetic/.", "smoke", 0, "./runs/../runs/nb",
                  "runs/nb/figures", "runs/nb/figures/tables", "cpu")
    odd.ensure("table1", "DNN", progress=False)
    assert _mtimes(run) == before


def test_a_conflicting_run_folder_gets_notebook_advice(smoke_root, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    wb = _session(smoke_root, tmp_path / "run", tmp_path)
    folder = wb.run_folder("table1", "DSAML")
    other = wb.spec("table1", "DSAML").config(wb.run_config(), 0)
    other.train.steps += 1
    folder.mkdir(parents=True)
    other.save(folder / "config.json")  # a run with other settings
    with pytest.raises(RunConflict) as err:
        wb.ensure("table1", "DSAML", progress=False)
    text = str(err.value)
    assert "--out" not in text and "train.steps: 3 -> 2" in text
    assert "`run_dir` in the parameters cell" in text and f"delete {folder} " in text
    with pytest.raises(RunConflict, match="run_dir") as err:
        wb.experiment("table1", progress=False)
    assert "--out" not in str(err.value)
    assert isinstance(err.value, UserError)  # still reported as one line by the CLI


def test_notebook_hints_for_a_checkpoint_of_other_data(tmp_path):
    ckpt = tmp_path / "run" / "seed0" / "checkpoint.pt"
    with pytest.raises(RunConflict) as err, notebook_hints():
        check_same_data(ckpt, {"data_fingerprint": "a" * 64, "data_root": "/old"}, "b" * 64, "/new")
    text = str(err.value)
    assert text.startswith(f"{ckpt}: was trained on other data") and "--out" not in text
    assert "restore the data it was trained on" in text and f"delete {ckpt.parent} " in text
    with notebook_hints():  # anything else passes through untouched
        pass
    with pytest.raises(UserError, match="^other$"), notebook_hints():
        raise UserError("other")


def test_save_returns_paths_that_echo_one_line(tmp_path):
    wb = Session("synthetic", str(tmp_path / "data"), "quick", 0, str(tmp_path / "run"), str(tmp_path / "figs"),
                 str(tmp_path / "figs" / "tables"), "cpu")
    fig = stamp(plt.figure(), wb.provenance)
    saved = wb.save(fig, "01_curves")
    assert saved == [tmp_path / "figs" / "01_curves.png", tmp_path / "figs" / "01_curves.svg"]
    assert saved[0] == saved.path and saved.path.is_file()
    assert repr(saved) == pretty(saved) == "<saved 01_curves: png, svg>"  # what a cell ending in wb.save shows
    assert repr(save_figure(fig, "x", tmp_path, svg=False, close=True)) == "<saved x: png>"


def test_footer_names_the_code_version(tmp_path):
    short = short_code_version()
    full = code_version()
    assert full.startswith(short.removesuffix("-dirty")) and full.endswith("-dirty") == short.endswith("-dirty")
    assert len(short.removesuffix("-dirty")) == 12 or short.startswith("dsaml_utils ")
    fig = stamp(plt.figure(), {"data": "toy", "preset": "smoke", "seed": 1})
    assert fig._dsaml_provenance == f"data: toy | preset: smoke | seed: 1 | code: {short}"
    assert fig.texts[-1].get_text() == fig._dsaml_provenance
    assert stamp(plt.figure(), {"code": "abc"})._dsaml_provenance == "code: abc"  # given: kept
    assert stamp(plt.figure(), None)._dsaml_provenance == ""
    wb = Session("synthetic", str(tmp_path / "d"), "smoke", 0, str(tmp_path), str(tmp_path), str(tmp_path), "cpu")
    assert wb.provenance["code"] == short and list(wb.provenance_for("kshot"))[-1] == "code"
    md = wb.table(pd.DataFrame({"a": [1]}), "t")
    assert md.read_text().rstrip().endswith(f"code: {short}_")


def test_session_takes_the_cli_parameters_unchanged(tmp_path):
    params = runner.default_params("smoke", out=tmp_path / "x", device="cpu")
    assert Session(**dataclasses.asdict(params)).params == params
