"""Listener traits (evaluation.traits) and notebook 08's figures (plots.listener): traits applied as the synthetic
generator applies them and fitted back exactly, the MSE split, the adapter's cache, the tables and figures that the
notebook's widgets show."""

from __future__ import annotations

import json

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
import torch.nn as nn  # noqa: E402

from dsaml_utils.data.synthetic.config import TRUTH_DIR  # noqa: E402
from dsaml_utils.data.types import MEAN  # noqa: E402
from dsaml_utils.evaluation import traits  # noqa: E402
from dsaml_utils.features.songs import SongData  # noqa: E402
from dsaml_utils.meta.listener import adapt_to_listener, support_items  # noqa: E402
from dsaml_utils.meta.maml import MetaConfig  # noqa: E402
from dsaml_utils.metrics import ccc, rmse  # noqa: E402
from dsaml_utils.models.inference import predict_song  # noqa: E402
from dsaml_utils.plots.listener import COLORS, plot_listener_songs, plot_trait_scenario, scores_html  # noqa: E402

K = 4  # input features per step


def toy_curve(n=120, seed=0):
    """A smooth, non-periodic [n, 2] curve on the 2 Hz grid."""
    t = np.arange(n) / 2.0
    g = np.random.default_rng(seed)
    return np.stack([0.5 * np.sin(t / 3.0) + 0.1 * np.sin(t / 1.3 + g.uniform()),
                     0.4 * np.cos(t / 5.0) + 0.1 * np.sin(t / 1.7 + g.uniform())], axis=1)


@pytest.mark.parametrize("true", [
    traits.Traits(offset=(0.2, -0.3), gain=(1.5, 0.6), inverted=(False, True), lag=(1.0, 2.5)),
    traits.Traits(offset=(-0.1, 0.0), gain=(0.7, 1.3), inverted=(True, False), lag=(0.0, 0.5)),
    traits.Traits(),
])
def test_apply_traits_is_the_generator_by_hand_and_fit_traits_recovers_it_exactly(true):
    x = toy_curve()
    by_hand = np.zeros_like(x)
    for d in range(2):
        lag = int(true.lag[d] * 2)
        sign = -1 if true.inverted[d] else 1
        by_hand[lag:, d] = true.offset[d] + true.gain[d] * sign * x[: len(x) - lag, d]
    y = traits.apply_traits(x, true, clip=False)  # the toy leaves [-1, 1] at gain 1.5
    np.testing.assert_allclose(y, by_hand, atol=1e-12)
    fit = traits.fit_traits(x, y)
    np.testing.assert_allclose(fit.offset, true.offset, atol=1e-9)
    np.testing.assert_allclose(fit.gain, true.gain, atol=1e-9)
    assert fit.inverted == true.inverted and fit.lag == true.lag
    np.testing.assert_allclose(np.abs(fit.corr), 1.0, atol=1e-9)


def test_apply_traits_squash_clip_and_bad_input():
    x = toy_curve(40)
    t = traits.Traits(offset=(0.5, 0.0), gain=(3.0, 1.0))
    squashed = traits.apply_traits(x, t, squash=1.2, clip=False)
    np.testing.assert_allclose(squashed[:, 0], np.tanh(1.2 * (0.5 + 3.0 * x[:, 0])) / 1.2)
    assert traits.apply_traits(x, t).max() <= 1.0 and traits.apply_traits(x, t, clip=False).max() > 1.0
    with pytest.raises(ValueError):
        traits.apply_traits(x, traits.Traits(lag=(-0.5, 0.0)))
    with pytest.raises(ValueError):
        traits.apply_traits(x[:, 0], t)
    with pytest.raises(ValueError):
        traits.fit_traits(x, x[:-1])


def test_fit_traits_on_a_flat_reference_is_nan_not_an_error():
    flat = np.zeros((20, 2))
    fit = traits.fit_traits(flat, toy_curve(20))
    assert np.isnan(fit.offset).all() and fit.lag == (0.0, 0.0)


def test_mean_traits_and_traits_table():
    a = traits.Traits(offset=(0.1, 0.2), gain=(1.0, 2.0), inverted=(False, True), lag=(0.5, 1.0), corr=(0.9, -0.8))
    b = traits.Traits(offset=(0.3, 0.0), gain=(2.0, 1.0), inverted=(False, True), lag=(1.5, 0.0), corr=(0.7, -0.6))
    c = traits.Traits(offset=(0.2, 0.1), gain=(1.5, 1.5), inverted=(True, False), lag=(1.0, 0.5), corr=(0.8, 0.1))
    m = traits.mean_traits([a, b, c])
    np.testing.assert_allclose(m.offset, (0.2, 0.1))
    np.testing.assert_allclose(m.gain, (1.5, 1.5))
    np.testing.assert_allclose(m.lag, (1.0, 0.5))
    assert m.inverted == (False, True)
    with pytest.raises(ValueError):
        traits.mean_traits([])
    df = traits.traits_table({"true": traits.Traits(), "fitted": a})
    assert list(df.index) == list(traits.TRAIT_ROWS) and list(df.columns) == ["true", "fitted"]
    assert df.loc["valence inverted", "fitted"] is True and df.loc["valence gain", "fitted"] == 2.0
    assert np.isnan(df.loc["arousal fit r", "true"]) and df.loc["arousal fit r", "fitted"] == 0.9


def test_true_traits_and_curves_read_the_synthetic_truth(tmp_path):
    assert traits.true_traits(tmp_path) == {} and traits.true_curves(tmp_path, {}) == {}
    (tmp_path / TRUTH_DIR).mkdir()
    record = {"listener_id": "AX", "role": "test", "offset": [0.1, -0.2], "gain": [1.2, 0.8], "lag": [0.4, 1.1],
              "tau": [0.5, 0.5], "squash": 1.0, "noise": [0.02, 0.02], "invert_valence": True, "songs": [7]}
    (tmp_path / TRUTH_DIR / "listeners.json").write_text(json.dumps([record]))
    got = traits.true_traits(tmp_path)["AX"]
    assert got == traits.Traits(offset=(0.1, -0.2), gain=(1.2, 0.8), inverted=(False, True), lag=(0.4, 1.1))
    times = 15.0 + 0.5 * np.arange(6)
    values = np.stack([np.linspace(-1, 1, 6), np.linspace(1, -1, 6)], axis=1)
    np.savez(tmp_path / TRUTH_DIR / "truth.npz", **{"7/times": times, "7/truth": values})
    sd = SongData("7", times[1:5], {}, {})
    np.testing.assert_allclose(traits.true_curves(tmp_path, {"7": sd})["7"], values[1:5], atol=1e-6)


def test_error_parts_add_up_to_rmse_squared():
    g = np.random.default_rng(1)
    target = toy_curve(50)
    pred = 0.3 + 1.7 * target + g.normal(0, 0.1, target.shape)
    parts = traits.error_parts(pred, target)
    for d, dim in enumerate(("arousal", "valence")):
        total = parts[f"{dim}_bias2"] + parts[f"{dim}_scale2"] + parts[f"{dim}_shape"]
        np.testing.assert_allclose(total, rmse(pred[:, d], target[:, d]) ** 2, rtol=1e-10)
        np.testing.assert_allclose(parts[f"{dim}_bias"], pred[:, d].mean() - target[:, d].mean())
    shifted = traits.error_parts(target - 0.2, target)  # a pure shift: all of the error is bias
    np.testing.assert_allclose([shifted["valence_bias"], shifted["valence_scale2"], shifted["valence_shape"]],
                               [-0.2, 0.0, 0.0], atol=1e-12)
    flat = traits.error_parts(np.zeros_like(target), target)  # constant prediction: r counts as 0
    np.testing.assert_allclose(flat["arousal_shape"], 0.0)
    with pytest.raises(ValueError):
        traits.error_parts(pred[:, :1], target[:, :1])


def test_scores_frame_and_its_html():
    target = toy_curve(30)
    preds = {"average-listener model": target * 0.5, "personalized (1 song)": target + 0.1}
    df = traits.scores_frame(target, preds)
    assert list(df.index) == list(preds)
    assert df.loc["personalized (1 song)", "valence_rmse"] == pytest.approx(0.1)
    assert df.loc["average-listener model", "arousal_ccc"] == pytest.approx(ccc(target[:, 0] * 0.5, target[:, 0]))
    html = scores_html(df, "caption <b>")
    assert "personalized (1 song)" in html and "0.100" in html and "caption &lt;b&gt;" in html


def test_recovery_table():
    true = {f"L{i}": traits.Traits(offset=(0.1 * i, -0.1 * i), gain=(1 + 0.1 * i, 1.0 + 0.2 * i),
                                   inverted=(False, i == 0), lag=(0.5 * i, 0.25 * i)) for i in range(4)}
    noisy = {k: traits.Traits(offset=(t.offset[0] + 1, t.offset[1]), gain=t.gain, inverted=(False, False),
                              lag=(0.0, t.lag[1])) for k, t in true.items()}
    df = traits.recovery_table(true, {"exact": true, "noisy": noisy})
    np.testing.assert_allclose(df.loc[[i for i in df.index if "r over" in i], "exact"].astype(float), 1.0)
    assert df.loc["valence inverted: share right", "noisy"] == 0.75 and df.loc["listeners", "exact"] == 4
    assert np.isnan(df.loc["arousal lag (s): r over listeners", "noisy"])  # constant fit: no correlation
    two = traits.recovery_table({k: true[k] for k in ("L0", "L1")}, {"exact": true})
    assert np.isnan(two.loc["arousal offset: r over listeners", "exact"]) and two.loc["listeners", "exact"] == 2


# ---- the adapter on a tiny model ---------------------------------------------------------------------


class PerStep(nn.Module):
    """A per-step linear model: frames [B, T, K] -> pred [B, T, 2]."""

    inputs = ("frames",)

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(K, 2)

    def forward(self, batch):
        return {"pred": torch.tanh(self.lin(batch["frames"])), "aux_loss": batch["frames"].new_zeros(())}


LISTENER = "A1"
TRUE = traits.Traits(offset=(0.2, -0.1), gain=(1.3, 0.8), inverted=(False, True), lag=(0.5, 0.0))


@pytest.fixture
def setup():
    torch.manual_seed(0)
    g = np.random.default_rng(0)
    store = {}
    for i, sid in enumerate(("s1", "s2", "s3")):
        T = 40 + 4 * i
        frames = g.normal(0, 1, (T, K)).astype(np.float32)
        mean = (0.5 * np.tanh(frames[:, :2] @ np.array([[0.8, -0.3], [0.2, 0.6]]))).astype(np.float32)
        mine = traits.apply_traits(mean, TRUE).astype(np.float32)
        store[sid] = SongData(sid, 15.0 + 0.5 * np.arange(T), {"frames": frames}, {MEAN: mean, LISTENER: mine})
    model = PerStep()
    meta = MetaConfig(inner_steps=2, inner_lr=0.2)
    adapter = traits.ListenerAdapter(model, store, meta, window=16, hop=8, support_steps=12, seed=0)
    average = {sid: predict_song(model, sd, 16, 8) * 0.9 for sid, sd in store.items()}
    return adapter, store, average


def test_adapter_adapts_as_the_library_and_keeps_it(setup, monkeypatch):
    adapter, store, _ = setup
    windows = support_items(store, ["s1"], LISTENER, 16, 12)
    direct = adapt_to_listener(adapter.model, store, windows, adapter.meta, 16, seed=0)
    cached = adapter.adapt(LISTENER, "s1", LISTENER)
    for k, v in direct.items():
        torch.testing.assert_close(cached[k], v)
    monkeypatch.setattr(traits, "adapt_to_listener", lambda *a, **k: pytest.fail("adapted twice"))
    assert adapter.adapt(LISTENER, "s1", LISTENER) is cached
    p = adapter.predict("s2", LISTENER)
    assert adapter.predict("s2", LISTENER) is p  # kept
    np.testing.assert_allclose(adapter.predict("s2"), predict_song(adapter.model, store["s2"], 16, 8))
    assert not np.allclose(p, adapter.predict("s2"))


def test_listener_scores_predictions_gaps_and_levels(setup):
    adapter, store, average = setup
    adapter.adapt(LISTENER, "s1", LISTENER)
    preds = traits.listener_predictions(adapter, LISTENER, "s2", average)
    assert list(preds) == list(traits.PREDICTIONS) and all(p.shape == (44, 2) for p in preds.values())
    scores = traits.listener_scores(adapter, LISTENER, ["s2", "s3"], average)
    assert len(scores) == 6 and list(scores.prediction[:3]) == list(traits.PREDICTIONS)
    row = scores.iloc[0]
    truth = store["s2"].labels[LISTENER]
    assert row.valence_rmse == pytest.approx(rmse(preds[traits.PREDICTIONS[0]][:, 1], truth[:, 1]))
    np.testing.assert_allclose(row.valence_bias2 + row.valence_scale2 + row.valence_shape, row.valence_rmse ** 2,
                               rtol=1e-5)
    other_key = traits.listener_scores(adapter, LISTENER, ["s2"], average, key=None)
    assert other_key.iloc[0].valence_rmse == pytest.approx(row.valence_rmse)
    gaps = traits.personalization_gaps(adapter, {LISTENER: ["s1", "s2", "s3"]}, average)
    means = scores.groupby("prediction")["valence_rmse"].mean()
    assert gaps.loc[LISTENER, "valence_rmse"] == pytest.approx(
        means["personalized (1 song)"] - means["average-listener model"])
    levels = traits.mean_levels(adapter, LISTENER, "s1", ["s2", "s3"], average, dim=1)
    assert list(levels.index) == ["support excerpt", "their other songs"]
    excerpt = store["s1"].labels[LISTENER][:12, 1]  # support_steps = 12
    assert levels.loc["support excerpt", "listener"] == pytest.approx(float(excerpt.mean()))
    pooled = np.concatenate([store[s].labels[LISTENER][:, 1] for s in ("s2", "s3")]).mean()
    assert levels.loc["their other songs", "listener"] == pytest.approx(float(pooled))


def test_recovered_traits_find_the_listener_in_their_own_curves(setup):
    adapter, store, average = setup
    adapter.adapt(LISTENER, "s1", LISTENER)
    truth = {sid: sd.labels[MEAN] for sid, sd in store.items()}  # the listener was made from MEAN here
    got = traits.recovered_traits(adapter, LISTENER, ["s2", "s3"], average, truth)
    assert list(got) == ["their curves vs true curve", "their curves vs MEAN", "adapted vs not adapted",
                         "adapted vs average model"]
    fit = got["their curves vs MEAN"]
    np.testing.assert_allclose(fit.offset, TRUE.offset, atol=1e-5)
    np.testing.assert_allclose(fit.gain, TRUE.gain, atol=1e-5)
    assert fit.inverted == TRUE.inverted and fit.lag == TRUE.lag
    assert got["their curves vs true curve"] == fit
    assert "their curves vs true curve" not in traits.recovered_traits(adapter, LISTENER, ["s2"], average)


def test_with_listener_and_trait_scenario(setup):
    adapter, store, average = setup
    t = traits.Traits(offset=(0.1, 0.3), gain=(0.5, 1.5))
    copies = traits.with_listener(store, ["s1"], "me", t)
    np.testing.assert_allclose(copies["s1"].labels["me"], traits.apply_traits(store["s1"].labels[MEAN], t), atol=1e-6)
    assert "me" not in store["s1"].labels  # the store itself is unchanged
    scn = traits.trait_scenario(adapter, "s1", "s2", t, average["s2"])
    np.testing.assert_allclose(scn["target"], traits.apply_traits(store["s2"].labels[MEAN], t), atol=1e-6)
    assert list(scn["preds"]) == ["average-listener model", "personalized (1 song)"]
    assert list(scn["scores"].index) == list(scn["preds"])
    assert (traits.TRAIT_LISTENER, t, None, "s1") in adapter.params
    n = len(adapter.params)
    again = traits.trait_scenario(adapter, "s1", "s2", t, average["s2"])  # same setting: looked up
    assert len(adapter.params) == n
    np.testing.assert_array_equal(again["preds"]["personalized (1 song)"], scn["preds"]["personalized (1 song)"])
    traits.trait_scenario(adapter, "s1", "s2", traits.Traits(), average["s2"])
    assert len(adapter.params) == n + 1


# ---- figures -----------------------------------------------------------------------------------------


def _item(n=20, title="song 1"):
    t = 15.0 + 0.5 * np.arange(n)
    truth = toy_curve(n)
    return {"title": title, "times": t, "truth": truth, "truth_label": "listener L",
            "preds": {"personalized (1 song)": truth + 0.1, "average-listener model": truth - 0.1}}


@pytest.mark.parametrize("n_songs", [1, 3])
def test_listener_songs_legend_never_covers_a_panel(n_songs):
    fig = plot_listener_songs([_item(title=f"song {i}") for i in range(n_songs)], title="all songs",
                              provenance={"data": "synthetic"})
    axes = fig.axes
    assert len(axes) == 2 * n_songs and not any(ax.get_legend() for ax in axes)
    (legend,) = fig.legends
    assert [t.get_text() for t in legend.get_texts()] == ["listener L", "personalized (1 song)",
                                                           "average-listener model"]
    fig.canvas.draw()
    box = legend.get_window_extent()
    for ax in axes:
        assert not box.overlaps(ax.get_window_extent()), "the legend overlaps a panel"
    assert axes[1].lines[1].get_color() == COLORS["personalized (1 song)"]
    np.testing.assert_allclose(axes[1].lines[2].get_ydata(), _item()["truth"][:, 1] - 0.1)
    assert fig._dsaml_provenance.startswith("data: synthetic")
    plt.close(fig)
    with pytest.raises(ValueError):
        plot_listener_songs([])


def test_trait_scenario_figure():
    x = toy_curve(20)
    scn = {"times": np.arange(20) * 0.5, "mean": x, "target": x + 0.2,
           "preds": {"average-listener model": x, "personalized (1 song)": x + 0.1}}
    fig = plot_trait_scenario(scn, title="song 2")
    labels = [line.get_label() for line in fig.axes[0].lines]
    assert labels == ["listener with these traits", "song's MEAN curve", "average-listener model",
                      "personalized (1 song)"]
    assert fig.axes[0].lines[1].get_linestyle() == "--"
    np.testing.assert_allclose(fig.axes[1].lines[0].get_ydata(), x[:, 1] + 0.2)
    plt.close(fig)


def test_scores_frame_is_a_dataframe_with_both_metrics():
    df = traits.scores_frame(toy_curve(10), {"a": toy_curve(10)})
    assert isinstance(df, pd.DataFrame)
    assert list(df.columns) == ["arousal_ccc", "arousal_rmse", "valence_ccc", "valence_rmse"]
