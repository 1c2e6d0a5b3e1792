"""Evaluation: sliding-window prediction, held-out listeners, metrics.json and provenance, CLIs."""

import dataclasses
import json
import math
import shutil

import numpy as np
import pytest
import torch
import torch.nn as nn
from test_train import one_thread, tiny_cache, tiny_config, tiny_ds, tiny_root  # noqa: F401 (fixtures)

from dsaml_utils.cli import main as cli_main
from dsaml_utils.data.registry import data_fingerprint
from dsaml_utils.data.synthetic.config import AUDIO_DIR, TRUTH_DIR
from dsaml_utils.data.types import MEAN, Curve, MusicDataset, Song, TaskFilter
from dsaml_utils.errors import DataError, UserError
from dsaml_utils.evaluation.curves import read_curve_csv, write_curve_csv
from dsaml_utils.evaluation.protocols import held_out_listeners
from dsaml_utils.evaluation.report import format_metrics
from dsaml_utils.evaluation.results import (
    DataInfo,
    DMERResult,
    KShot,
    PDMERResult,
    RunMetrics,
    SameSong,
    Scores,
    Stat,
    combine_runs,
    read_metrics,
    write_metrics,
)
from dsaml_utils.evaluation.run import FULL, Scoring, evaluate_run
from dsaml_utils.features.cache import FeatureCache
from dsaml_utils.features.songs import SongData, align_curve
from dsaml_utils.io.provenance import code_version, file_digest
from dsaml_utils.models.inference import predict_song
from dsaml_utils.training.trainer import train


class StepEcho(nn.Module):
    """Predicts, for each step, a function of that step's own input only (any window gives the same value)."""

    inputs = ("mel", "mask")

    def forward(self, batch):
        m = batch["mel"].mean(dim=(2, 3))
        return {"pred": torch.stack([m, 2 * m], -1), "aux_loss": m.new_zeros(())}


def test_predict_song_averages_windows_over_every_step():
    T_ = 23
    mel = np.random.default_rng(0).normal(size=(T_, 3, 2)).astype(np.float32)
    sd = SongData("s", 0.5 * np.arange(T_), {"mel": mel}, {MEAN: np.zeros((T_, 2), np.float32)})
    want = mel.mean(axis=(1, 2))
    for window, hop in ((8, 3), (8, 8), (30, 5), (8, 50)):
        pred = predict_song(StepEcho(), sd, window, hop)
        assert pred.shape == (T_, 2)
        assert np.allclose(pred[:, 0], want, atol=1e-6) and np.allclose(pred[:, 1], 2 * want, atol=1e-6)


def test_held_out_listeners_are_unseen_and_not_flat():
    t = 0.5 * np.arange(12)
    wave = np.sin(t)

    def song(sid, raters):
        curves = {MEAN: Curve(t, wave, wave)}
        curves.update({r: Curve(t, wave * (0 if r == "flat" else 1), wave * (0 if r == "flat" else 1))
                       for r in raters})
        return Song(sid, None, curves)

    songs = {"1": song("1", ["seen"]), "2": song("2", ["seen", "new", "flat"]), "3": song("3", ["new"])}
    ds = MusicDataset("x", ".", songs, ["1"], ["2", "3"], (-1, 1))
    store = {s: SongData(s, t, {}, {k: align_curve(c, t) for k, c in songs[s].curves.items()})
             for s in songs}
    cfg = tiny_config(".", ".")
    cfg.tasks = TaskFilter(min_songs=1, flat_threshold=0.01, flat_window=60)
    got, notes = held_out_listeners(ds, store, ["1"], ["2", "3"], cfg)
    assert got == {"new": ["2", "3"]} and notes == []
    ds.songs["1"] = song("1", ["seen", "new"])  # now nobody on the test songs is unseen
    got, notes = held_out_listeners(ds, store, ["1"], ["2", "3"], cfg)
    assert got == {"new": ["2", "3"], "seen": ["2"]} and "seen in training" in notes[0]


def test_read_curve_csv_and_its_errors(tmp_path):
    p = tmp_path / "c.csv"
    p.write_text("time,arousal,valence\n15.0,0.1,-0.2\n15.5,0.2,-0.1\n16.0,0.3,0.0\n")
    c = read_curve_csv(p)
    assert c.times.tolist() == [15.0, 15.5, 16.0] and c.valence.tolist() == pytest.approx([-0.2, -0.1, 0.0])
    write_curve_csv(tmp_path / "d.csv", c.times, c.values())
    assert np.allclose(read_curve_csv(tmp_path / "d.csv").values(), c.values(), atol=1e-4)
    cases = {"time,arousal\n0,1\n": "header", "time,arousal,valence\n0,1,x\n": "line 2",
             "time,arousal,valence\n0,1,1\n1.0,1,1\n": "0.5 s", "": "empty", "time,arousal,valence\n": "no curve"}
    for text, msg in cases.items():
        p.write_text(text)
        with pytest.raises(DataError, match=msg) as err:
            read_curve_csv(p)
        assert "c.csv" in str(err.value)
    with pytest.raises(DataError, match="not found"):
        read_curve_csv(tmp_path / "missing.csv")


def test_data_fingerprint_follows_the_annotations(tmp_path, tiny_root):
    root = tmp_path / "copy"
    shutil.copytree(tiny_root / "DEAM_Annotations", root / "DEAM_Annotations")
    ds = MusicDataset("synthetic", root, {}, ["2", "3"], ["2001"], (-1, 1))
    a = data_fingerprint(ds)
    assert a == data_fingerprint(ds) and len(a) == 64
    f = next((root / "DEAM_Annotations").rglob("arousal.csv"))
    f.write_text(f.read_text() + "\n")
    b = data_fingerprint(ds)
    assert b != a
    ds.test_ids = ["2002"]
    c = data_fingerprint(ds)
    assert c != b
    # the audio counts too: same labels, other sound, other data
    audio = root / "song.mp3"
    shutil.copy(next(tiny_root.rglob("*.mp3")), audio)
    ds.songs = {"2001": Song("2001", audio)}
    d = data_fingerprint(ds)
    assert d != c
    audio.write_bytes(audio.read_bytes()[:-100])
    assert data_fingerprint(ds) != d
    assert code_version()


@pytest.fixture(scope="module")
def tiny_run(tiny_ds, tiny_root, tiny_cache, tmp_path_factory):  # noqa: F811
    run = tmp_path_factory.mktemp("evalrun") / "pdmer"
    cfg = tiny_config(tiny_root, tiny_cache, mode="pdmer", extra=["eval.draws=2"])
    train(cfg, run, ds=tiny_ds, cache=FeatureCache(tiny_cache), progress=False)
    return run


def test_metrics_json_keys_and_provenance(tiny_run, tiny_root, tiny_ds, tmp_path):  # noqa: F811
    m = evaluate_run(tiny_run, ds=tiny_ds, progress=False)
    on_disk = json.loads((tiny_run / "metrics.json").read_text())
    for key in ("run", "seed", "config", "data", "code_version", "model_digest", "train", "dmer", "pdmer",
                "headline", "created"):
        assert key in on_disk, key
    assert on_disk["seed"] == 0 and on_disk["config"]["mode"] == "pdmer"
    assert on_disk["data"]["fingerprint"] == data_fingerprint(tiny_ds)
    assert on_disk["model_digest"] == file_digest(tiny_run / "model.pt")
    # the record is what the file holds: written and read back, it is equal
    assert isinstance(m, RunMetrics) and read_metrics(tiny_run / "metrics.json") == m
    assert on_disk == m.to_dict() and on_disk["headline"] == m.headline()
    # DMER: every test song, all five metrics per dimension with a 95% interval
    assert [r["song_id"] for r in m.dmer.scores.rows] == tiny_ds.test_ids
    s = m.dmer.scores.summary["arousal_ccc"]
    assert s.lo <= s.mean <= s.hi and s.n == 2
    assert {f"{d}_{k}" for d in ("arousal", "valence") for k in ("ccc", "pcc", "rmse", "kendall_tau", "r2")} \
        == set(m.summary("dmer"))
    # PDMER: exactly the synthetic test listeners; k = 4 impossible with 2 songs each
    truth = json.loads((tiny_root / TRUTH_DIR / "listeners.json").read_text())
    rows = truth if isinstance(truth, list) else truth.get("listeners", truth)
    test_ids = {r["listener_id"] for r in rows if r.get("role") == "test"}
    k1 = m.pdmer.kshot[1]
    assert {p["listener"] for p in k1.adapted.rows} == test_ids
    assert m.pdmer.kshot[4].skipped and m.pdmer.kshot[4].adapted is None and m.pairs(4) == 0
    for a, b in zip(k1.adapted.rows, k1.no_adaptation.rows):
        assert (a["listener"], a["song_id"]) == (b["listener"], b["song_id"])
        assert a["song_id"] not in a["support"]
    assert k1.pairs == m.pairs(1) == 2 * 2 * 1  # 2 listeners x 2 draws x 1 query song
    adapted = [p["arousal_rmse"] for p in k1.adapted.rows]
    plain = [p["arousal_rmse"] for p in k1.no_adaptation.rows]
    assert adapted != plain  # adaptation changed the predictions
    assert m.headline()["pdmer"]["arousal_ccc"] == k1.adapted.summary["arousal_ccc"].mean
    assert m.summary("pdmer_no_adaptation", 1) is k1.no_adaptation.summary and m.summary("pdmer", 2) is None
    # the authors' protocol: adapt on the first 8 steps of each listener-song pair, score the rest of that song
    same = m.pdmer.same_song
    assert same.pairs == 4 and same.support_steps == 8
    for p in same.adapted.rows:
        song = tiny_ds.songs[p["song_id"]]
        assert p["scored_steps"] == len(song.curves[p["listener"]]) - 8
    assert set(m.headline()) == {"dmer", "pdmer", "pdmer_no_adaptation", "pdmer_same_song",
                                 "pdmer_same_song_no_adaptation"}
    # reuse returns the stored file (not rewritten); a changed model.pt forces recomputation
    written = (tiny_run / "metrics.json").stat().st_mtime_ns
    assert evaluate_run(tiny_run, ds=tiny_ds, progress=False, reuse=True) == m
    assert (tiny_run / "metrics.json").stat().st_mtime_ns == written
    copy = tmp_path / "copy"
    shutil.copytree(tiny_run, copy)
    state = torch.load(copy / "model.pt", weights_only=True)
    state["model"] = {k: v + 0.01 if v.is_floating_point() else v for k, v in state["model"].items()}
    torch.save(state, copy / "model.pt")
    again = evaluate_run(copy, ds=tiny_ds, progress=False, reuse=True)
    assert again.model_digest != on_disk["model_digest"] and again.run == str(copy)
    # a damaged metrics.json is recomputed under reuse, not trusted and not fatal
    (copy / "metrics.json").write_text('{"run": ')
    fresh = evaluate_run(copy, ds=tiny_ds, progress=False, reuse=True)
    assert read_metrics(copy / "metrics.json") == fresh and fresh.model_digest == again.model_digest


def test_scoring_narrows_pdmer_and_reuse_covers_it(tiny_run, tiny_ds, tmp_path):  # noqa: F811
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    (run / "metrics.json").unlink(missing_ok=True)
    one = evaluate_run(run, ds=tiny_ds, progress=False, reuse=True, scoring=Scoring((1,), False))
    assert set(one.pdmer.kshot) == {1} and one.pdmer.same_song is None
    assert one.pdmer.kshot[1].pairs == 4 and any("not k = 4, the same-song protocol" in n for n in one.pdmer.notes)
    assert one.config["eval"]["kshots"] == [1, 4]  # the record keeps the run's own config
    dmer_only = evaluate_run(run, ds=tiny_ds, progress=False, scoring=Scoring((), False), write=False)
    assert dmer_only.pdmer.kshot == {} and dmer_only.dmer == one.dmer
    written = (run / "metrics.json").stat().st_mtime_ns
    # a file that covers what is asked is reused; one that does not is recomputed for both
    assert evaluate_run(run, ds=tiny_ds, progress=False, reuse=True, scoring=Scoring((), False)) == one
    assert (run / "metrics.json").stat().st_mtime_ns == written
    both = evaluate_run(run, ds=tiny_ds, progress=False, reuse=True, scoring=Scoring(None, True))
    assert set(both.pdmer.kshot) == {1, 4} and both.pdmer.same_song is not None
    assert not any("scored for what its tables show" in n for n in both.pdmer.notes)
    assert both.pdmer.kshot[1] == one.pdmer.kshot[1]  # the same seeded draws: k = 1 scores do not change
    assert evaluate_run(run, ds=tiny_ds, progress=False, reuse=True, scoring=Scoring((1,), False)) == both
    assert Scoring((1,), False).union(Scoring((4,), True)) == Scoring((1, 4), True)
    assert Scoring((1,), False).union(FULL) == FULL


def fake_metrics(dmer: dict[str, float], kshot: dict[int, tuple[dict, dict]] | None = None,
                 same: tuple[dict, dict] | None = None, train_seconds: float = 10.0, seed: int = 0) -> RunMetrics:
    """A RunMetrics whose summaries have the given means ({metric: mean}; intervals NaN, as from one value)."""

    def scores(means):
        return Scores({k: Stat(v, math.nan, math.nan, 1) for k, v in means.items()}, [])

    ks = {k: KShot(k, 1, 3, scores(a), scores(b)) for k, (a, b) in (kshot or {}).items()}
    return RunMetrics(
        run=f"runs/fake/seed{seed}", seed=seed, preset="quick", mode="pdmer", strategy="personalized", model="dsaml",
        config={}, data=DataInfo("synthetic", "data/synthetic", "f" * 64, 8, 2, 2), code_version="abc",
        model_digest="d" * 64, created="2026-01-01T00:00:00+00:00", train={"train_wall_seconds": train_seconds},
        dmer=DMERResult(scores(dmer)),
        pdmer=PDMERResult(1, {"L": 2}, [], ks, SameSong(1, 8, scores(same[0]), scores(same[1])) if same else None),
        eval_wall_seconds=1.0)


def test_combine_runs_gives_mean_and_std():
    def fake(v):
        s = {"arousal_ccc": v, "valence_ccc": -v}
        return fake_metrics(s, {1: (s, s)})
    out = combine_runs([fake(0.1), fake(0.3)])
    assert out["dmer"]["arousal_ccc"].mean == pytest.approx(0.2)
    assert out["pdmer"]["valence_ccc"].std == pytest.approx(np.std([0.1, 0.3], ddof=1))
    assert out["pdmer_no_adaptation"]["arousal_ccc"].n == 2 and "pdmer_same_song" not in out
    assert "±" in format_metrics([fake(0.1), fake(0.3)])
    assert "[nan, nan]" in format_metrics(fake(0.1))  # one value: no interval


def test_metrics_round_trip_keeps_nan_as_null(tmp_path):
    m = fake_metrics({"arousal_ccc": 0.5, "valence_rmse": 0.25}, {1: ({"arousal_ccc": 0.1}, {"arousal_ccc": 0.0}),
                                                                  4: ({"arousal_ccc": 0.2}, {"arousal_ccc": 0.1})},
                     same=({"arousal_ccc": 0.3}, {"arousal_ccc": 0.2}), train_seconds=math.nan)
    m = dataclasses.replace(m, pdmer=dataclasses.replace(m.pdmer, kshot={**m.pdmer.kshot, 8: KShot(8, skipped="few")}))
    path = tmp_path / "metrics.json"
    write_metrics(path, m)
    text = path.read_text()
    assert "NaN" not in text and "null" in text
    on_disk = json.loads(text, parse_constant=lambda c: pytest.fail(f"{c} in metrics.json"))
    assert on_disk["dmer"]["summary"]["arousal_ccc"] == {"mean": 0.5, "lo": None, "hi": None, "n": 1}
    assert on_disk["train"]["train_wall_seconds"] is None and list(on_disk["pdmer"]["kshot"]) == ["1", "4", "8"]
    back = read_metrics(path)
    assert math.isnan(back.dmer.scores.summary["arousal_ccc"].lo) and math.isnan(back.train_seconds)
    assert back.headline() == m.headline() and back.pdmer.kshot[8] == KShot(8, skipped="few")
    # NaN reads back as NaN: equal records, except the free-form train summary, which keeps JSON's null
    assert back == dataclasses.replace(m, train={"train_wall_seconds": None})
    write_metrics(tmp_path / "again.json", back)
    assert (tmp_path / "again.json").read_text() == text


OLD_METRICS_JSON = """{
 "run": "runs/exp/dsaml-pdmer-personalized/seed0", "seed": 0, "preset": "quick", "mode": "pdmer",
 "strategy": "personalized", "model": "dsaml",
 "config": {"dataset": "synthetic", "mode": "pdmer", "eval": {"kshots": [1, 4]}, "init": null,
            "deviations": ["train.steps: 2000 -> 4: fewer updates"]},
 "data": {"dataset": "synthetic", "root": "data/synthetic", "fingerprint": "2499521594", "train_songs": 10,
          "test_songs": 2, "test_songs_scored": 2},
 "code_version": "c0dea04", "model_digest": "6bf66c906b", "created": "2026-12-01T20:53:19+00:00",
 "train": {"complete": true, "steps": 4, "best_val_score": null, "train_wall_seconds": 0.69},
 "dmer": {"summary": {"arousal_ccc": {"mean": 0.0132, "lo": -0.1576, "hi": 0.1841, "n": 2},
                      "valence_rmse": {"mean": 0.4138, "lo": -0.5225, "hi": 1.3501, "n": 2}},
          "per_song": [{"song_id": "2001", "steps": 24, "arousal_ccc": -0.0002, "valence_rmse": 0.4875},
                       {"song_id": "2002", "steps": 25, "arousal_ccc": 0.0267, "valence_rmse": 0.3401}]},
 "pdmer": {"listeners": 2, "songs_per_listener": {"AA2D": 2, "AXDF": 2}, "notes": [],
  "kshot": {
   "1": {"listeners": 2, "pairs": 2,
         "adapted": {"summary": {"arousal_ccc": {"mean": 0.0076, "lo": -0.0868, "hi": 0.1020, "n": 2}},
                     "per_pair": [{"listener": "AA2D", "song_id": "2002", "draw": 0, "support": ["2001"],
                                   "arousal_ccc": 0.0150},
                                  {"listener": "AXDF", "song_id": "2001", "draw": 0, "support": ["2002"],
                                   "arousal_ccc": 0.0002}]},
         "no_adaptation": {"summary": {"arousal_ccc": {"mean": 0.0071, "lo": -0.0807, "hi": 0.0948, "n": 2}},
                           "per_pair": [{"listener": "AA2D", "song_id": "2002", "draw": 0, "support": ["2001"],
                                         "arousal_ccc": 0.0139},
                                        {"listener": "AXDF", "song_id": "2001", "draw": 0, "support": ["2002"],
                                         "arousal_ccc": 0.0003}]}},
   "4": {"skipped": "no held-out listener has more than 4 song(s)"}},
  "same_song": {"pairs": 1, "support_steps": 8,
   "adapted": {"summary": {"arousal_ccc": {"mean": -0.0001, "lo": null, "hi": null, "n": 1}},
               "per_pair": [{"listener": "AA2D", "song_id": "2001", "scored_steps": 16, "arousal_ccc": -0.0001}]},
   "no_adaptation": {"summary": {"arousal_ccc": {"mean": -0.0002, "lo": null, "hi": null, "n": 1}},
                     "per_pair": [{"listener": "AA2D", "song_id": "2001", "scored_steps": 16,
                                   "arousal_ccc": -0.0002}]}}},
 "headline": {"dmer": {"arousal_ccc": 0.0132, "valence_rmse": 0.4138}, "pdmer": {"arousal_ccc": 0.0076},
              "pdmer_no_adaptation": {"arousal_ccc": 0.0071}, "pdmer_same_song": {"arousal_ccc": -0.0001},
              "pdmer_same_song_no_adaptation": {"arousal_ccc": -0.0002}},
 "eval_wall_seconds": 0.37
}
"""
"""A metrics.json as the dict-based code before the records wrote it (one run of the tiny synthetic data,
trimmed to two metrics and fewer pairs; an interval from one pair is null)."""


def test_metrics_json_of_the_dict_based_code_still_reads(tmp_path):
    path = tmp_path / "metrics.json"
    path.write_text(OLD_METRICS_JSON)
    old = json.loads(OLD_METRICS_JSON)
    m = read_metrics(path)
    assert m.headline() == old["headline"] and m.run == old["run"] and m.data.fingerprint == "2499521594"
    assert m.pdmer.kshot[4].skipped.startswith("no held-out") and m.pairs(1) == 2
    assert math.isnan(m.summary("pdmer_same_song")["arousal_ccc"].hi) and m.train_seconds == 0.69
    assert m.dmer.scores.rows[1] == {"song_id": "2002", "steps": 25, "arousal_ccc": 0.0267, "valence_rmse": 0.3401}
    # written again, it is the same file: the layout did not change
    write_metrics(tmp_path / "again.json", m)
    again = json.loads((tmp_path / "again.json").read_text())
    assert again == old and list(again) == list(old)
    assert "PDMER same song, adapted" in format_metrics(m)


def test_read_metrics_names_the_file_and_the_problem(tmp_path):
    path = tmp_path / "metrics.json"
    with pytest.raises(UserError, match="metrics.json: not found"):
        read_metrics(path)
    cases = {'{"run": "x", ': "not JSON", "\xff\xfe": "not JSON", "[1, 2]": "not a JSON object"}
    old = json.loads(OLD_METRICS_JSON)
    del old["pdmer"]["kshot"]["1"]["adapted"]["summary"]["arousal_ccc"]["n"]
    cases[json.dumps(old)] = "no field pdmer.kshot.1.adapted.summary.arousal_ccc.n"
    old = json.loads(OLD_METRICS_JSON)
    old["seed"] = "zero"
    cases[json.dumps(old)] = "field seed is str, not an integer"
    old = json.loads(OLD_METRICS_JSON)
    del old["data"]
    cases[json.dumps(old)] = "no field data"
    for text, msg in cases.items():
        path.write_bytes(text.encode("latin-1"))
        with pytest.raises(UserError, match=msg) as err:
            read_metrics(path)
        assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_evaluate_cli_json(tiny_run, capsys):
    assert cli_main(["evaluate", "--run", str(tiny_run), "--json", "--reuse"]) == 0
    out = json.loads(capsys.readouterr().out)
    on_disk = json.loads((tiny_run / "metrics.json").read_text())
    assert out == {k: v for k, v in on_disk.items() if k != "config"}
    assert cli_main(["evaluate", "--run", str(tiny_run), str(tiny_run), "--reuse"]) == 0
    assert "mean ± std over 2 run(s)" in capsys.readouterr().out
    assert cli_main(["evaluate", "--run", str(tiny_run), str(tiny_run), "--reuse", "--json"]) == 0
    both = json.loads(capsys.readouterr().out)
    assert both["runs"] == [str(tiny_run)] * 2
    assert both["combined"]["dmer"]["arousal_ccc"] == {"mean": on_disk["headline"]["dmer"]["arousal_ccc"],
                                                       "std": 0.0, "n": 2}
    assert cli_main(["evaluate", "--run", str(tiny_run.parent / "nothing")]) == 2


def test_personalize_cli_writes_state_csv_and_png(tiny_run, tiny_root, tiny_ds, tmp_path, capsys):  # noqa: F811
    song = tiny_ds.songs[tiny_ds.test_ids[0]]
    lst = song.listeners[0]
    curve = tmp_path / "mine.csv"
    write_curve_csv(curve, song.curves[lst].times, song.curves[lst].values())
    audio = tiny_root / AUDIO_DIR / f"{song.song_id}.mp3"
    other = tiny_root / AUDIO_DIR / f"{tiny_ds.test_ids[1]}.mp3"
    out = tmp_path / "me"
    assert cli_main(["personalize", "--run", str(tiny_run), "--support", str(audio), str(curve),
                     "--predict", str(other), "--out", str(out), "--quiet"]) == 0
    assert "personal.pt" in capsys.readouterr().out
    pred = read_curve_csv(out / f"{other.stem}.csv")
    last = tiny_ds.songs[other.stem].curves[MEAN].times[-1]  # the song's last 0.5 s slice
    assert pred.times[0] == 0.0 and pred.times[-1] == last and len(pred) == int(last / 0.5) + 1
    assert (out / f"{other.stem}.png").read_bytes()[:4] == b"\x89PNG"
    state = torch.load(out / "personal.pt", weights_only=True)
    assert state["delta"] and all(float(v.abs().max()) > 0 for v in state["delta"].values())
    # the saved personal state alone reproduces the same predictions
    again = tmp_path / "again"
    assert cli_main(["personalize", "--run", str(tiny_run), "--personal", str(out / "personal.pt"),
                     "--predict", str(other), "--out", str(again), "--quiet"]) == 0
    assert (again / f"{other.stem}.csv").read_text() == (out / f"{other.stem}.csv").read_text()
    bad = tmp_path / "bad.csv"
    bad.write_text("t,a,v\n0,0,0\n")
    assert cli_main(["personalize", "--run", str(tiny_run), "--support", str(audio), str(bad),
                     "--predict", str(other), "--out", str(tmp_path / "x"), "--quiet"]) == 2
    assert "bad.csv" in capsys.readouterr().err
