"""Experiments: specs -> runs per seed (reused), tables with mean ± std and provenance, CLI."""

import json

import numpy as np
import pandas as pd
import pytest
import torch
from test_evaluate import fake_metrics
from test_train import TINY_RUN, one_thread, tiny_cache, tiny_config, tiny_ds, tiny_root  # noqa: F401 (fixtures)

from dsaml_utils.experiments import tables as tables_module
from dsaml_utils.cli import main as cli_main
from dsaml_utils.errors import RunConflict, UserError
from dsaml_utils.experiments.plan import (
    UPDATE_SECONDS,
    WORKBOOK_PLAN,
    job_cost,
    plan_jobs,
    schedule,
    train_plan,
    workbook_plan,
    workbook_seeds,
)
from dsaml_utils.evaluation.run import FULL, Scoring
from dsaml_utils.experiments.runner import experiment_scoring, run_experiment, run_specs
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
    # personalization scored k = 1 and the same song only; the k-shot table scores the shared run for k = 4
    # too (k = 1 unchanged), after which both tables reuse it
    mine = results["DSAML (MAML, personalized tasks)"][0]
    assert set(mine.pdmer.kshot) == {1} and mine.pdmer.same_song is not None
    k, kres, _ = run_experiment("kshot", base, [0], tmp_path / "exp", progress=False, ds=tiny_ds)
    assert kres["DSAML"][0].run == mine.run and set(kres["DSAML"][0].pdmer.kshot) == {1, 4}
    assert kres["DSAML"][0].pdmer.kshot[1] == mine.pdmer.kshot[1] and kres["DSAML"][0].pdmer.same_song is not None
    assert set(k.index.get_level_values("k")) == {1, 4}
    _, third, _ = run_experiment("personalization", base, [0], tmp_path / "exp", progress=False, ds=tiny_ds)
    assert third["DSAML (MAML, personalized tasks)"][0].created == kres["DSAML"][0].created
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


def test_experiment_cli_with_two_jobs_trains_the_same_runs(tiny_root, tiny_cache, tmp_path, capsys):  # noqa: F811
    runs = {}
    for jobs in ("1", "2"):
        args = ["experiment", "order", "--seeds", "0", "--root", str(tiny_root), "--dataset", "synthetic",
                "--cache", tiny_cache, "--out", str(tmp_path / jobs), "--steps", "1", "--quiet", "--jobs", jobs]
        args += [a for s in TINY_RUN if not s.startswith("train.steps") for a in ("--set", s)]
        assert cli_main(args) == 0
        runs[jobs] = sorted((tmp_path / jobs).glob("*/seed0/model.pt"))
        assert (tmp_path / jobs / "tables" / "order.md").is_file()
    assert [p.parent.parent.name for p in runs["1"]] == [p.parent.parent.name for p in runs["2"]]
    assert len(runs["2"]) == 2
    for a, b in zip(runs["1"], runs["2"]):
        wa = torch.load(a, weights_only=True)["model"]
        wb = torch.load(b, weights_only=True)["model"]
        assert all(torch.equal(wa[k], wb[k]) for k in wa)
    capsys.readouterr()
    bad = ["experiment", "order", "--jobs", "0", "--root", str(tiny_root), "--out", str(tmp_path / "x")]
    assert cli_main(bad) != 0
    assert "--jobs must be at least 1, got 0" in capsys.readouterr().err


def test_workbook_plan_seeds():
    plan = workbook_plan(5)
    assert plan["personalization"] == plan["kshot"] == [5, 6, 7]
    assert all(plan[n] == [5] for n in plan if n not in ("personalization", "kshot"))
    assert set(plan) == set(WORKBOOK_PLAN) and set(plan) <= set(EXPERIMENTS)
    assert set(workbook_plan(0, personalized=False)) == {"table1", "table3", "features"}  # no PDMER without listeners
    assert workbook_seeds("kshot", 2) == [2, 3, 4] and workbook_seeds("table1", 2) == [2]
    with pytest.raises(UserError, match="unknown experiment"):
        workbook_seeds("table9")


def test_plan_jobs_dedupe_folders_and_schedule_sources_first(tiny_root, tiny_cache, tmp_path):  # noqa: F811
    base = tiny_config(tiny_root, tiny_cache)
    plan = {"table4": [0], "kshot": [0, 1], "personalization": [0, 1], "table1": [0]}
    jobs = plan_jobs(plan, base, tmp_path)
    folders = [j.folder for j in jobs]
    assert len(folders) == len(set(folders))  # a run shared by several tables is trained once
    # table4: 4 runs; kshot = personalization: 2 more per seed (seed 1: both new); table1: 4 baselines
    assert len(jobs) == 4 + 1 + 2 + 4
    assert tmp_path / "dsaml-dmer-traditional" / "seed1" in folders
    # each run is scored for every table that reads it
    scoring = {str(j.folder.relative_to(tmp_path)): j.scoring for j in jobs}
    assert scoring["crnn-dmer-traditional/seed0"] == Scoring((), False)  # table1 only: DMER
    assert scoring["dsaml-pdmer-traditional/seed0"] == Scoring((1,), False)  # table4: 1-shot
    assert scoring["dsaml-dmer-traditional/seed0"] == Scoring(None, True)  # table4, kshot (every k), personalization (same song)
    assert experiment_scoring("kshot") == Scoring(None, False) and experiment_scoring("table3") == Scoring((), False)
    order = schedule(jobs)
    assert sorted(j.folder for j in order) == sorted(folders)
    position = {j.folder: i for i, j in enumerate(order)}
    starts_from = [j for j in jobs if j.after is not None]
    assert len(starts_from) == 2 and all(position[j.after] < position[j.folder] for j in starts_from)
    assert all(j.cfg.init == str(j.after) for j in starts_from)
    # longest first, counting the runs that start from a run (DSAML DMER: its own cost plus its MAML run's)
    cost = {j.folder: job_cost(j.cfg) for j in jobs}
    chain = [cost[j.folder] + sum(cost[k.folder] for k in starts_from if k.after == j.folder) for j in order]
    assert chain == sorted(chain, reverse=True) and len(set(chain)) > 3
    assert order[0].folder.parent.name == "mcrnn-dmer-traditional"
    assert job_cost(order[0].cfg) == pytest.approx(base.train.steps * UPDATE_SECONDS["mcrnn"][0])
    dsaml_dmer = next(j for j in jobs if j.folder.parent.name == "dsaml-dmer-traditional")
    assert chain[position[dsaml_dmer.folder]] > cost[dsaml_dmer.folder]
    with pytest.raises(UserError, match="workers must be at least 1"):
        train_plan({"table1": [0]}, base, tmp_path, workers=0, progress=False)


def _run_record(folder):
    """A run's weights and its metrics without what differs between two trainings of the same run
    (paths, times)."""
    weights = torch.load(folder / "model.pt", weights_only=True)["model"]
    metrics = json.loads((folder / "metrics.json").read_text())
    return weights, {k: metrics[k] for k in ("dmer", "pdmer", "seed", "mode", "model_digest")}


def test_train_plan_in_parallel_equals_one_after_another(tiny_ds, tiny_root, tiny_cache, tmp_path, capsys):  # noqa: F811
    base = tiny_config(tiny_root, tiny_cache, extra=["train.steps=2", "train.eval_every=1"])
    plan = {"kshot": [0, 1]}  # two DMER runs, and two MAML runs that start from them
    par = train_plan(plan, base, tmp_path / "par", workers=2)
    assert "[plan] dsaml-dmer-traditional/seed0: trained and evaluated in" in capsys.readouterr().out
    ser = train_plan(plan, base, tmp_path / "ser", workers=1, ds=tiny_ds, progress=False)
    assert len(par) == len(ser) == 4 and all(r.trained for r in par + ser)
    done = [r.folder for r in par]
    for src in ("seed0", "seed1"):  # a run that starts from another one finished after it
        assert (done.index(tmp_path / "par" / "dsaml-dmer-traditional" / src)
                < done.index(tmp_path / "par" / "dsaml-pdmer-personalized-from-dsaml-dmer-traditional" / src))
    for run in par:
        rel = run.folder.relative_to(tmp_path / "par")
        (wa, ma), (wb, mb) = _run_record(run.folder), _run_record(tmp_path / "ser" / rel)
        assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa), rel
        assert ma == mb, rel
    # the experiment then finds every run finished and evaluated
    mtimes = {p: p.stat().st_mtime_ns for p in (tmp_path / "par").rglob("*") if p.is_file()}
    _, results, _ = run_experiment("kshot", base, [0, 1], tmp_path / "par", progress=False, ds=tiny_ds)
    assert {str(r.folder) for r in par if "from" in r.folder.parent.name} == {m.run for m in results["DSAML"]}
    again = train_plan(plan, base, tmp_path / "par", workers=1, ds=tiny_ds, progress=False)
    assert not any(r.trained for r in again)
    assert all(p.stat().st_mtime_ns == t for p, t in mtimes.items())


def test_train_plan_error_names_the_run_and_stops_the_others(tiny_root, tiny_cache, tmp_path):  # noqa: F811
    base = tiny_config(tiny_root, tiny_cache)
    # a folder holding a run with other settings: that run fails at once, while a worker trains another
    other = tiny_config(tiny_root, tiny_cache, extra=["train.steps=3"])
    other.save(_mkdir(tmp_path / "runs" / "dsaml-dmer-traditional" / "seed0") / "config.json")
    with pytest.raises(RunConflict, match=r"dsaml-dmer-traditional/seed0: RunConflict: .*train.steps"):
        train_plan({"table3": [0]}, base, tmp_path / "runs", workers=2, progress=False)
    assert not list((tmp_path / "runs").rglob("model.pt"))  # the run in the other worker was stopped
    base.root = str(tmp_path / "no-such-dataset")
    for workers in (2, 1):
        with pytest.raises(UserError, match=r"dsaml-dmer-traditional/seed0: DataError"):
            train_plan({"kshot": [0]}, base, tmp_path / f"runs{workers}", workers=workers, progress=False)
    assert not (tmp_path / "runs2" / "dsaml-pdmer-personalized-from-dsaml-dmer-traditional").exists()


def _mkdir(path):
    path.mkdir(parents=True)
    return path


def test_table_code_stamp_keeps_the_dirty_mark():
    from_commit = "b54e0b9cfcff0123456789abcdef0123456789ab"
    assert tables_module._short_version(from_commit) == "b54e0b9cfcff"
    assert tables_module._short_version(from_commit + "-dirty") == "b54e0b9cfcff-dirty"
    assert tables_module._short_version("dsaml_utils 0.1") == "dsaml_utils "
