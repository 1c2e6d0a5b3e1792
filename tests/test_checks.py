"""Nothing silently wrong: bad settings, unexpected errors, bounded intervals and refused checkpoints."""

from __future__ import annotations

import json
import os
import tempfile

import pytest
import torch

from dsaml_utils import cli
from dsaml_utils import metrics as M
from dsaml_utils.cli import train as cli_train
from dsaml_utils.errors import UserError
from dsaml_utils.io.atomic import load_checkpoint
from dsaml_utils.training.config import PRESETS, RunConfig, apply_overrides, preset

BAD_OVERRIDES = {
    'train.steps="abc"': "train.steps", "train.steps=abc": "train.steps", "train.steps=2.5": "train.steps",
    "train.lr=fast": "train.lr", "train.lr=NaN": "train.lr", "train.lr=Infinity": "train.lr",
    "train.lr=0": "train.lr", "train.eval_every=-1": "train.eval_every",
    "train.checkpoint_every=-2": "train.checkpoint_every", "train.device=tpu": "train.device",
    "train.batch_size=0": "train.batch_size", "train.window=true": "train.window",
    "train.val_fraction=1": "train.val_fraction", "train.grad_clip=-1": "train.grad_clip",
    "train.batched_meta=1": "train.batched_meta", "train.select=worst": "train.select",
    "eval.kshots=[1, 0]": "eval.kshots", "eval.kshots=[]": "eval.kshots", "eval.kshots=[1.5]": "eval.kshots",
    "eval.support_steps=0": "eval.support_steps", "eval.interval=jackknife": "eval.interval",
    "meta.inner_lr=-0.1": "meta.inner_lr", "meta.inner_steps=0": "meta.inner_steps",
    "meta.tasks_per_step=2.5": "meta.tasks_per_step", "meta.task_chunk=0": "meta.task_chunk",
    "meta.first_order=yes": "meta.first_order", "tasks.min_songs=0": "tasks.min_songs",
    "tasks.flat_threshold=-1": "tasks.flat_threshold", "mel.n_mels=0": "mel.n_mels",
    "mel.hop_ms=0.001": "mel.hop_ms", "mel.f_max=0": "mel.f_max", "dataset=imagenet": "dataset",
    'train={"steps": 3}': "train", "model_config.d_model=2.5": "model_config.d_model",
}
"""Override -> the field its one-line error must name."""


@pytest.mark.parametrize("item", sorted(BAD_OVERRIDES))
def test_a_bad_override_is_refused_in_one_line_naming_the_field(item):
    with pytest.raises(UserError) as err:
        apply_overrides(preset("smoke"), [item])
    message = str(err.value)
    assert message.startswith(BAD_OVERRIDES[item] + " ") or message.startswith(BAD_OVERRIDES[item] + ":")
    assert "\n" not in message and ("expected" in message or "choose one of" in message or "no field" in message)


def test_good_overrides_are_normalised_to_the_fields_type():
    cfg = apply_overrides(preset("smoke"), ["eval.kshots=5", "train.steps=3.0", "train.lr=1", "eval.support_steps=null",
                                            "train.grad_clip=2", "model_config.adapter_channels=[4, 8]"])
    assert cfg.eval.kshots == (5,) and cfg.train.steps == 3 and isinstance(cfg.train.steps, int)
    assert cfg.train.lr == 1.0 and isinstance(cfg.train.lr, float) and cfg.eval.support_steps is None
    assert cfg.train.grad_clip == 2.0 and cfg.model_config["adapter_channels"] == (4, 8)


def test_every_preset_passes_the_checks_and_survives_a_round_trip():
    for name in PRESETS:
        cfg = preset(name)
        assert RunConfig.from_dict(json.loads(cfg.to_json())).settings() == cfg.check().settings()


@pytest.mark.parametrize("field,value", [("steps", 2.5), ("steps", "abc"), ("lr", "fast"), ("eval_every", -1),
                                         ("device", "tpu")])
def test_a_config_json_with_a_bad_value_is_refused(tmp_path, field, value):
    d = preset("smoke").to_dict()
    d["train"][field] = value
    path = tmp_path / "config.json"
    path.write_text(json.dumps(d))
    with pytest.raises(UserError, match=rf"config.json: train\.{field} ") as err:
        RunConfig.load(path)
    assert "\n" not in str(err.value)


CLI_BAD = [["--set", 'train.steps="abc"'], ["--set", "train.steps=abc"], ["--set", "train.lr=fast"],
           ["--set", "eval.kshots=0"], ["--set", "train.steps=2.5"], ["--set", "train.eval_every=-1"],
           ["--lr", "nan"], ["--lr", "inf"], ["--lr", "-1"], ["--device", "tpu"], ["--steps", "0"],
           ["--batch-size", "0"], ["--seed", "-1"]]


@pytest.mark.parametrize("extra", CLI_BAD, ids=" ".join)
def test_the_cli_refuses_bad_settings_in_one_line_before_anything_runs(tmp_path, capsys, extra):
    out = tmp_path / "run"
    assert cli.main(["train", "--mode", "dmer", "--preset", "smoke", "--out", str(out), "--quiet", *extra]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("dsaml train: error: ") and "Traceback" not in err
    assert not out.exists()


def test_experiment_checks_its_seeds_before_training(tmp_path, capsys):
    assert cli.main(["experiment", "order", "--preset", "smoke", "--seeds", "0", "-1", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--seeds: train.seed -1" in err and not list(tmp_path.iterdir())


def test_an_unexpected_error_is_one_line_with_the_traceback_in_a_file(tmp_path, capsys, monkeypatch):
    def boom(args):
        raise RuntimeError("boom\nsecond line of the message")

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    monkeypatch.setattr(cli_train, "_cli_train", boom)
    assert cli.main(["train", "--mode", "dmer", "--out", str(tmp_path / "run")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "RuntimeError: boom" in err and "second line" not in err
    assert "Traceback" not in err
    (path,) = tmp_path.glob("dsaml-traceback-*.txt")
    assert str(path) in err
    text = path.read_text()
    assert text.startswith("dsaml train --mode dmer") and "Traceback" in text and "second line" in text


def test_interrupts_and_user_errors_keep_their_exit_status(tmp_path, capsys, monkeypatch):
    class Stopped(UserError):
        exit_code = 130

    def interrupt(args):
        raise KeyboardInterrupt

    def stopped(args):
        raise Stopped("stopped at step 3; rerun the command to resume")

    argv = ["train", "--mode", "dmer", "--out", str(tmp_path / "run")]
    monkeypatch.setattr(cli_train, "_cli_train", interrupt)
    assert cli.main(argv) == 130 and capsys.readouterr().err == "dsaml train: interrupted\n"
    monkeypatch.setattr(cli_train, "_cli_train", stopped)
    assert cli.main(argv) == 130 and capsys.readouterr().err == "dsaml train: error: stopped at step 3; rerun " \
                                                               "the command to resume\n"


def test_help_and_argument_errors_behave_as_argparse_does(capsys):
    with pytest.raises(SystemExit) as done:
        cli.main(["train", "--help"])
    assert done.value.code == 0 and "--mode" in capsys.readouterr().out
    with pytest.raises(SystemExit) as done:
        cli.main(["train", "--mode", "dmer", "--out", "x", "--steps", "2.5"])
    assert done.value.code == 2 and "invalid int value" in capsys.readouterr().err


SEEN = [0.999, -0.998, 0.997]
"""A few per-song correlations near +-1: their t interval leaves [-1, 1] (as valence PCC [-1.594, 1.770] did)."""


def test_the_interval_of_a_bounded_metric_stays_within_its_bounds():
    plain = M.interval(SEEN)
    assert plain["lo"] < -1 and plain["hi"] > 1  # the case to fix: an unbounded t interval
    scores = [{"valence_pcc": v, "arousal_ccc": v, "valence_kendall_tau": v, "valence_rmse": 1 - abs(v),
               "valence_r2": v, "other": v} for v in SEEN]
    for method in ("t", "bootstrap"):
        agg = M.aggregate_songs(scores, method=method)
        for key in ("valence_pcc", "arousal_ccc", "valence_kendall_tau"):
            assert -1 <= agg[key]["lo"] <= agg[key]["mean"] <= agg[key]["hi"] <= 1
        assert agg["valence_rmse"]["lo"] >= 0 and agg["valence_r2"]["hi"] <= 1
        assert agg["valence_pcc"]["mean"] == pytest.approx(sum(SEEN) / 3)
    t = M.aggregate_songs(scores)
    assert (t["valence_pcc"]["lo"], t["valence_pcc"]["hi"]) == (-1.0, 1.0)
    assert (t["other"]["lo"], t["other"]["hi"]) == (plain["lo"], plain["hi"])  # unnamed keys: as before
    narrow = M.aggregate_songs([{"valence_pcc": v} for v in (0.4, 0.5, 0.6)])["valence_pcc"]
    assert (narrow["lo"], narrow["hi"]) == pytest.approx((M.interval([0.4, 0.5, 0.6])["lo"],
                                                          M.interval([0.4, 0.5, 0.6])["hi"]))


class _Payload:
    """Unpickling this runs a shell command (what a malicious checkpoint would do)."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"echo hi > {self.marker}",)


def test_a_checkpoint_with_code_is_refused_with_our_message_and_nothing_runs(tmp_path):
    marker, path = tmp_path / "ran.txt", tmp_path / "checkpoint.pt"
    torch.save({"model": {"w": torch.zeros(2)}, "extra": _Payload(marker)}, path)
    with pytest.raises(UserError) as err:
        load_checkpoint(path)
    message = str(err.value)
    assert message.startswith(f"{path}: refused") and "code or non-tensor Python objects" in message
    assert "system" in message and "dsaml never loads such files" in message
    assert "weights_only" not in message and "False" not in message and "\n" not in message
    assert not marker.exists()


def test_other_checkpoint_read_errors_stay_clear(tmp_path):
    good = tmp_path / "good.pt"
    torch.save({"w": torch.ones(3)}, good)
    assert torch.equal(load_checkpoint(good)["w"], torch.ones(3))
    cut = tmp_path / "cut.pt"
    cut.write_bytes(good.read_bytes()[:100])
    with pytest.raises(UserError, match=r"cut\.pt: cannot read checkpoint"):
        load_checkpoint(cut)
    with pytest.raises(UserError, match=r"missing\.pt: checkpoint not found"):
        load_checkpoint(tmp_path / "missing.pt")


def test_an_imagebind_checkpoint_with_code_is_refused_the_same_way(tmp_path):
    from dsaml_utils.encoders.imagebind import _read_checkpoint
    marker, path = tmp_path / "ran.txt", tmp_path / "imagebind_huge.pth"
    torch.save({"modality_preprocessors.audio.x": torch.zeros(2), "extra": _Payload(marker)}, path)
    with pytest.raises(UserError) as err:
        _read_checkpoint(path)
    message = str(err.value)
    assert message.startswith(f"{path}: refused") and "dsaml never loads such files" in message
    assert "weights_only" not in message and "\n" not in message and not marker.exists()


def test_device_and_symlinked_root_are_not_run_identity(tmp_path):
    real = tmp_path / "data"
    real.mkdir()
    (tmp_path / "link").symlink_to(real)
    a = preset("smoke", root=str(real))
    b = preset("smoke", root=str(tmp_path / "link"))
    b.train.device = "cuda"
    assert a.settings() == b.settings()
    b.train.steps = 3
    assert a.settings() != b.settings()
