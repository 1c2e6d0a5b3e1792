"""Tests for dsaml_utils.plots: every figure builds from small in-memory data, is stamped, and saves."""

from __future__ import annotations

from pathlib import Path

import matplotlib

from dsaml_utils.data.types import MEAN, Curve, MusicDataset, Song

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from dsaml_utils import plots

PROV = {"data": "unit-test", "preset": "smoke", "seed": 7}


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def _song(sid: str, spreads: list[float], T: int = 20) -> Song:
    t = 15 + 0.5 * np.arange(T)
    base = np.sin(np.arange(T) / 3.0) * 0.3
    curves = {f"w{i}": Curve(t, base + s, base - s) for i, s in enumerate(spreads)}
    stack = np.stack([c.values() for c in curves.values()])
    m = stack.mean(0)
    curves[MEAN] = Curve(t, m[:, 0], m[:, 1])
    return Song(sid, None, curves)


def _dataset() -> MusicDataset:
    songs = {"1": _song("1", [0.0, 0.1, -0.1]), "2": _song("2", [0.0, 0.4, -0.4]), "3": _song("3", [0.2])}
    return MusicDataset("toy", Path("."), songs, ["1", "2"], ["3"], (-1.0, 1.0))


def _texts(fig) -> str:
    return " ".join(t.get_text() for t in fig.texts)


def test_provenance_text_and_stamp():
    assert plots.provenance_text(PROV) == "data: unit-test | preset: smoke | seed: 7"
    assert plots.provenance_text({"a": None, "b": 1}) == "b: 1"
    assert plots.provenance_text(None) == ""
    fig = plots.stamp(plt.figure(), PROV)
    assert "seed: 7" in _texts(fig)


def test_save_figure_writes_png_and_svg_and_keeps_provenance(tmp_path):
    fig = plots.plot_listener_curves(_song("9", [0.0, 0.2, -0.2]), provenance=PROV)
    paths = plots.save_figure(fig, "curves", tmp_path / "figs")
    assert [p.name for p in paths] == ["curves.png", "curves.svg"]
    assert paths[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "preset: smoke" in paths[1].read_text()
    assert plt.fignum_exists(fig.number)  # left open for notebooks
    again = plots.save_figure(fig, "curves", tmp_path / "figs", svg=True, close=True)
    assert again[1].read_text() == paths[1].read_text()  # deterministic SVG
    assert not plt.fignum_exists(fig.number)
    only_png = plots.save_figure(plots.stamp(plt.figure(), PROV), "x", tmp_path, svg=False)
    assert [p.suffix for p in only_png] == [".png"]


def test_markdown_table_and_save_table(tmp_path):
    df = pd.DataFrame({"model": ["a|b", "c"], "ccc": [0.12345, float("nan")]})
    md = plots.markdown_table(df)
    assert md.splitlines()[0] == "| model | ccc |"
    assert "| a\\|b | 0.123 |" in md and md.splitlines()[-1] == "| c |  |"
    assert plots.markdown_table(pd.DataFrame({"n": [1234567], "ok": [True]})).splitlines()[-1] == "| 1,234,567 | True |"
    indexed = pd.DataFrame({"v": [1.0]}, index=pd.Index(["row"], name="name"))
    assert plots.markdown_table(indexed).splitlines()[0] == "| name | v |"
    md_path, csv_path = plots.save_table(df, "t1", tmp_path, PROV, title="Table 1")
    text = md_path.read_text()
    assert text.startswith("### Table 1") and "_data: unit-test | preset: smoke | seed: 7_" in text
    back = pd.read_csv(csv_path)
    assert list(back.columns) == ["model", "ccc"] and back["ccc"].iloc[0] == pytest.approx(0.12345)


def test_active_listeners_rater_spread_and_most_disputed():
    ds = _dataset()
    t = ds.songs["1"].curves["w0"].times
    ds.songs["1"].curves["flat"] = Curve(t, np.full(len(t), 0.9), np.full(len(t), -0.9))  # a lazy rater
    assert plots.active_listeners(ds.songs["1"]) == ["w0", "w1", "w2"]
    assert plots.rater_spread(ds.songs["3"]) == 0.0  # one listener
    assert plots.rater_spread(ds.songs["1"]) > plots.rater_spread(ds.songs["2"])  # the flat rater is far away
    assert plots.rater_spread(ds.songs["2"]) > plots.rater_spread(ds.songs["1"], ["w0", "w1", "w2"]) > 0
    assert plots.rater_spread(ds.songs["1"], ["w0", "w1"]) == pytest.approx(0.05)
    assert plots.most_disputed_songs(ds, n=1) == ["2"]  # spread over active listeners only
    assert plots.most_disputed_songs(ds, n=2, min_listeners=10) == ["2", "1"]  # fallback: most listeners
    fig = plots.plot_listener_curves(ds.songs["1"], max_listeners=4)
    assert fig.axes[0].lines[3].get_label() == "listener flat"  # flat curves come last


def test_listener_curves_and_dataset_stats():
    ds = _dataset()
    fig = plots.plot_listener_curves(ds.songs["2"], provenance=PROV)
    ax = fig.axes[0]
    labels = [line.get_label() for line in ax.lines]
    assert labels == ["listener w0", "listener w1", "listener w2", "mean of listeners"]
    np.testing.assert_allclose(ax.lines[1].get_ydata(), ds.songs["2"].curves["w1"].arousal)
    assert "seed: 7" in _texts(fig)
    fig = plots.plot_listener_curves(ds.songs["2"], listeners=["w1"])
    assert len(fig.axes[1].lines) == 2 and "1 of its 3 listeners" in fig._suptitle.get_text()
    fig = plots.plot_dataset_stats(ds, provenance=PROV)
    titles = [a.get_title() for a in fig.axes]
    assert "listeners per song (n=3)" in titles and "rater spread per song (std) (n=2)" in titles


def test_spectrogram_slices_and_shape_error():
    mel = np.random.default_rng(0).normal(size=(8, 51, 16)).astype(np.float32)
    fig = plots.plot_spectrogram_slices(mel, 15 + 0.5 * np.arange(8), n=3, provenance=PROV)
    assert len(fig.axes) == 4 and fig.axes[1].get_title() == "slice 0 (15.0 s)"
    assert fig.axes[0].images[0].get_array().shape == (16, 8 * 51)
    with pytest.raises(ValueError, match="frames, mels"):
        plots.plot_spectrogram_slices(mel[0])


def test_band_masks_and_attention_maps():
    T = 12
    idx = np.arange(T)
    masks = {f"n={n}": (abs(idx[:, None] - idx[None]) <= n).astype(float) for n in (1, 4)}
    fig = plots.plot_band_masks(masks, provenance=PROV)
    assert [a.get_title() for a in fig.axes[:2]] == ["n=1", "n=4"]  # colorbars come after
    eye = np.eye(T) * 0.5 + 0.5 / T
    maps = {"with loss": {"local": eye, "global": np.full((T, T), 1 / T)},
            "without loss": {"local": np.full((T, T), 1 / T), "global": eye}}
    fig = plots.plot_attention_maps(maps, provenance=PROV)
    titles = [a.get_title() for a in fig.axes if a.get_title()]
    assert len(titles) == 4 and f"mean diag {0.5 + 0.5 / T:.3f}" in titles[0]
    with pytest.raises(ValueError, match="square"):
        plots.plot_attention_maps({"m": {"local": np.zeros((3, 4))}})


def test_training_curves():
    hist = {"dsaml": [{"step": 0, "loss": 1.0, "ccc": 0.1}, {"step": 1, "loss": 0.5, "ccc": 0.2}],
            "crnn": pd.DataFrame({"step": [0, 1], "loss": [1.2, 0.9]})}
    fig = plots.plot_training_curves(hist, provenance=PROV)
    assert [a.get_title() for a in fig.axes] == ["loss", "ccc"]
    assert len(fig.axes[0].lines) == 2 and len(fig.axes[1].lines) == 1
    np.testing.assert_allclose(fig.axes[0].lines[0].get_ydata(), [1.0, 0.5])
    with pytest.raises(ValueError, match="no training histories"):
        plots.plot_training_curves({})


def test_predicted_curves():
    t = np.arange(10) * 0.5
    truth = np.zeros((10, 2))
    item = {"title": "song 5", "times": t, "truth": truth,
            "preds": {"personalized": truth + 0.1, "average model": truth - 0.1}}
    fig = plots.plot_predicted_curves([item, item], provenance=PROV)
    assert len(fig.axes) == 4
    assert [line.get_label() for line in fig.axes[1].lines] == ["truth", "personalized", "average model"]
    np.testing.assert_allclose(fig.axes[0].lines[1].get_ydata(), 0.1)
    with pytest.raises(ValueError):
        plots.plot_predicted_curves([])


def test_metric_lines_kshot_and_bars():
    df = pd.DataFrame({"k": [1, 1, 2, 2, 1, 2], "model": ["a"] * 4 + ["b"] * 2,
                       "arousal_ccc": [0.1, 0.3, 0.4, 0.6, 0.0, 0.1], "valence_ccc": [0.0] * 6})
    fig = plots.plot_metric_lines(df, "k", ["arousal_ccc"], hue="model", provenance=PROV)
    np.testing.assert_allclose(fig.axes[0].get_lines()[0].get_ydata(), [0.2, 0.5])  # mean over repeats per k
    fig = plots.plot_kshot_curve(df, provenance=PROV)
    ax = fig.axes[0]
    assert ax.get_title() == "arousal_ccc" and list(ax.get_xticks()) == [1, 2]
    assert [line.get_label() for line in ax.get_lines()] == ["a", "b"]
    np.testing.assert_allclose(ax.get_lines()[0].get_ydata(), [0.2, 0.5])
    with pytest.raises(ValueError, match="not in table"):
        plots.plot_metric_lines(df, "k", ["nope"])
    with pytest.raises(ValueError, match="not in the k-shot table"):
        plots.plot_kshot_curve(df, metrics=("r2",))
    res = pd.DataFrame({"model": ["dsaml", "crnn"], "arousal_ccc": [0.4, 0.2], "valence_ccc": [0.1, -0.1]})
    fig = plots.plot_metric_bars(res, ["arousal_ccc", "valence_ccc"], provenance=PROV, title="Table 1")
    heights = [p.get_height() for p in fig.axes[0].patches]
    assert heights == pytest.approx([0.4, 0.2, 0.1, -0.1])
    with pytest.raises(ValueError, match="not in table"):
        plots.plot_metric_bars(res, ["rmse"])


def test_listener_agreement_table_and_plot():
    ds = _dataset()
    agree = plots.listener_agreement(ds)
    assert len(agree) == 7 and set(agree["song"]) == {"1", "2", "3"}
    one = agree[(agree.song == "3")].iloc[0]
    assert one["arousal_ccc"] == pytest.approx(1.0) and one["arousal_rmse"] == pytest.approx(0.0)
    w1 = agree[(agree.song == "2") & (agree.listener == "w1")].iloc[0]
    assert w1["arousal_rmse"] == pytest.approx(0.4, abs=1e-6) and w1["arousal_pcc"] == pytest.approx(1.0)
    assert len(plots.listener_agreement(ds, ["1"])) == 3
    fig = plots.plot_listener_agreement(agree, provenance=PROV)
    assert fig.axes[2].get_title().startswith("arousal_rmse (mean")
    with pytest.raises(ValueError, match="not in the agreement table"):
        plots.plot_listener_agreement(agree.drop(columns="valence_ccc"))


def test_embedding_map_separates_by_label():
    rng = np.random.default_rng(0)
    emb, lab = {}, {}
    for i in range(12):
        a = -0.8 if i < 6 else 0.8
        emb[str(i)] = np.r_[a * 5, rng.normal(size=7) * 0.1]  # the label drives the first coordinate
        lab[str(i)] = np.array([a, 0.0])
    fig = plots.plot_embedding_map(emb, lab, provenance=PROV)
    pts = fig.axes[0].collections[0].get_offsets()
    assert np.abs(pts[:, 0]).min() > 3  # PC1 recovers the label-driven axis
    assert np.sign(pts[:6, 0]).tolist() == [np.sign(pts[0, 0])] * 6 and np.sign(pts[6, 0]) != np.sign(pts[0, 0])
    assert "12 songs, 8-d" in fig._suptitle.get_text()
    with pytest.raises(ValueError, match="at least two songs"):
        plots.plot_embedding_map({"0": emb["0"]}, lab)


def test_kshot_long_and_paper_results():
    table = pd.DataFrame({"model": ["DSAML", "DSAML"], "k": [1, 2], "arousal_ccc": [0.3, 0.4],
                          "arousal_ccc_no_adaptation": [0.1, 0.1], "valence_ccc": [0.2, 0.25],
                          "valence_ccc_no_adaptation": [0.0, 0.0], "pairs": [10, 8]}).set_index(["model", "k"])
    long = plots.kshot_long(table)
    assert list(long.columns) == ["model", "k", "adaptation", "arousal_ccc", "valence_ccc"]
    assert long["adaptation"].tolist() == ["adapted", "adapted", "no adaptation", "no adaptation"]
    assert long["arousal_ccc"].tolist() == [0.3, 0.4, 0.1, 0.1]
    fig = plots.plot_kshot_curve(long)
    lines = fig.axes[0].get_lines()
    assert [ln.get_label() for ln in lines] == ["DSAML, adapted", "DSAML, no adaptation"]
    assert [ln.get_linestyle() for ln in lines] == ["-", "--"] and lines[0].get_color() == lines[1].get_color()
    with pytest.raises(ValueError, match="not in the k-shot table"):
        plots.kshot_long(table.drop(columns="valence_ccc"))
    t1 = plots.PAPER_RESULTS["table1_deam"]
    assert list(t1.columns) == ["model", *plots.PAPER_COLUMNS]
    assert t1.set_index("model").loc["DSAML", "arousal_ccc"] == 0.39  # the paper's headline number
    assert plots.PAPER_RESULTS["table2"].set_index("model").loc["DAMFF", "valence_rmse"] == 0.39
