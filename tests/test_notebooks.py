"""Every notebook is stored clean and runs end to end in smoke mode, producing its figures and tables.

The smoke run executes all notebooks once (papermill, the project's kernel) on a tiny synthetic dataset
with a couple of training updates; each test below then checks one notebook's outputs.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import nbformat
import pandas as pd
import pytest

from dsaml_utils.experiments.plan import plan_jobs
from dsaml_utils.training.config import SMOKE
from dsaml_utils.workbook.runner import (
    PARAMETER_NAMES,
    default_params,
    list_notebooks,
    parameters_cell,
    run_config,
    run_workbook,
    storage_problems,
)
from dsaml_utils.workbook.session import Session

# What each notebook must write: figures (PNG) under figures_dir, tables (Markdown + CSV) under tables_dir.
EXPECTED = {
    "00_setup_and_data": {"figures": [], "tables": ["00_dataset_summary", "00_split"]},
    "01_data_exploration": {
        "figures": ["01_rater_curves", "01_rater_curves_test_song", "01_listener_vs_mean", "01_dataset_statistics"],
        "tables": ["01_listener_vs_mean"],
    },
    "02_preprocessing": {"figures": ["02_spectrogram_slices"], "tables": ["02_feature_cache"]},
    "03_model": {"figures": ["03_band_masks", "03_attention_untrained"], "tables": ["03_parameter_counts"]},
    "04_dmer_training": {"figures": ["04_training_curves", "04_dmer_scores", "04_predictions_test_song"],
                         "tables": ["table1"]},
    "05_meta_training": {"figures": ["05_meta_training_curves", "05_personalization_gain"],
                         "tables": ["05_tasks", "table4", "personalization"]},
    "06_evaluation_tables": {
        "figures": ["table1_dmer", "table4_pdmer_ablations", "06_kshot_curve", "features_dmer", "features_importance"],
        "tables": ["table1", "table1_paper", "table2", "table2_paper", "table3", "table3_paper", "table4",
                   "table4_paper", "kshot", "order", "features", "features_importance"],
    },
    "07_attention_maps": {"figures": ["07_attention_maps"], "tables": ["07_attention_diagonals"]},
    "08_personalize_new_listener": {"figures": ["08_personalized_predictions"], "tables": ["08_listener_scores"]},
    "09_annotate_yourself": {"figures": ["09_example_annotation", "09_personal_predictions"],
                             "tables": ["09_adapted_vs_average"]},
}


def test_expected_outputs_cover_every_notebook():
    assert [p.stem for p in list_notebooks()] == list(EXPECTED)


@pytest.mark.parametrize("path", list_notebooks(), ids=lambda p: p.stem)
def test_notebook_stored_without_outputs_with_parameters(path):
    assert storage_problems(path) == []
    nb = nbformat.read(path, as_version=4)
    params = nb.cells[parameters_cell(nb)].source
    for name in PARAMETER_NAMES:  # every runner parameter has a default in the notebook
        assert f"\n{name} = " in f"\n{params}", f"{path.name}: parameter {name} missing"
    assert nb.metadata["kernelspec"]["display_name"] == "Python (dsaml)"


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("workbook-smoke")
    params = default_params("smoke", out=out, device="cpu")
    record = run_workbook(params)  # raises NotebookFailed (notebook + cell) on any error
    return params, record


def test_smoke_run_executed_every_notebook(smoke_run):
    params, record = smoke_run
    assert [n["name"] for n in record["notebooks"]] == list(EXPECTED)
    for name in EXPECTED:
        nb = nbformat.read(Path(params.run_dir) / "notebooks" / f"{name}.ipynb", as_version=4)
        errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
        assert errors == [], name


@pytest.mark.parametrize("name", list(EXPECTED))
def test_notebook_wrote_its_figures_and_tables(smoke_run, name):
    params, _ = smoke_run
    for fig in EXPECTED[name]["figures"]:
        png = Path(params.figures_dir) / f"{fig}.png"
        assert png.is_file() and png.stat().st_size > 1000, f"{name}: figure {png.name} missing"
    for table in EXPECTED[name]["tables"]:
        md = Path(params.tables_dir) / f"{table}.md"
        assert md.is_file(), f"{name}: table {md.name} missing"
        assert "| model |" in md.read_text() or "| quantity |" in md.read_text() or "|---|" in md.read_text()
        assert "_data: synthetic" in md.read_text(), f"{name}: table {md.name} has no provenance line"
        assert (Path(params.tables_dir) / f"{table}.csv").is_file()


def test_workbook_trained_every_run_first_and_the_notebooks_none(smoke_run):
    params, record = smoke_run
    pre = record["pretrain"]
    runs = Path(params.run_dir) / "runs"
    expected = {j.folder for j in plan_jobs(pre["plan"], run_config(params), runs)}
    assert pre["plan"]["kshot"] == pre["plan"]["personalization"] == [0, 1, 2] and pre["plan"]["table1"] == [0]
    assert {Path(f) for f in pre["folders"]} == expected and pre["runs"] == pre["trained"] == len(expected)
    assert pre["jobs"] >= 1 and pre["seconds"] > 0
    # every run folder is one the pre-training made, and no notebook wrote weights or metrics after it
    assert {p.parent for p in runs.rglob("config.json")} == expected
    for folder in expected:
        for name in ("model.pt", "metrics.json"):
            assert (folder / name).stat().st_mtime_ns <= pre["finished_ns"], f"{folder / name} written by a notebook"


@pytest.mark.parametrize("table", ["personalization", "kshot"])
def test_personalization_and_kshot_tables_average_three_seeds(smoke_run, table):
    params, _ = smoke_run
    tables = Path(params.tables_dir)
    assert "seeds: 0,1,2" in (tables / f"{table}.md").read_text() and "±" in (tables / f"{table}.md").read_text()
    df = pd.read_csv(tables / f"{table}.csv")
    if table == "personalization":
        assert (df["seeds"] == 3).all()
    assert df.filter(like="_std").notna().any(axis=None)
    assert "seeds: 0,1,2" not in (tables / "table1.md").read_text()


def test_session_reuses_the_runs_the_notebooks_trained(smoke_run):
    params, _ = smoke_run
    wb = Session(**vars(params))
    with warnings.catch_warnings():  # synth reproduces DEAM's swapped static columns and records it: no warning
        warnings.simplefilter("error")
        assert wb.dataset().name == "synthetic"
    assert any("swapped back, as" in p for p in wb.dataset().problems)
    assert wb.personalized
    folder = wb.run_folder("table1", "DSAML")
    before = (folder / "model.pt").stat().st_mtime_ns
    metrics = wb.ensure("table1", "DSAML", progress=False)  # finished: reused, not retrained
    assert (folder / "model.pt").stat().st_mtime_ns == before
    assert metrics.mode == "dmer" and metrics.model == "dsaml" and metrics.summary("dmer")
    cfg, model = wb.load("table1", "DSAML")
    assert cfg.train.window == SMOKE["train.window"] and not model.training
    hist = wb.history("table1", "DSAML")
    assert list(hist["step"]) == [SMOKE["train.steps"]] and "val_score" in hist
    sid = wb.dataset().test_ids[0]
    sd = wb.song_data(cfg, model, [sid])[sid]
    assert sd.inputs["mel"].shape[0] == len(sd.times) == len(wb.dataset().songs[sid].curves["mean"])


def test_annotate_yourself_saved_the_example_curve_and_adapted_on_it(smoke_run):
    params, _ = smoke_run
    from dsaml_utils.evaluation.curves import read_curve_csv

    annotate = Path(params.run_dir) / "annotate"
    curve = read_curve_csv(annotate / "my_curve_001.csv")  # the personalize format, one row per 0.5 s
    assert (annotate / "my_curve_001.csv").read_text().startswith("time,arousal,valence\n") and len(curve) >= 20
    out = annotate / "adapted_001"
    assert (out / "personal.pt").is_file() and len(list(out.glob("*.csv"))) == len(list(out.glob("*.png"))) == 3
    nb = nbformat.read(Path(params.run_dir) / "notebooks" / "09_annotate_yourself.ipynb", as_version=4)
    text = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    assert f"saved {annotate / 'my_curve_001.csv'}" in text and f"adapted; predictions in {out}" in text
    assert "batch run: the annotation tool needs a browser" in text  # no widgets under papermill
