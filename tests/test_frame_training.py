"""Models on frame features end to end (issue 10, points 3, 5 and 6): `dsaml synth`, `dsaml features`, `dsaml train`
and `dsaml evaluate` on the synthetic dataset and on a PMEmo-layout root, normalisation from the training songs
only (travelling with the run), DMER and MAML, and the permutation importance of evaluation.importance."""

from __future__ import annotations

import contextlib
import io
import json
import shutil

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn as nn
from fixtures import one_thread, write_pmemo_fixture  # noqa: F401 (one_thread: autouse fixture)

from dsaml_utils import cli
from dsaml_utils.data.frames import SongFrames, load_frame_features
from dsaml_utils.data.registry import load_dataset
from dsaml_utils.data.types import Curve, MusicDataset, Song
from dsaml_utils.errors import RunConflict, UserError
from dsaml_utils.evaluation.importance import descriptor, descriptor_groups, permutation_importance, permuted
from dsaml_utils.evaluation.run import evaluate_run
from dsaml_utils.experiments.specs import EXPERIMENTS, FRAME_FAMILY
from dsaml_utils.features.frame_files import ensure_features, has_features
from dsaml_utils.features.frame_inputs import FrameNorm, audio_frames
from dsaml_utils.features.songs import SongData
from dsaml_utils.plots import plot_importance
from dsaml_utils.training.config import apply_overrides, preset
from dsaml_utils.training.runs import load_run_model
from dsaml_utils.training.sampling import split_validation
from dsaml_utils.training.store import build_store
from dsaml_utils.training.trainer import Trainer, train

SYNTH = ["--songs", "8", "--anonymous-songs", "0", "--full-songs", "2", "--listeners", "3", "--test-listeners", "2",
         "--lazy-listeners", "0", "--raters-per-song", "2", "--raters-per-full-song", "2", "--clip-seconds", "16",
         "--full-seconds", "18", "20", "--sample-rate", "8000", "--workers", "2", "--no-features"]
OVERRIDES = ["train.window=12", "train.batch_size=4", "eval.hop=6", "train.eval_every=2", "eval.support_steps=8",
             "tasks.min_songs=2", "meta.tasks_per_step=2", "meta.inner_steps=1", "meta.query_songs=2",
             "eval.kshots=[1]"]
"""Tiny-run settings of every test here: through `--set` on the command line (RUN) or `config`."""
RUN = ["--steps", "4", "--quiet", *(x for o in OVERRIDES for x in ("--set", o))]


def run_cli(argv: list[str]) -> tuple[int, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = cli.main(argv)
    return rc, out.getvalue() + err.getvalue()



@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    """`dsaml synth --no-features`, then `dsaml features`: the synthetic dataset with its frame features."""
    root = tmp_path_factory.mktemp("framesynth") / "ds"
    rc, out = run_cli(["synth", "--out", str(root)] + SYNTH)
    assert rc == 0, out
    rc, out = run_cli(["features", "--dataset", "synthetic", "--root", str(root)])
    assert rc == 0 and "wrote 10 feature files" in out, out
    return root


def shift_first_feature(path) -> None:
    """Move the first feature of every row of a DEAM-layout feature file by 1000."""
    lines = path.read_text().splitlines()
    rows = [c.split(";") for c in lines[1:]]
    rows = [[c[0], str(float(c[1]) + 1000.0), *c[2:]] for c in rows]
    path.write_text("\n".join([lines[0], *(";".join(c) for c in rows)]) + "\n")


def config(root, cache, model="cnn_bilstm", mode="dmer", extra=()):
    cfg = preset("quick", root=str(root), cache_dir=str(cache))
    cfg.mode, cfg.model, cfg.strategy = mode, model, None
    return apply_overrides(cfg, ["train.steps=4", "train.checkpoint_every=2", *OVERRIDES, *extra])


def test_cli_synth_features_train_evaluate_on_synthetic(synth, tmp_path):
    run = tmp_path / "run"
    rc, out = run_cli(["train", "--dataset", "synthetic", "--root", str(synth), "--model", "cnn_bilstm",
                       "--mode", "dmer", "--out", str(run), "--cache", str(tmp_path / "cache")] + RUN)
    assert rc == 0, out
    rc, out = run_cli(["evaluate", "--run", str(run)])
    assert rc == 0 and "DMER (test songs, mean labels)" in out, out
    m = json.loads((run / "metrics.json").read_text())
    assert m["data"]["test_songs_scored"] == 2 and m["model"] == "cnn_bilstm"
    state = torch.load(run / "model.pt", weights_only=True)
    assert len(state["frame_norm"]["names"]) == 260


def test_cli_train_evaluate_on_a_pmemo_layout_root_without_usable_audio(tmp_path):
    fx = write_pmemo_fixture(tmp_path / "pmemo")  # 4 features per step; song 5's audio is corrupt
    run = tmp_path / "run"
    rc, out = run_cli(["train", "--dataset", "pmemo", "--root", str(fx.root), "--model", "bilstm", "--mode", "dmer",
                       "--out", str(run), "--set", "model_config.frames_dim=4", "--set", "train.val_fraction=0.25"]
                      + RUN)
    assert rc == 0, out
    summary = json.loads((run / "train_summary.json").read_text())
    assert summary["fit_songs"] + summary["val_songs"] == len(fx.train_ids)  # song 5 too: its features are fine
    rc, out = run_cli(["evaluate", "--run", str(run)])
    assert rc == 0, out
    m = json.loads((run / "metrics.json").read_text())
    rows = m["dmer"]["per_song"]
    assert sorted(r["song_id"] for r in rows) == sorted(fx.test_ids)
    for key in ("ccc", "pcc", "kendall_tau", "rmse", "r2"):  # seed 004's metrics next to CCC and PCC
        assert all(np.isfinite(r[f"arousal_{key}"]) for r in rows), key
    rc, out = run_cli(["train", "--dataset", "pmemo", "--root", str(fx.root), "--model", "bilstm", "--mode", "dmer",
                       "--out", str(tmp_path / "run2")] + RUN)
    assert rc != 0 and "4 features per step but the model reads 260" in out and "model_config.frames_dim=4" in out


def test_normalisation_comes_from_the_training_songs_and_travels_with_the_run(synth, tmp_path):
    cfg = config(synth, tmp_path / "cache")
    train(cfg, tmp_path / "run", progress=False)
    ds = load_dataset("synthetic", synth)
    train_ids = [s for s in ds.train_ids if s not in set(ds.test_ids)]
    fit, _ = split_validation(train_ids, cfg.train.val_fraction, cfg.train.seed)
    raw = load_frame_features(ds, progress=False)
    x = np.concatenate([raw[s].values for s in fit]).astype(np.float64)
    _, model = load_run_model(tmp_path / "run")
    norm = model.frame_norm
    assert norm.songs == len(fit) and norm.steps == len(x)
    np.testing.assert_allclose(norm.mean, x.mean(0))
    with_test = np.concatenate([raw[s].values for s in fit + list(ds.test_ids)]).mean(0)
    assert not np.allclose(norm.mean, with_test)  # the test songs would have moved it
    # evaluation z-scores the test songs with the run's statistics, not their own
    test = build_store(ds, list(ds.test_ids), cfg, model, progress=False)
    sid = ds.test_ids[0]
    np.testing.assert_allclose(test[sid].inputs["frames"], (raw[sid].values - norm.mean) / norm.std, rtol=1e-5,
                               atol=1e-5)


def test_finished_run_on_changed_feature_files_is_refused(synth, tmp_path):
    root = tmp_path / "copy"
    shutil.copytree(synth, root)
    cfg = config(root, tmp_path / "cache")
    train(cfg, tmp_path / "run", progress=False)
    first = evaluate_run(tmp_path / "run", progress=False)
    assert evaluate_run(tmp_path / "run", progress=False, reuse=True).created == first.created  # reused
    path = root / "features" / f"{load_dataset('synthetic', root).test_ids[0]}.csv"
    shift_first_feature(path)  # a test song's features change
    again = evaluate_run(tmp_path / "run", progress=False, reuse=True)
    assert again.data.fingerprint != first.data.fingerprint  # recomputed, not the stale file
    with pytest.raises(RunConflict, match="was trained on other data"):
        train(cfg, tmp_path / "run", progress=False)


def test_resuming_on_changed_feature_files_is_refused(synth, tmp_path):
    root = tmp_path / "copy"
    shutil.copytree(synth, root)
    cfg = config(root, tmp_path / "cache")
    Trainer(cfg, tmp_path / "run", progress=False).run(max_steps_this_call=2)
    for path in (root / "features").glob("*.csv"):
        shift_first_feature(path)
    with pytest.raises(RunConflict, match="was trained on other data"):  # the feature files are in its fingerprint
        Trainer(cfg, tmp_path / "run", progress=False).run()


def test_maml_on_frames_and_dsaml_frames_train_and_evaluate(synth, tmp_path):
    for model, extra in (("se_cnn_bilstm", ()), ("dsaml", ('model_config.frontend="frames"', "encoder=none"))):
        cfg = config(synth, tmp_path / "cache", model=model, mode="pdmer", extra=extra)
        train(cfg, tmp_path / model, progress=False)
        m = evaluate_run(tmp_path / model, progress=False)
        assert m.dmer.scores.rows and m.pairs(1) > 0, model


def test_frame_norm_fit_apply_and_round_trip():
    a = SongFrames("a", np.arange(3.0), np.array([[1, 5, 2], [3, 5, 2], [5, 5, 2]], np.float32), ["x", "y", "z"])
    b = SongFrames("b", np.arange(1.0), np.array([[7, 5, 2]], np.float32), ["x", "y", "z"])
    norm = FrameNorm.fit([a, b])
    np.testing.assert_allclose(norm.mean, [4, 5, 2])
    np.testing.assert_allclose(norm.std, [np.sqrt(5), 1, 1])  # constant columns: centred only
    np.testing.assert_allclose(norm.apply(a.values)[:, 1], 0)
    again = FrameNorm.from_dict(json.loads(json.dumps(norm.to_dict())))
    np.testing.assert_array_equal(again.apply(b.values), norm.apply(b.values))
    with pytest.raises(UserError, match="no training song"):
        FrameNorm.fit([])


def test_descriptor_groups_join_an_llds_four_columns():
    names = ["F0final_sma_stddev", "F0final_sma_amean", "pcm_fftMag_mfcc_sma[3]_stddev", "pcm_fftMag_mfcc_sma[3]_amean",
             "F0final_sma_de_stddev", "F0final_sma_de_amean", "pcm_fftMag_mfcc_sma_de[3]_stddev",
             "pcm_fftMag_mfcc_sma_de[3]_amean", "Loudness_sma3_mean"]
    assert descriptor("pcm_fftMag_mfcc_sma_de[3]_amean") == "pcm_fftMag_mfcc_sma[3]"
    assert descriptor_groups(names) == {"F0final_sma": [0, 1, 4, 5], "pcm_fftMag_mfcc_sma[3]": [2, 3, 6, 7],
                                        "Loudness_sma3": [8]}


class ReadsColumns(nn.Module):
    """A fixed 'model': arousal = frames[..., 0], valence = frames[..., 2]."""

    inputs = ("frames", "mask")

    def forward(self, batch):
        f = batch["frames"]
        return {"pred": torch.stack([f[..., 0], f[..., 2]], dim=-1)}


def test_permutation_importance_finds_the_columns_a_model_reads():
    rng = np.random.default_rng(0)
    store = {}
    for s in ("1", "2", "3"):
        x = rng.standard_normal((30, 4)).astype(np.float32)
        store[s] = SongData(s, 0.5 * np.arange(30), {"frames": x}, {"mean": x[:, [0, 2]].copy()})
    names = ["a_sma_amean", "a_sma_de_amean", "b_sma_amean", "c_sma_amean"]
    shuffled = permuted(store, ["1", "2", "3"], [1], np.random.default_rng(1))
    for s in store:  # only the shuffled column moves, and its values stay the same set
        np.testing.assert_array_equal(np.delete(shuffled[s].inputs["frames"], 1, 1),
                                      np.delete(store[s].inputs["frames"], 1, 1))
    column = {name: np.sort(np.concatenate([st[s].inputs["frames"][:, 1] for s in st]))
              for name, st in (("shuffled", shuffled), ("store", store))}
    np.testing.assert_array_equal(column["shuffled"], column["store"])
    imp = permutation_importance(ReadsColumns(), store, ["1", "2", "3"], names, window=12, hop=6, repeats=2)
    assert imp.attrs["base"] == pytest.approx({"arousal": 1.0, "valence": 1.0})
    assert imp.loc["a_sma", "arousal_drop"] > 0.5 and imp.loc["a_sma", "valence_drop"] == 0
    assert imp.loc["b_sma", "valence_drop"] > 0.5 and imp.loc["b_sma", "arousal_drop"] == 0
    assert imp.loc["c_sma", ["arousal_drop", "valence_drop"]].tolist() == [0, 0]
    assert list(imp.index[:2]) == ["a_sma", "b_sma"] or list(imp.index[:2]) == ["b_sma", "a_sma"]


def test_features_experiment_is_the_seed_003_family_with_seed_004_metrics():
    exp = EXPERIMENTS["features"]
    assert [s.model for s in exp["specs"]] == [*FRAME_FAMILY, "dsaml"]
    assert all(s.mode == "dmer" for s in exp["specs"])
    assert {"kendall_tau", "r2", "ccc", "pcc", "rmse"} == set(exp["metrics"])


def test_ensure_features_computes_only_when_a_root_has_none(synth, tmp_path):
    assert has_features("synthetic", synth) and ensure_features("synthetic", synth, progress=False) is None
    root = tmp_path / "bare"
    shutil.copytree(synth, root, ignore=shutil.ignore_patterns("features"))
    assert not has_features("synthetic", root)
    report = ensure_features("synthetic", root, progress=False)
    assert len(report.written) == 10 and has_features("synthetic", root)
    assert (root / "features" / "2001.csv").read_bytes() == (synth / "features" / "2001.csv").read_bytes()
    assert not has_features("pmemo", root)


def test_plot_importance_shows_the_top_descriptors_per_dimension():
    df = pd.DataFrame({"arousal_drop": [0.3, 0.1, 0.0], "arousal_drop_std": [0.01, 0.02, 0.0],
                       "valence_drop": [0.0, 0.2, 0.05], "valence_drop_std": [0.0, 0.01, 0.01]},
                      index=pd.Index(["a", "b", "c"], name="descriptor"))
    fig = plot_importance(df, top=2, provenance={"data": "x"})
    left, right = fig.axes[:2]
    assert [t.get_text() for t in left.get_yticklabels()] == ["b", "a"]  # largest on top
    assert [t.get_text() for t in right.get_yticklabels()] == ["c", "b"]
    with pytest.raises(ValueError, match="valence_drop"):
        plot_importance(df.drop(columns=["valence_drop"]))


def test_a_listeners_own_audio_gets_its_features_from_the_audio(synth, tmp_path):
    ds = load_dataset("synthetic", synth)
    sid = ds.test_ids[0]
    song = ds.songs[sid]
    times = song.curves["mean"].times
    silent = Curve(times, 0 * times, 0 * times)
    own = MusicDataset("personal", tmp_path, {"x": Song("x", song.audio_path, {"mean": silent})}, [], [], ds.value_range)
    names = load_frame_features(ds, song_ids=[sid], progress=False)[sid].names
    got = audio_frames(own, ["x"], names)["x"]
    np.testing.assert_array_equal(got.times, times)
    np.testing.assert_allclose(got.values, load_frame_features(ds, song_ids=[sid], progress=False)[sid].values,
                               rtol=1e-5, atol=1e-6)  # the file holds the same numbers, printed
    with pytest.raises(UserError, match="IS13 set does not give"):
        audio_frames(own, ["x"], ["a", "b"])


def test_personalize_a_frame_model_from_audio(synth, tmp_path):
    run = tmp_path / "run"
    rc, out = run_cli(["train", "--dataset", "synthetic", "--root", str(synth), "--model", "bilstm", "--mode", "dmer",
                       "--out", str(run), "--cache", str(tmp_path / "cache")] + RUN)
    assert rc == 0, out
    ds = load_dataset("synthetic", synth)
    support, other = ds.songs[ds.train_ids[0]], ds.songs[ds.test_ids[0]]
    curve = tmp_path / "me.csv"
    c = support.curves["mean"]
    curve.write_text("time,arousal,valence\n" + "".join(f"{t:g},{a:.4f},{v:.4f}\n" for t, a, v in
                                                           zip(c.times, c.arousal, c.valence)))
    rc, out = run_cli(["personalize", "--run", str(run), "--support", str(support.audio_path), str(curve),
                       "--predict", str(other.audio_path), "--out", str(tmp_path / "me")])
    assert rc == 0, out
    assert (tmp_path / "me" / "personal.pt").is_file() and list((tmp_path / "me").glob("*.csv"))


def test_evaluate_prints_seed_004s_metrics_when_asked(tmp_path):
    fx = write_pmemo_fixture(tmp_path / "pmemo")
    run = tmp_path / "run"
    rc, out = run_cli(["train", "--dataset", "pmemo", "--root", str(fx.root), "--model", "frame_cnn", "--mode", "dmer",
                       "--out", str(run), "--set", "model_config.frames_dim=4"] + RUN)
    assert rc == 0, out
    rc, out = run_cli(["evaluate", "--run", str(run), "--metrics", "ccc,pcc,kendall_tau,rmse,r2"])
    assert rc == 0, out
    header = next(line for line in out.splitlines() if "arousal_ccc" in line).split()
    assert header == [f"{d}_{m}" for d in ("arousal", "valence") for m in ("ccc", "pcc", "kendall_tau", "rmse", "r2")]
    m = json.loads((run / "metrics.json").read_text())["dmer"]["summary"]
    row = next(line for line in out.splitlines() if line.startswith("DMER"))
    assert f"{m['valence_r2']['mean']:.3f}" in row and f"{m['arousal_kendall_tau']['mean']:.3f}" in row
    rc, out = run_cli(["evaluate", "--run", str(run), "--metrics", "ccc,tau"])
    assert rc != 0 and "--metrics 'ccc,tau'" in out
