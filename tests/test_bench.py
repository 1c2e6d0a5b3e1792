import json
import math
import platform
import shutil
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import pytest
import torch

import dsaml_utils
from dsaml_utils import cli
from dsaml_utils.data.synthetic.config import SynthConfig
from dsaml_utils.data.synthetic.writer import generate
from dsaml_utils.errors import UserError
from dsaml_utils.experiments import against, hotpaths_harness
from dsaml_utils.experiments.bench import (
    BenchCase,
    build,
    format_report,
    make_tasks,
    run_bench,
)

CASE_KEYS = {"preset", "tasks", "inner_steps", "query_songs", "steps", "personalize_steps", "support_songs",
             "torch_threads", "params", "loop_s", "batched_s", "loop_over_batched", "loop_runs_s",
             "batched_runs_s", "personalize_s", "personalize_runs_s", "load_before", "load_after"}
REPORT_KEYS = {"device", "torch", "machine", "cpu_count", "omp_wait_policy", "malloc_tuned", "first_order",
               "repeats", "warmup", "cases"}


def test_bench_cli_json_reports_documented_keys(capsys):
    before = torch.get_num_threads()
    code = cli.main(["bench", "--preset", "smoke", "--json", "--repeats", "2", "--warmup", "0",
                     "--threads", "1", "--tasks", "3", "--no-tune-malloc"])
    assert code == 0
    assert torch.get_num_threads() == before  # thread setting restored
    report = json.loads(capsys.readouterr().out)
    assert set(report) == REPORT_KEYS
    assert report["device"] == "cpu" and report["malloc_tuned"] is False
    (case,) = report["cases"]
    assert set(case) == CASE_KEYS
    assert case["tasks"] == 3 and case["torch_threads"] == 1 and case["params"] > 0
    assert len(case["loop_runs_s"]) == len(case["batched_runs_s"]) == 2
    assert all(t > 0 for t in case["loop_runs_s"] + case["batched_runs_s"] + case["personalize_runs_s"])
    assert case["loop_over_batched"] == case["loop_s"] / case["batched_s"]
    text = format_report(report)
    assert "loop/batched" in text and "smoke" in text


def test_run_bench_times_each_thread_count():
    case = BenchCase("smoke", tasks=2, inner_steps=1, query_songs=1, steps=4, personalize_steps=1)
    report = run_bench([case], repeats=1, warmup=0, threads=[1, 2], progress=False)
    assert [c["torch_threads"] for c in report["cases"]] == [1, 2]
    assert all(c["loop_s"] > 0 and c["batched_s"] > 0 for c in report["cases"])


def test_bench_rejects_bad_arguments(capsys):
    assert cli.main(["bench", "--preset", "smoke", "--tasks", "0"]) == 2
    assert "--tasks must be positive" in capsys.readouterr().err
    assert cli.main(["bench", "--preset", "smoke", "--threads", "0"]) == 2


def test_make_tasks_shapes():
    model = build("smoke")
    case = BenchCase("smoke", tasks=3, inner_steps=1, query_songs=2, steps=5)
    tasks = make_tasks(model, case)
    assert len(tasks) == 3
    support, query = tasks[0]
    assert support["y"].shape == (1, 5, 2) and query["y"].shape == (2, 5, 2)
    assert set(model.inputs) <= set(support)


def test_keep_freed_memory_in_a_fresh_process():
    # process-wide and irreversible, so it runs in its own interpreter
    code = "from dsaml_utils.runtime import keep_freed_memory; print(keep_freed_memory())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == str(platform.libc_ver()[0] == "glibc")  # applied exactly where malloc is glibc's


# ---- dsaml bench --against REV: the hot paths with another commit's code

AGAINST_KEYS = {"command", "old", "new", "machine", "platform", "cpu_count", "load_before", "load_after", "python",
                "root", "generated_root", "options", "paths"}
PATH_KEYS = {"unit", "old_over_new", "loss_max_abs_diff"} | {f"{side}_{k}" for side in ("old", "new")
                                        for k in ("s", "runs_s", "times_s", "losses", "peak_rss_mib", "cache_misses")}


def _git(*args: str) -> str:
    return subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True, check=True).stdout


REPO = Path(dsaml_utils.__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def smoke_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("bench_smoke_synth")
    generate(root, SynthConfig(**against.BENCH_SYNTH["smoke"], workers=1), overwrite=True)
    return root


def test_against_head_smoke_end_to_end(smoke_root, capsys):
    """The whole comparison in subprocesses (4: a warm-up and a timed one per tree), on the eval path."""
    code = cli.main(["bench", "--against", "HEAD", "--preset", "smoke", "--root", str(smoke_root), "--paths", "eval",
                     "--repeats", "1", "--json"])
    assert code == 0
    report = json.loads(capsys.readouterr().out)
    assert set(report) == AGAINST_KEYS
    assert report["command"].startswith("dsaml bench --against HEAD --preset smoke --paths eval --root ")
    assert report["generated_root"] is False and report["options"]["threads"] == 1
    assert report["old"]["commit"] == report["new"]["commit"] == _git("rev-parse", "HEAD").strip()
    # each side imported the package of its own tree, not the editable install's
    old_tree = Path(report["old"]["tree"])
    assert old_tree != REPO and REPO not in old_tree.parents
    assert report["old"]["dsaml_file"] == str(old_tree / "dsaml_utils" / "__init__.py")
    assert report["new"]["dsaml_file"] == str(REPO / "dsaml_utils" / "__init__.py")
    (row,) = report["paths"].values()
    assert list(report["paths"]) == ["eval"] and set(row) == PATH_KEYS
    assert math.isfinite(row["old_over_new"]) and row["old_over_new"] > 0
    assert row["loss_max_abs_diff"] is None  # evaluations have no loss
    assert row["old_over_new"] == row["old_s"] / row["new_s"]
    for side in ("old", "new"):
        ((seconds,),) = row[f"{side}_times_s"]
        assert seconds > 0 and row[f"{side}_runs_s"] == [seconds] and row[f"{side}_s"] == seconds
        assert row[f"{side}_peak_rss_mib"][0] > 50
        assert row[f"{side}_cache_misses"] == [0]  # the warm-up process filled each tree's cache
    # the temporary worktree is gone, from disk and from git's list
    assert not old_tree.exists()
    assert f"worktree {old_tree}\n" not in _git("worktree", "list", "--porcelain")
    text = against.format_report(report)
    assert report["old"]["commit"] in text and "old/new" in text and "evaluation" in text


@pytest.mark.parametrize("path", ["dmer", "maml"])
def test_harness_times_updates_in_process(path, smoke_root, tmp_path):
    """The update paths of the harness (run here on the current code; the e2e test runs the eval path)."""
    job = {"path": path, "root": str(smoke_root), "cache": str(tmp_path / "cache"), "work": str(tmp_path),
           "preset": "smoke", "sets": ["train.batch_size=3"], "warmup": 1, "updates": 2, "threads": 1}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        out = hotpaths_harness.run_job(job)
        again = hotpaths_harness.run_job(job)
    finally:
        torch.set_num_threads(threads)
    assert len(out["times_s"]) == len(out["losses"]) == 2
    assert all(t > 0 for t in out["times_s"]) and all(math.isfinite(x) for x in out["losses"])
    assert out["cache_misses"] > 0  # a fresh cache: the features were computed (in the untimed setup)
    assert again["losses"] == out["losses"] and again["cache_misses"] == 0  # same updates, warm cache


def test_against_unknown_revision_is_one_line_error(capsys):
    before = _git("worktree", "list", "--porcelain")
    assert cli.main(["bench", "--against", "no-such-revision-x", "--preset", "smoke"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"dsaml bench: error: --against no-such-revision-x: unknown revision in {REPO}"
    assert _git("worktree", "list", "--porcelain") == before


def test_against_refuses_outside_a_git_checkout(tmp_path, monkeypatch):
    (tmp_path / "dsaml_utils").mkdir()
    monkeypatch.setattr(dsaml_utils, "__file__", str(tmp_path / "dsaml_utils" / "__init__.py"))
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path))
    with pytest.raises(UserError, match="not in a git checkout"):
        against.repo_root()


def test_against_options_are_checked(capsys):
    assert cli.main(["bench", "--preset", "smoke", "--updates", "3"]) == 2
    assert "--updates: options of `dsaml bench --against REV` only" in capsys.readouterr().err
    assert cli.main(["bench", "--against", "HEAD", "--paths", "dmer,bogus"]) == 2
    assert "--paths dmer,bogus: choose among dmer,maml,eval" in capsys.readouterr().err
    assert cli.main(["bench", "--against", "HEAD", "--tasks", "3"]) == 2
    assert "--tasks: options of the batched-vs-loop bench" in capsys.readouterr().err
    assert cli.main(["bench", "--against", "HEAD", "--threads", "1", "2"]) == 2


def test_harness_that_imports_another_tree_is_an_error(tmp_path):
    """The PYTHONPATH guard: a 'tree' without the package makes the harness import the installed one."""
    shutil.copy2(against.HARNESS, tmp_path / against.HARNESS.name)
    job = {"path": "warm", "paths": [], "threads": 1}
    with pytest.raises(UserError, match="did not take effect: the harness imported .*dsaml_utils"):
        against.run_harness(job, tmp_path / "empty-tree", tmp_path)
    assert against.RESULT_KEY == hotpaths_harness.RESULT_KEY


def test_summarize_medians_ratio_and_loss_difference():
    def res(times, losses, misses=0):
        return {"times_s": times, "losses": losses, "peak_rss_mib": 400.04, "cache_misses": misses}

    opts = against.AgainstOptions(rev="HEAD", paths=("maml",), repeats=3)
    runs = {"maml": {"old": [res([4.0, 2.0, 3.0], [1.0, 2.0]), res([9.0], [1.0]), res([1.0], [0.5])],
                     "new": [res([1.0, 1.0, 5.0], [1.0, 2.5]), res([2.0], [1.0]), res([0.5], [0.5], misses=1)]}}
    row = against.summarize(opts, runs)["maml"]
    assert row["old_runs_s"] == [3.0, 9.0, 1.0] and row["old_s"] == 3.0
    assert row["new_runs_s"] == [1.0, 2.0, 0.5] and row["new_s"] == 1.0
    assert row["old_over_new"] == 3.0 and row["loss_max_abs_diff"] == 0.5
    assert row["new_peak_rss_mib"] == [400.0] * 3 and row["new_cache_misses"] == [0, 0, 1]
    report = {"old": {"commit": "a" * 40, "rev": "v1", "torch": "t"}, "paths": {"maml": row},
              "new": {"commit": "b" * 40, "dirty": True, "dirty_files": 2, "tree": "/repo", "torch": "t"},
              "machine": "x86_64", "cpu_count": 2, "load_before": [1.0, 1, 1], "load_after": [2.0, 2, 2],
              "root": "/data", "generated_root": False, "options": asdict(opts), "command": "dsaml bench --against v1"}
    text = against.format_report(report)
    assert "command: dsaml bench --against v1" in text and "a" * 40 in text and "uncommitted changes in 2" in text
    assert "3.00x" in text and "warning: feature extraction ran in timed processes of maml" in text
