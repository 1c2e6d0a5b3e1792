"""Tests for dsaml_utils.workbook (runner and session): notebook discovery, storage checks, parameters, failure reporting."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import nbformat
import pytest

from dsaml_utils import cli, plots
from dsaml_utils.cli import workbook as cli_workbook
from dsaml_utils.errors import DataError, UserError
from dsaml_utils.experiments.plan import WORKBOOK_PLAN
from dsaml_utils.training.config import preset
from dsaml_utils.workbook import runner
from dsaml_utils.workbook.runner import (
    PARAMETER_NAMES,
    REPO,
    default_jobs,
    default_params,
    ensure_dataset,
    list_notebooks,
    notebook_experiments,
    pick_kernel,
    pretrain,
    run_config,
    skip_reason,
    storage_problems,
    strip_outputs,
    torch_threads,
)
from dsaml_utils.workbook.session import Session


def _write_nb(path: Path, *sources: str, params: str = "x = 1", outputs: bool = False) -> Path:
    nb = nbformat.v4.new_notebook()
    p = nbformat.v4.new_code_cell(params)
    p.metadata["tags"] = ["parameters"]
    cells = [p] + [nbformat.v4.new_code_cell(s) for s in sources]
    if outputs:
        cells[-1].outputs = [nbformat.v4.new_output("stream", text="hi\n")]
        cells[-1].execution_count = 3
    nb.cells = cells
    nb.metadata["kernelspec"] = {"name": "dsaml", "display_name": "Python (dsaml)", "language": "python"}
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, path)
    return path


def _main(argv: list[str]) -> int:
    """`dsaml workbook ...` through this module's own subparser (independent of the other commands)."""
    import argparse

    parser = argparse.ArgumentParser(prog="dsaml")
    cli_workbook.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


def test_list_notebooks_orders_and_filters(tmp_path):
    for name in ["02_b", "00_a", "10_c", "notes"]:
        _write_nb(tmp_path / f"{name}.ipynb")
    assert [p.stem for p in list_notebooks(tmp_path)] == ["00_a", "02_b", "10_c"]
    assert [p.stem for p in list_notebooks(tmp_path, ["10", "2", "00_a"])] == ["00_a", "02_b", "10_c"]
    with pytest.raises(UserError, match="matches no notebook"):
        list_notebooks(tmp_path, ["07"])
    with pytest.raises(UserError, match="no numbered notebooks"):
        list_notebooks(tmp_path / "empty")


def test_storage_problems_and_strip_outputs(tmp_path):
    clean = _write_nb(tmp_path / "00_clean.ipynb", "print(x)")
    assert storage_problems(clean) == []
    dirty = _write_nb(tmp_path / "01_dirty.ipynb", "print(x)", outputs=True)
    assert storage_problems(dirty) == ["01_dirty.ipynb: cell 1 has stored outputs or an execution count"]
    assert strip_outputs(dirty) is True
    assert storage_problems(dirty) == []
    assert strip_outputs(dirty) is False
    nb = nbformat.read(clean, as_version=4)
    nb.cells[0].metadata["tags"] = []
    nb.metadata["kernelspec"]["name"] = "python3"
    nbformat.write(nb, clean)
    assert storage_problems(clean) == [
        "00_clean.ipynb: no cell tagged 'parameters'", "00_clean.ipynb: kernelspec is 'python3', not 'dsaml'"]


def test_default_params_layout(tmp_path):
    p = default_params("quick", device="cpu")
    assert p.root == str(REPO / "data" / "synthetic")
    assert p.run_dir == str(REPO / "runs" / "synthetic-quick")
    assert p.figures_dir == str(REPO / "figures" / "synthetic")
    assert p.tables_dir == str(REPO / "figures" / "synthetic" / "tables")
    s = default_params("smoke", out=tmp_path / "run", seed=3, device="cpu")
    assert s.root == str(tmp_path / "run" / "data" / "synthetic")
    assert s.figures_dir == str(tmp_path / "run" / "figures") and s.seed == 3
    d = default_params("paper", "deam", root=tmp_path, device="cuda")
    assert d.run_dir.endswith("deam-paper") and d.figures_dir.endswith("figures/deam") and d.device == "cuda"
    assert set(json.loads(json.dumps(p.__dict__))) == set(PARAMETER_NAMES)
    with pytest.raises(UserError, match="--root is required"):
        default_params("quick", "deam")
    with pytest.raises(UserError, match="unknown preset"):
        default_params("huge")
    with pytest.raises(UserError, match="unknown dataset"):
        default_params("quick", "mer1101")


def test_pick_kernel_falls_back_with_message(capsys):
    assert pick_kernel("python3") == "python3"
    assert capsys.readouterr().err == ""
    assert pick_kernel("no-such-kernel-xyz") == "python3"
    assert "'no-such-kernel-xyz' is not installed" in capsys.readouterr().err


def test_ensure_dataset_checks_real_roots(tmp_path):
    p = default_params("quick", "deam", root=tmp_path / "missing", device="cpu")
    with pytest.raises(DataError, match="missing: dataset root for 'deam' does not exist"):
        ensure_dataset(p)
    p = default_params("quick", "deam", root=tmp_path, device="cpu")
    assert ensure_dataset(p) == tmp_path


def test_run_reports_failing_cell_and_cli_exits_nonzero(tmp_path, capsys):
    """One notebook at a time (--jobs 1): a passing notebook, then a failing one that stops the run."""
    nbs = tmp_path / "nbs"
    _write_nb(nbs / "00_ok.ipynb", "import os\nfrom pathlib import Path\n"
              "Path(run_dir, 'seen.txt').write_text(preset + dataset + os.environ['TQDM_MININTERVAL'])",
              params="preset = 'x'\ndataset = 'y'\nrun_dir = '.'")
    _write_nb(nbs / "01_bad.ipynb", "y = 2", "raise ValueError('broken on purpose')\n# second line")
    _write_nb(nbs / "02_never.ipynb", "open('never', 'w')")
    run = tmp_path / "run"
    argv = ["workbook", "--preset", "smoke", "--dataset", "deam", "--root", str(tmp_path), "--out", str(run),
            "--notebooks", str(nbs), "--device", "cpu", "--jobs", "1"]
    tqdm_before = os.environ.get("TQDM_MININTERVAL")
    assert _main(argv) == 1
    err = capsys.readouterr().err
    assert "notebook 01_bad.ipynb failed in cell" in err
    assert "`raise ValueError('broken on purpose')`" in err and "ValueError: broken on purpose" in err
    assert (run / "seen.txt").read_text() == "smokedeam5"  # parameters injected, kernel environment set
    assert os.environ.get("TQDM_MININTERVAL") == tqdm_before  # ... for the kernels only
    executed = nbformat.read(run / "notebooks" / "01_bad.ipynb", as_version=4)
    assert any("injected-parameters" in c.metadata.get("tags", []) for c in executed.cells)
    assert not (run / "notebooks" / "02_never.ipynb").exists()
    record = json.loads((run / "workbook.json").read_text())
    assert [n["name"] for n in record["notebooks"]] == ["00_ok"] and record["params"]["preset"] == "smoke"
    assert record["pretrain"]["runs"] == 0 and record["pretrain"]["plan"] == {}  # no notebook uses a run


def test_notebooks_run_two_at_a_time_and_keep_their_order(tmp_path, capsys, monkeypatch):
    """With --jobs 2 two kernels run at once: each notebook waits for the other's file (60 s at most). Each
    kernel runs in its notebook's folder, and the workbook never changes the working directory of its own
    process, which the threads running notebooks share (a chdir there once started a kernel elsewhere)."""
    wait = ("import time\nfrom pathlib import Path\nPath(run_dir, '{me}').write_text('x')\n"
            "assert Path.cwd().name == 'nbs', Path.cwd()\n"
            "t0 = time.time()\nwhile not Path(run_dir, '{other}').exists():\n"
            "    assert time.time() - t0 < 60, 'the other notebook never ran alongside'\n    time.sleep(0.1)")
    moved = []
    monkeypatch.setattr(os, "chdir", lambda path: moved.append(path))
    nbs = tmp_path / "nbs"
    _write_nb(nbs / "00_a.ipynb", wait.format(me="a", other="b"), params="run_dir = '.'")
    _write_nb(nbs / "01_b.ipynb", wait.format(me="b", other="a"), params="run_dir = '.'")
    run = tmp_path / "run"
    argv = ["workbook", "--preset", "smoke", "--dataset", "deam", "--root", str(tmp_path), "--out", str(run),
            "--notebooks", str(nbs), "--device", "cpu", "--jobs", "2"]
    assert _main(argv) == 0
    record = json.loads((run / "workbook.json").read_text())
    assert [n["name"] for n in record["notebooks"]] == ["00_a", "01_b"]
    assert 0 < record["notebooks_wall_seconds"] < sum(n["seconds"] for n in record["notebooks"])
    assert "notebooks (wall, 2 at a time)" in capsys.readouterr().out
    # papermill's file handler enters and leaves the working directory around each save: never another one
    assert {str(Path(m).resolve()) for m in moved} <= {str(Path.cwd().resolve())}


def test_cli_fresh_removes_earlier_outputs_only(tmp_path, capsys):
    nbs = tmp_path / "nbs"
    _write_nb(nbs / "00_ok.ipynb", "1")
    run = tmp_path / "run"
    (run / "runs" / "old").mkdir(parents=True)
    (run / "workbook.json").write_text("{}")
    (run / "keep.txt").write_text("mine")
    argv = ["workbook", "--preset", "smoke", "--dataset", "deam", "--root", str(tmp_path), "--out", str(run),
            "--notebooks", str(nbs), "--device", "cpu", "--fresh", "--log-output"]
    _write_nb(nbs / "00_ok.ipynb", "print('echoed ' + 'line')")
    assert _main(argv) == 0
    assert "echoed line" in capsys.readouterr().err  # --log-output streams cell output
    assert not (run / "runs").exists() and (run / "keep.txt").read_text() == "mine"
    assert json.loads((run / "workbook.json").read_text())["notebooks"][0]["name"] == "00_ok"


def test_cli_jobs(tmp_path, capsys):
    nbs = tmp_path / "nbs"
    _write_nb(nbs / "00_ok.ipynb", "1")
    argv = ["workbook", "--preset", "smoke", "--dataset", "deam", "--root", str(tmp_path), "--out",
            str(tmp_path / "run"), "--notebooks", str(nbs), "--device", "cpu", "--jobs"]
    with pytest.raises(UserError, match="--jobs -1"):
        _main(argv + ["-1"])
    assert _main(argv + ["0"]) == 0
    out = capsys.readouterr().out
    assert "training (0 runs, 0 at a time)" in out and "00_ok" in out
    assert json.loads((tmp_path / "run" / "workbook.json").read_text())["pretrain"]["jobs"] == 0


def test_default_jobs_and_threads(monkeypatch):
    monkeypatch.delenv("DSAML_THREADS", raising=False)
    cpus = os.cpu_count() or 1
    assert default_jobs(default_params("quick", device="cpu")) == min(2, cpus)
    assert default_jobs(default_params("quick", device="cuda")) == 1
    assert default_jobs(default_params("paper", device="cpu")) == 1
    assert torch_threads("quick") == torch_threads("smoke") == 1 and torch_threads("paper") is None
    monkeypatch.setenv("DSAML_THREADS", "3")
    assert torch_threads("paper") == 3


def test_notebook_experiments_are_the_workbook_plan(tmp_path):
    nb = _write_nb(tmp_path / "00_x.ipynb", "t, r, p = wb.experiment('table4')\nwb.load( 'table3', row)",
                   'cfg, m = wb.load("table1", "DSAML")\nwb.ensure("kshot", "DSAML")\nwb.history("order", r)',
                   "wb.experiment('table4')")
    assert notebook_experiments(nb) == ["table4", "table3", "table1", "kshot"]
    used = {name for path in list_notebooks() for name in notebook_experiments(path)}
    assert used == set(WORKBOOK_PLAN)  # the plan trains what the notebooks use, nothing more
    assert notebook_experiments(REPO / "notebooks" / "05_meta_training.ipynb") == ["table4", "personalization"]


def test_pretrain_trains_only_what_the_notebooks_use(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(runner, "train_plan", lambda plan, base, out, **kw: calls.append((plan, base, out, kw)) or [])
    params = default_params("smoke", out=tmp_path / "run", seed=4, device="cpu")
    ensure_dataset(params)
    nbs = [_write_nb(tmp_path / "nbs" / "00_a.ipynb", "wb.experiment('kshot')"),
           _write_nb(tmp_path / "nbs" / "01_b.ipynb", "wb.load('table1', 'DSAML')")]
    record = pretrain(params, nbs, jobs=2, progress=False)
    (plan, base, out, kw), = calls
    assert plan == {"table1": [4], "kshot": [4, 5, 6]} == record["plan"]
    assert out == tmp_path / "run" / "runs" and kw["workers"] == 2 and kw["threads"] == 1
    assert base.settings() == run_config(params).settings() and base.cache_dir == str(tmp_path / "run" / "cache")
    assert pretrain(params, nbs, jobs=0)["runs"] == 0 and len(calls) == 1


def test_cli_strip(tmp_path, capsys):
    dirty = _write_nb(tmp_path / "05_x.ipynb", "1", outputs=True)
    assert _main(["workbook", "--strip", "--notebooks", str(tmp_path)]) == 0
    assert "stripped" in capsys.readouterr().out and storage_problems(dirty) == []


def test_session_paths_provenance_and_saving(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import pandas as pd


    s = Session("deam", str(tmp_path / "DEAM"), "smoke", 5, str(tmp_path / "run"),
                         str(tmp_path / "figs"), str(tmp_path / "figs" / "tables"), "cpu")
    code = plots.short_code_version()
    assert s.provenance == {"data": "deam (DEAM)", "preset": "smoke", "seed": 5, "code": code}
    fig = plots.stamp(__import__("matplotlib.pyplot").pyplot.figure(), s.provenance)
    assert [p.name for p in s.save(fig, "f")] == ["f.png"]  # smoke: no SVG
    assert [p.name for p in s.save(fig, "f", svg=True)] == ["f.png", "f.svg"]
    md = s.table(pd.DataFrame({"a": [1]}), "t", title="T")
    assert md == tmp_path / "figs" / "tables" / "t.md" and "preset: smoke" in md.read_text()
    with pytest.raises(UserError, match="unknown preset"):
        Session("deam", "r", "big", 0, str(tmp_path), str(tmp_path), str(tmp_path))


def test_registered_in_cli():

    assert cli_workbook in cli.COMMAND_GROUPS


def _session(tmp_path, preset="smoke", seed=3):
    return Session("synthetic", str(tmp_path / "data"), preset, seed, str(tmp_path / "run"),
                            str(tmp_path / "figs"), str(tmp_path / "figs" / "tables"), "cpu")


def test_session_run_config_presets_and_threads(tmp_path, monkeypatch):
    import torch

    threads = torch.get_num_threads()
    try:
        s = _session(tmp_path)
        assert torch.get_num_threads() == 1  # smoke and quick run single-threaded ...
        monkeypatch.setenv("DSAML_THREADS", "2")
        _session(tmp_path)
        assert torch.get_num_threads() == 2  # ... unless DSAML_THREADS says otherwise
    finally:
        torch.set_num_threads(threads)
    cfg = s.run_config(mode="pdmer")
    assert (cfg.preset, cfg.mode, cfg.strategy, cfg.dataset) == ("smoke", "pdmer", "personalized", "synthetic")
    assert cfg.root == str(tmp_path / "data") and cfg.cache_dir == str(tmp_path / "run" / "cache")
    assert (cfg.train.seed, cfg.train.device) == (3, "cpu")
    expected = preset("smoke", dataset="synthetic", root=str(tmp_path / "data"), cache_dir=cfg.cache_dir,
                      mode="pdmer", strategy=None)
    expected.train.seed, expected.train.device = 3, "cpu"
    assert cfg.settings() == expected.check().settings()  # the smoke preset itself, not a variant
    q = _session(tmp_path, "quick").run_config()
    quick = preset("quick")
    assert (q.train, q.meta, q.mel, q.eval, q.model_config) == (
        dataclasses.replace(quick.train, seed=3, device="cpu"), quick.meta, quick.mel, quick.eval, quick.model_config)
    assert q.cache_dir == str(REPO / "data" / "cache")

    p = _session(tmp_path, "paper").run_config()
    assert p.train.steps == preset("paper").train.steps and p.preset == "paper"


def test_session_seeds_follow_the_workbook_plan(tmp_path):
    s = _session(tmp_path, seed=3)
    assert s.seeds("personalization") == s.seeds("kshot") == [3, 4, 5] and s.seeds("table1") == [3]
    assert s.provenance_for("kshot") == {"data": "synthetic (data)", "preset": "smoke", "seeds": "3,4,5",
                                         "code": plots.short_code_version()}
    assert s.provenance_for("table3") == s.provenance
    with pytest.raises(UserError, match="unknown experiment"):
        s.seeds("table9")


def test_session_spec_and_run_folder(tmp_path):
    s = _session(tmp_path)
    spec = s.spec("table3", "w/o attention loss")
    assert spec.overrides == {"model_config.use_attention_loss": False}
    assert s.run_folder("table3", "w/o attention loss") == tmp_path / "run" / "runs" / spec.slug() / "seed3"
    assert s.run_folder("table4", "DSAML") == s.run_folder("table2", "DSAML")  # rows share runs
    with pytest.raises(UserError, match="unknown experiment"):
        s.spec("table9", "DSAML")
    with pytest.raises(UserError, match="has no row 'Ours'"):
        s.spec("table1", "Ours")
    assert s.history("table1", "DSAML").empty  # not trained yet


def test_skip_reason_for_datasets_without_listeners(tmp_path):
    nb_path = _write_nb(tmp_path / "05_pdmer.ipynb", "1")
    nb = nbformat.read(nb_path, as_version=4)
    nb.metadata["dsaml"] = {"needs_listeners": True}
    nbformat.write(nb, nb_path)
    plain = _write_nb(tmp_path / "01_plain.ipynb", "1")
    pmemo = default_params("quick", "pmemo", root=tmp_path, device="cpu")
    deam = default_params("quick", "deam", root=tmp_path, device="cpu")
    assert "has no listener identities" in skip_reason(nb_path, pmemo)
    assert skip_reason(nb_path, deam) is None
    assert skip_reason(plain, pmemo) is None
