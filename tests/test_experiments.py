"""Experiments: specs -> runs per seed (reused), tables with mean ± std and provenance, CLI."""

import json

import numpy as np
import pandas as pd
import pytest
from test_evaluate import fake_metrics
from test_train import TINY_RUN, one_thread, tiny_cache, tiny_config, tiny_ds, tiny_root  # noqa: F401 (fixtures)

from dsaml_utils.cli import main as cli_main
from dsaml_utils.errors import UserError
from dsaml_utils.experiments.runner import run_experiment, run_specs
from dsaml_utils.experiments.specs import EXPERIMENTS, RunSpec
from dsaml_utils.experiments.tables import (
    format_table,
    kshot_table,
    personalization_table,
    results_table,
)


def test_specs_build_distinct_configs(tiny_root, tiny_cache):  # noqa: F811
    base = tiny_config(tiny_root, tiny_cache)
    a = RunSpec("a", "pdmer")
    b = RunSpec("b", "pdmer", overrides={"meta.first_order": False})
    c = RunSpec("c", "dmer", "personalized", model="damff")
    assert len({a.slug(), b.slug(), c.slug()}) == 3 and a.slug() == "dsaml-pdmer-personalized"
    cb = b.config(base, seed=7)
    assert cb.meta.first_order is False and cb.train.seed == 7 and cb.mode == "pdmer"
    assert base.meta.first_order is True and base.train.seed == 0  # the base is not modified
    cc = c.config(base, 0)
    assert (cc.model, cc.strategy, cc.maml) == ("damff", "personalized", False)
    # every table's specs produce valid configs
    for exp in EXPERIMENTS.values():
        for spec in exp["specs"]:
            if spec.overrides.get("model_config.use_adapter") is False:
                continue  # needs a global encoder, which the quick preset has not
            spec.config(base, 0).model_overrides()


def _fake_metrics(v, seed):
    s = {f"{d}_{m}": v + 0.1 * seed * (d == "arousal") for d in ("arousal", "valence") for m in ("ccc", "pcc", "rmse")}
    ks = (s, {k: x - 0.05 for k, x in s.items()})
    return fake_metrics(s, {1: ks, 2: ks}, same=({k: x + 0.1 for k, x in s.items()}, s), seed=seed)


def test_tables_average_over_seeds_and_format():
    results = {"A": [_fake_metrics(0.2, 0), _fake_metrics(0.2, 1)], "B": [_fake_metrics(0.5, 0)]}
    df = results_table(results, "dmer")
    assert df.loc["A", "arousal_ccc"] == pytest.approx(0.25)
    assert df.loc["A", "arousal_ccc_std"] == pytest.approx(np.std([0.2, 0.3], ddof=1))
    assert np.isnan(df.loc["B", "arousal_ccc_std"]) and df.loc["B", "seeds"] == 1
    p = personalization_table(results)
    assert p.loc["A", "valence_ccc_other_no_adaptation"] == pytest.approx(0.15)
    assert p.loc["A", "arousal_ccc_same"] == pytest.approx(0.35) and p.loc["A", "seeds"] == 2
    assert "A CCC (same song, no adapt.)" in format_table(p).columns
    k = kshot_table(results, (1, 2))
    assert list(k.index) == [("A", 1), ("A", 2), ("B", 1), ("B", 2)]
    assert (k["pairs"] == 3).all() and k.loc[("A", 2), "valence_ccc_no_adaptation"] == pytest.approx(0.15)
    assert list(kshot_table(results).index) == list(k.index)  # the k of the first run's metrics
    f = format_table(df)
    assert f.loc["A", "A CCC"] == "0.250 ± 0.071" and f.loc["B", "V RMSE"] == "0.500"
    assert "arousal_ccc_std" not in f.columns and "train s" in f.columns
    with pytest.raises(ValueError):
        results_table(results, "nonsense")


def test_run_experiment_trains_reuses_and_saves(tiny_ds, tiny_root, tiny_cache, tmp_path):  # noqa: F811
    base = tiny_config(tiny_root, tiny_cache, extra=["train.steps=2", "train.eval_every=1"])
    df, results, (md, csv) = run_experiment("personalization", base, [0, 1], tmp_path / "exp",
                                              progress=False, ds=tiny_ds)
    assert list(df.index) == [s.name for s in EXPERIMENTS["personalization"]["specs"]]
    assert (df["seeds"] == 2).all() and np.isfinite(df["arousal_ccc_other_std"]).all()
    for name, runs in results.items():
        assert [m.seed for m in runs] == [0, 1]
        got = np.mean([m.pdmer.kshot[1].adapted.summary["valence_ccc"].mean for m in runs])
        assert df.loc[name, "valence_ccc_other"] == pytest.approx(got)
        got = np.mean([m.pdmer.same_song.no_adaptation.summary["arousal_ccc"].mean for m in runs])
        assert df.loc[name, "arousal_ccc_same_no_adaptation"] == pytest.approx(got)
    text = md.read_text()
    assert "±" in text and "seeds: 0,1" in text and "preset: quick" in text
    assert next(iter(results.values()))[0].data.fingerprint[:12] in text
    assert pd.read_csv(csv).shape[0] == 2
    first = {m.run: m.created for runs in results.values() for m in runs}
    # a second call reuses every run and every metrics.json; a table sharing a run reuses it too
    _, again, _ = run_experiment("personalization", base, [0, 1], tmp_path / "exp", progress=False, ds=tiny_ds)
    assert {m.run: m.created for runs in again.values() for m in runs} == first
    k, kres, _ = run_experiment("kshot", base, [0], tmp_path / "exp", progress=False, ds=tiny_ds)
    assert kres["DSAML"][0].created == results["DSAML (MAML, personalized tasks)"][0].created
    assert set(k.index.get_level_values("k")) == {1, 4}
    # the MAML row started from the no-MAML row's run of the same seed
    for seed in (0, 1):
        maml = json.loads((tmp_path / "exp" / "dsaml-pdmer-personalized-from-dsaml-dmer-traditional" / f"seed{seed}"
                           / "config.json").read_text())
        assert maml["init"] == str(tmp_path / "exp" / "dsaml-dmer-traditional" / f"seed{seed}")
    with pytest.raises(UserError, match="not in this experiment"):
        run_specs([RunSpec("a", init_from="b")], base, [0], tmp_path / "bad", progress=False, ds=tiny_ds)
    with pytest.raises(UserError, match="unknown experiment"):
        run_experiment("table9", base, [0], tmp_path / "exp", progress=False, ds=tiny_ds)


def test_experiment_cli(tiny_root, tiny_cache, tmp_path, capsys):  # noqa: F811
    args = ["experiment", "order", "--seeds", "0", "--root", str(tiny_root), "--dataset", "synthetic",
            "--cache", tiny_cache, "--out", str(tmp_path / "e"), "--steps", "1", "--quiet"]
    args += [a for s in TINY_RUN if not s.startswith("train.steps") for a in ("--set", s)]
    assert cli_main(args) == 0
    out = capsys.readouterr().out
    assert "first order" in out and "second order" in out
    cfgs = [json.loads(p.read_text()) for p in sorted((tmp_path / "e").glob("*/seed0/config.json"))]
    assert sorted(c["meta"]["first_order"] for c in cfgs) == [False, True]
    assert (tmp_path / "e" / "tables" / "order.md").is_file()
