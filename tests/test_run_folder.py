"""A run folder is a transaction: one process trains into it, on the data it started on, and stops cleanly.

The smoke preset on test_train's tiny synthetic dataset with a tiny model (dmer, seconds per run). Two tests
start a child process (`dsaml train` through a script that pauses it at a chosen point) next to this one.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from fixtures import one_thread  # noqa: F401 (an autouse fixture)
import torch
from test_train import TINY_SYNTH

from dsaml_utils.cli import main as cli_main
from dsaml_utils.data.registry import data_fingerprint, load_dataset
from dsaml_utils.data.synthetic.config import SynthConfig
from dsaml_utils.data.synthetic.writer import generate
from dsaml_utils.errors import Interrupted, RunConflict
from dsaml_utils.io.lock import FolderBusy, FolderLock
from dsaml_utils.training.config import apply_overrides, preset
from dsaml_utils.training.trainer import Trainer, train

TINY = ["mel.sample_rate=8000", "mel.n_mels=16", "train.val_fraction=0.2",
        'model_config={"d_model": 16, "n_heads": 2, "d_ff": 32, "n_layers": 1, "max_rel_distance": 12}']

PAUSE = """
import pathlib, sys, time
from dsaml_utils.training import trainer
where, marker, go = sys.argv[1], pathlib.Path(sys.argv[2]), pathlib.Path(sys.argv[3])

def pause():
    marker.write_text("paused")
    t0 = time.time()
    while not go.exists() and time.time() - t0 < 60:
        time.sleep(0.01)

if where == "setup":  # inside Trainer setup (after the lock, before config.json)
    protocol_store = trainer.protocol_store
    trainer.protocol_store = lambda *a, **k: (pause(), protocol_store(*a, **k))[1]
else:  # before update number `where` (0-based), i.e. in the middle of the run
    update = trainer.Trainer.update
    trainer.Trainer.update = lambda self: (pause() if self.step == int(where) else None, update(self))[1]
from dsaml_utils.cli import main
raise SystemExit(main(sys.argv[4:]))
"""
"""A child `dsaml train` that writes `marker` and waits for `go` at a chosen point."""



@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("run_folder") / "syn"
    generate(root, SynthConfig(**TINY_SYNTH), overwrite=True)
    return root


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("run_folder_cache")


def smoke(root, cache, *extra):
    cfg = preset("smoke", mode="dmer", dataset="synthetic", root=str(root), cache_dir=str(cache))
    return apply_overrides(cfg, [*TINY, *extra])


def cli_args(root, cache, out, *extra) -> list[str]:
    args = ["train", "--mode", "dmer", "--preset", "smoke", "--dataset", "synthetic", "--root", str(root),
            "--cache", str(cache), "--out", str(out), "--device", "cpu", "--quiet"]
    return args + [a for s in [*TINY, *extra] for a in ("--set", s)]


def start_paused(where, tmp_path, args) -> tuple[subprocess.Popen, Path]:
    """Start the child; returns it once it waits at `where`, and the file that lets it go on."""
    marker, go = tmp_path / "paused", tmp_path / "go"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parent.parent)}
    child = subprocess.Popen([sys.executable, "-c", PAUSE, str(where), str(marker), str(go), *args], env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    t0 = time.time()
    while not marker.exists():
        if child.poll() is not None or time.time() - t0 > 120:
            child.kill()
            pytest.fail(f"the child did not reach {where}: {child.communicate()[1][-2000:]}")
        time.sleep(0.05)
    return child, go


def weights(run, name="model.pt"):
    return torch.load(Path(run) / name, weights_only=True)["model"]


def same_weights(a, b) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_second_process_on_the_folder_is_refused_and_the_folder_stays_one_run(root, cache, tmp_path, capsys):
    out = tmp_path / "run"
    child, go = start_paused("setup", tmp_path, cli_args(root, cache, out, "train.seed=1"))
    try:  # the child holds the folder, in setup, before it writes config.json: this process tries seed 2
        assert cli_main(cli_args(root, cache, out, "train.seed=2")) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and err.startswith("dsaml train: error: ")
        assert str(out) in err and f"pid {child.pid}" in err
        assert not (out / "config.json").exists() and not (out / "checkpoint.pt").exists()
    finally:
        go.touch()
        _, child_err = child.communicate(timeout=120)
    assert child.returncode == 0, child_err[-2000:]
    assert json.loads((out / "config.json").read_text())["train"]["seed"] == 1
    assert cli_main(cli_args(root, cache, tmp_path / "alone", "train.seed=1")) == 0
    assert same_weights(weights(out), weights(tmp_path / "alone"))  # model.pt is the seed-1 run's
    assert cli_main(cli_args(root, cache, out, "train.seed=1")) == 0  # the lock went with the child


def test_sigint_saves_a_checkpoint_and_the_rerun_ends_as_an_uninterrupted_run(root, cache, tmp_path, capsys):
    args = cli_args(root, cache, tmp_path / "run", "train.steps=6")
    child, go = start_paused(2, tmp_path, args)
    child.send_signal(signal.SIGINT)  # while update 3 is about to start: it finishes, then the run stops
    go.touch()
    _, err = child.communicate(timeout=120)
    line = "dsaml train: error: interrupted at step 3; rerun the same command to resume"
    assert err.strip().splitlines()[-1:] == [line], err[-2000:]  # before it: only the dataset's warnings
    assert "Traceback" not in err and child.returncode == Interrupted.exit_code == 130
    assert torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)["step"] == 3
    assert not (tmp_path / "run" / "model.pt").exists()
    assert cli_main(args) == 0  # the same command resumes
    assert cli_main(cli_args(root, cache, tmp_path / "full", "train.steps=6")) == 0
    assert same_weights(weights(tmp_path / "run"), weights(tmp_path / "full"))
    assert same_weights(weights(tmp_path / "run", "checkpoint.pt"), weights(tmp_path / "full", "checkpoint.pt"))


def test_sigterm_stops_at_the_next_update_and_the_handler_is_restored(root, cache, tmp_path):
    before = signal.getsignal(signal.SIGTERM)

    def term_at_2(trainer):
        if trainer.step == 2:
            os.kill(os.getpid(), signal.SIGTERM)

    cfg = smoke(root, cache, "train.steps=4")
    with pytest.raises(Interrupted, match=r"^interrupted at step 2; rerun the same command to resume$"):
        train(cfg, tmp_path / "run", progress=False, callback=term_at_2)
    assert signal.getsignal(signal.SIGTERM) is before
    assert torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)["step"] == 2
    assert train(cfg, tmp_path / "run", progress=False)["steps"] == 4


def test_resuming_or_reusing_a_run_on_other_data_is_refused(cache, tmp_path):
    root = tmp_path / "syn"
    generate(root, SynthConfig(**TINY_SYNTH), overwrite=True)
    old = data_fingerprint(load_dataset("synthetic", root))
    cfg = smoke(root, cache, "train.checkpoint_every=1")
    assert train(cfg, tmp_path / "part", progress=False, max_steps_this_call=1)["stopped_at"] == 1
    train(cfg, tmp_path / "done", progress=False)
    generate(root, SynthConfig(**{**TINY_SYNTH, "seed": 1}), overwrite=True)  # the same folder, other data
    new = data_fingerprint(load_dataset("synthetic", root))
    assert new != old
    for run, name in (("part", "checkpoint.pt"), ("done", "model.pt")):
        with pytest.raises(RunConflict, match="other data") as err:
            train(cfg, tmp_path / run, progress=False)
        msg = str(err.value)
        assert str(tmp_path / run / name) in msg and old[:16] in msg and new[:16] in msg and "\n" not in msg
    assert torch.load(tmp_path / "part" / "checkpoint.pt", weights_only=True)["step"] == 1  # left as it was


def test_stale_temporary_files_are_removed_once_the_lock_is_held(root, cache, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    stale = [out / "checkpoint.pt.k2j3h4.tmp", out / "history.json.x9y8.tmp"]
    for p in stale:
        p.write_bytes(b"half written by a killed process")
    other = FolderLock(out)
    other.acquire()  # another holder: the refused trainer touches nothing
    with pytest.raises(FolderBusy, match=f"pid {os.getpid()}"):
        Trainer(smoke(root, cache), out, progress=False)
    assert all(p.exists() for p in stale) and not (out / "config.json").exists()
    other.release()
    train(smoke(root, cache), out, progress=False)
    assert not list(out.glob("*.tmp")) and (out / "model.pt").is_file()


def test_root_spelling_and_cache_folder_are_not_run_identity(root, cache, tmp_path, monkeypatch):
    monkeypatch.chdir(root.parent)
    done = train(smoke("syn", cache), tmp_path / "run", progress=False)
    stamp = (tmp_path / "run" / "model.pt").stat().st_mtime_ns
    for spelling, other_cache in ((f"{root}/", cache), ("./syn", tmp_path / "other-cache")):
        assert train(smoke(spelling, other_cache), tmp_path / "run", progress=False) == done  # reused
    assert (tmp_path / "run" / "model.pt").stat().st_mtime_ns == stamp
    with pytest.raises(RunConflict, match="other settings"):
        train(smoke(root, cache, "train.seed=5"), tmp_path / "run", progress=False)


def test_evaluate_a_run_trained_with_a_relative_root_from_another_folder(root, cache, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(root.parent)
    assert cli_main(cli_args("syn", cache, tmp_path / "run")) == 0
    assert json.loads((tmp_path / "run" / "config.json").read_text())["root"] == str(root)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    capsys.readouterr()
    assert cli_main(["evaluate", "--run", str(tmp_path / "run"), "--json", "--quiet"]) == 0, capsys.readouterr().err
    assert json.loads(capsys.readouterr().out)["data"]["root"] == str(root)
