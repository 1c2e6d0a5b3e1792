"""The teaching pieces of notebooks 06 and 07: toy curves and their distortions, the by-hand figures, and the
notebooks' exercises with solutions that parse."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import nbformat  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from dsaml_utils import metrics  # noqa: E402
from dsaml_utils.evaluation.toy_curves import (  # noqa: E402
    DEFAULT_AMOUNTS,
    DISTORTIONS,
    distort,
    toy_predictions,
    toy_target,
)
from dsaml_utils.plots.by_hand import plot_attention_pieces, plot_toy_curves  # noqa: E402

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
PROV = {"data": "unit-test", "preset": "smoke", "seed": 3}


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def test_toy_target_is_a_reproducible_smooth_curve():
    t = toy_target(120, seed=4)
    assert t.shape == (120,) and np.array_equal(t, toy_target(120, seed=4))
    assert not np.array_equal(t, toy_target(120, seed=5))
    assert np.abs(t).max() <= 0.55 and t.std() > 0.2
    assert np.abs(np.diff(t)).max() < 0.15  # slow: no jumps between 0.5 s steps
    with pytest.raises(ValueError):
        toy_target(1)


def test_offset_and_gain_leave_pcc_at_one_and_cost_ccc_the_closed_form():
    t = toy_target(200, seed=1)
    off, gain = distort(t, "offset", 0.3), distort(t, "gain", 0.5)
    assert np.isclose(metrics.pcc(off, t), 1) and np.isclose(metrics.pcc(gain, t), 1)
    assert np.isclose(metrics.ccc(off, t), 2 * t.var() / (2 * t.var() + 0.09))
    assert np.isclose(metrics.ccc(gain, t), 2 * 0.5 / (1 + 0.25))
    assert np.isclose(metrics.rmse(off, t), 0.3) and np.isclose(metrics.rmse(gain, t), 0.5 * t.std())
    assert np.isclose(gain.mean(), t.mean())


def test_lag_shifts_late_and_holds_the_first_value():
    t = np.arange(6.0)
    assert np.array_equal(distort(t, "lag", 2), [0, 0, 0, 1, 2, 3])
    assert np.array_equal(distort(t, "lag", 0), t)
    for bad in (-1, 6, 1.5):
        with pytest.raises(ValueError):
            distort(t, "lag", bad)


def test_noise_is_seeded_and_flat_is_the_mean():
    t = toy_target(50)
    assert np.array_equal(distort(t, "noise", 0.1, seed=2), distort(t, "noise", 0.1, seed=2))
    assert not np.array_equal(distort(t, "noise", 0.1, seed=2), distort(t, "noise", 0.1, seed=3))
    assert np.allclose(distort(t, "flat"), t.mean()) and metrics.pcc(distort(t, "flat"), t) == 0.0
    with pytest.raises(ValueError):
        distort(t, "wobble")
    with pytest.raises(ValueError):
        distort(np.zeros((3, 2)), "offset", 1.0)


def test_toy_predictions_cover_every_distortion_with_overridable_amounts():
    t = toy_target(80)
    preds = toy_predictions(t)
    assert list(preds) == list(DISTORTIONS) == list(DEFAULT_AMOUNTS)
    assert np.allclose(preds["offset"], t + DEFAULT_AMOUNTS["offset"])
    assert np.allclose(toy_predictions(t, {"offset": -0.1})["offset"], t - 0.1)
    with pytest.raises(ValueError):
        toy_predictions(t, {"tilt": 1.0})


def test_plot_toy_curves_titles_each_panel_with_its_scores():
    t = toy_target(40)
    fig = plot_toy_curves(t, toy_predictions(t), provenance=PROV)
    axes = [ax for ax in fig.axes if ax.get_title()]
    assert len(axes) == len(DISTORTIONS)
    assert "PCC 1.00" in axes[0].get_title() and "RMSE 0.30" in axes[0].get_title()
    assert "-0.00" not in axes[-1].get_title()  # the flat prediction's CCC is printed as 0.00
    assert "seed: 3" in fig._dsaml_provenance
    with pytest.raises(ValueError):
        plot_toy_curves(t, {})


def test_plot_attention_pieces_blanks_masked_scores():
    a = np.arange(16.0).reshape(4, 4)
    a[0, 3] = -np.inf
    fig = plot_attention_pieces({"score": a, "weights": np.eye(4)}, title="t", provenance=PROV)
    image = fig.axes[0].images[0].get_array()
    assert np.ma.is_masked(image[0, 3]) or np.isnan(image[0, 3])
    assert [ax.get_title() for ax in fig.axes if ax.get_title()] == ["score", "weights"]
    with pytest.raises(ValueError):
        plot_attention_pieces({"bad": np.zeros((2, 3))}, title="t")
    with pytest.raises(ValueError):
        plot_attention_pieces({}, title="t")


@pytest.mark.parametrize("name", ["06_evaluation_tables", "07_attention_maps"])
def test_notebook_checks_by_hand_and_ends_with_exercises_linked_to_solutions(name):
    nb = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    code = "\n".join(c.source for c in nb.cells if c.cell_type == "code")
    assert "assert_close(" in code if name.startswith("07") else "assert np.isclose(" in code
    last = nb.cells[-1]
    assert last.cell_type == "markdown" and last.source.startswith("## Exercises")
    assert len(re.findall(r"^\d\. ", last.source, re.M)) in (2, 3, 4)
    link = f"solutions/{name}.md"
    assert f"({link})" in last.source and (NOTEBOOKS / link).is_file()


@pytest.mark.parametrize("name", ["06_evaluation_tables", "07_attention_maps"])
def test_solutions_have_one_python_block_per_exercise_that_parses(name):
    nb = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    exercises = len(re.findall(r"^\d\. ", nb.cells[-1].source, re.M))
    blocks = re.findall(r"```python\n(.*?)```", (NOTEBOOKS / "solutions" / f"{name}.md").read_text(), re.S)
    assert len(blocks) == exercises
    for block in blocks:
        ast.parse(block)
