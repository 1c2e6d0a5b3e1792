"""`dsaml inspect` through cli.main: JSON fields, text output and exit statuses."""

from __future__ import annotations

import json

import pytest
from fixtures import write_deam_fixture, write_pmemo_fixture

from dsaml_utils import cli
from dsaml_utils.cli import data as cli_data


@pytest.fixture
def only_inspect(monkeypatch):
    """Build the CLI with just `dsaml inspect`, so these tests do not depend on other stages."""
    monkeypatch.setattr(cli, "COMMAND_GROUPS", (cli_data,))


@pytest.fixture(scope="module")
def deam_root(tmp_path_factory):
    # inspect decodes every file: the audio must cover the labels (up to 30 s for song 2001)
    return write_deam_fixture(tmp_path_factory.mktemp("deam"), audio_seconds=30.0).root


def test_inspect_is_registered():
    assert cli_data in cli.COMMAND_GROUPS


def test_inspect_json(only_inspect, deam_root, capsys):
    assert cli.main(["inspect", "--dataset", "deam", "--root", str(deam_root), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["usable"] is True and out["name"] == "deam"
    assert (out["songs_annotated"], out["songs_with_audio"], out["listeners"], out["listener_curves"],
            out["test_songs"], out["train_songs"], out["anonymous_curves"]) == (12, 10, 3, 14, 2, 10, 15)
    assert any("3.mp3" in p for p in out["problems"])
    assert any("fewer than the 20 needed" in p for p in out["problems"])  # 5 songs <= 1000: swap not judged


def test_inspect_text_and_synthetic_name(only_inspect, deam_root, capsys):
    assert cli.main(["inspect", "--dataset", "synthetic", "--root", str(deam_root)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("dataset    synthetic")
    assert "12 annotated, 10 with audio" in out and "usable     yes" in out


def test_inspect_pmemo(only_inspect, tmp_path, capsys):
    root = write_pmemo_fixture(tmp_path).root
    assert cli.main(["inspect", "--dataset", "pmemo", "--root", str(root), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert (out["train_songs"], out["test_songs"], out["unsplit_songs"], out["listeners"]) == (4, 2, 1, 0)


def test_inspect_missing_root_exits_2(only_inspect, tmp_path, capsys):
    missing = tmp_path / "nope"
    assert cli.main(["inspect", "--dataset", "deam", "--root", str(missing), "--json"]) == 2
    cap = capsys.readouterr()
    assert json.loads(cap.out) == {"usable": False, "reason": f"{missing}: dataset root not found"}
    assert cap.err.strip().count("\n") == 0 and "dataset root not found" in cap.err


def test_inspect_no_annotations_lists_paths_tried(only_inspect, tmp_path, capsys):
    assert cli.main(["inspect", "--dataset", "deam", "--root", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.strip().count("\n") == 0
    assert "no DEAM annotations found; tried" in err and "DEAM_Annotations/annotations" in err


def test_inspect_unusable_dataset_exits_2(only_inspect, tmp_path, capsys):
    fx = write_deam_fixture(tmp_path)
    for dim in ("arousal", "valence"):  # remove the full songs: no test split left
        path = fx.files[dim]
        path.write_text("\n".join(line for line in path.read_text().splitlines()
                                  if not line.startswith("200")) + "\n")
    assert cli.main(["inspect", "--dataset", "deam", "--root", str(fx.root), "--json"]) == 2
    cap = capsys.readouterr()
    out = json.loads(cap.out)
    assert out["usable"] is False and out["reason"] == "no test songs in the paper's split"
    assert "no test songs" in cap.err and cap.err.strip().count("\n") == 0
