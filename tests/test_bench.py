import json
import platform
import subprocess
import sys

import torch

from dsaml_utils import cli
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
    code = "from dsaml_utils.experiments.bench import keep_freed_memory; print(keep_freed_memory())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == str(platform.libc_ver()[0] == "glibc")  # applied exactly where malloc is glibc's
