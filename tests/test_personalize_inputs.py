"""`dsaml personalize` checks its inputs before adapting and never overwrites; `dsaml embed` prints what it wrote."""

import json
import shutil

import numpy as np
import pytest
from fixtures import write_audio
from test_train import one_thread, tiny_cache, tiny_config, tiny_ds, tiny_root  # noqa: F401 (fixtures)

from dsaml_utils.cli import main as cli_main
from dsaml_utils.data.synthetic.config import AUDIO_DIR
from dsaml_utils.evaluation.curves import write_curve_csv
from dsaml_utils.features.cache import FeatureCache
from dsaml_utils.training.trainer import train

SR = 8000  # the tiny run's mel.sample_rate


@pytest.fixture(scope="module")
def tiny_run(tiny_ds, tiny_root, tiny_cache, tmp_path_factory):  # noqa: F811
    run = tmp_path_factory.mktemp("personalrun") / "pdmer"
    cfg = tiny_config(tiny_root, tiny_cache, mode="pdmer", extra=["eval.draws=2"])
    train(cfg, run, ds=tiny_ds, cache=FeatureCache(tiny_cache), progress=False)
    return run


def curve_file(path, n, value=0.0, bad=None):
    """A time,arousal,valence CSV of n labels from 0 s; bad = (row, value) puts one valence value there."""
    vals = np.full((n, 2), value)
    if bad is not None:
        vals[bad[0], 1] = bad[1]
    write_curve_csv(path, 0.5 * np.arange(n), vals)
    return path


def personalize(run, out, *extra):
    return cli_main(["personalize", "--run", str(run), "--out", str(out), "--quiet", *map(str, extra)])


def test_support_curve_longer_than_its_audio_is_refused(tiny_run, tmp_path, capsys):
    audio, song = tmp_path / "ten.wav", tmp_path / "song.wav"
    write_audio(audio, 3.0, SR, 1)
    write_audio(song, 2.0, SR, 2)
    curve = curve_file(tmp_path / "mine.csv", 20)  # 10 s of labels for 3 s of audio
    out = tmp_path / "out"
    assert personalize(tiny_run, out, "--support", audio, curve, "--predict", song) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and str(curve) in err and str(audio) in err and "10 s" in err and "3.00 s" in err
    assert not out.exists()


def test_support_curve_within_the_tolerance_is_accepted(tiny_run, tmp_path, capsys):
    song = tmp_path / "song.wav"
    write_audio(song, 2.0, SR, 2)
    curve = curve_file(tmp_path / "mine.csv", 6)  # labels to 3.0 s
    ok, short = tmp_path / "ok.wav", tmp_path / "short.wav"
    write_audio(ok, 2.95, SR, 1)  # 0.05 s short: decoder slack
    write_audio(short, 2.85, SR, 1)  # 0.15 s short: refused
    assert personalize(tiny_run, tmp_path / "a", "--support", ok, curve, "--predict", song) == 0
    assert personalize(tiny_run, tmp_path / "b", "--support", short, curve, "--predict", song) == 2
    err = capsys.readouterr().err
    assert str(curve) in err and "2.85 s" in err and not (tmp_path / "b").exists()
    from dsaml_utils.experiments.personalize import SUPPORT_TOLERANCE

    assert SUPPORT_TOLERANCE == 0.1  # the documented slack this test sits around


def test_support_value_outside_the_dataset_range_is_refused(tiny_run, tmp_path, capsys):
    audio, song = tmp_path / "sup.wav", tmp_path / "song.wav"
    write_audio(audio, 4.0, SR, 1)
    write_audio(song, 2.0, SR, 2)
    curve = curve_file(tmp_path / "mine.csv", 8, bad=(2, 1.5))  # synthetic range [-1, 1]
    assert personalize(tiny_run, tmp_path / "out", "--support", audio, curve, "--predict", song) == 2
    err = capsys.readouterr().err
    assert str(curve) in err and "line 4" in err and "time 1 s" in err and "1.5" in err and "[-1, 1]" in err
    assert not (tmp_path / "out").exists()
    # the same run relabelled as PMEmo: [0, 1], so -0.5 (fine on DEAM's scale) is refused
    pm = tmp_path / "pmemo_run"
    shutil.copytree(tiny_run, pm)
    cfg = json.loads((pm / "config.json").read_text())
    cfg["dataset"] = "pmemo"
    (pm / "config.json").write_text(json.dumps(cfg))
    neg = curve_file(tmp_path / "neg.csv", 8, value=-0.5)
    assert personalize(pm, tmp_path / "pm", "--support", audio, neg, "--predict", song) == 2
    err = capsys.readouterr().err
    assert "line 2" in err and "-0.5" in err and "[0, 1]" in err


def test_negative_start_is_refused(tiny_run, tiny_ds, tiny_root, tmp_path, capsys):  # noqa: F811
    audio = tiny_root / AUDIO_DIR / f"{tiny_ds.test_ids[0]}.mp3"
    curve = curve_file(tmp_path / "mine.csv", 8)
    out = tmp_path / "out"
    assert personalize(tiny_run, out, "--support", audio, curve, "--predict", audio, "--start", -1) == 2
    assert "--start" in capsys.readouterr().err
    assert not out.exists()


def test_two_songs_with_one_name_are_refused_before_writing(tiny_run, tmp_path, capsys):
    audio = tmp_path / "sup.wav"
    write_audio(audio, 4.0, SR, 1)
    a, b = tmp_path / "a" / "song.wav", tmp_path / "b" / "Song.wav"  # also one file on a case-blind disk
    write_audio(a, 2.0, SR, 2)
    write_audio(b, 2.5, SR, 3)
    curve = curve_file(tmp_path / "mine.csv", 8)
    out = tmp_path / "out"
    assert personalize(tiny_run, out, "--support", audio, curve, "--predict", a, b) == 2
    err = capsys.readouterr().err
    assert str(a) in err and str(b) in err
    assert not out.exists()


def test_outputs_are_never_silently_overwritten_and_written_paths_are_printed(tiny_run, tmp_path, capsys):
    audio, song, other = tmp_path / "sup.wav", tmp_path / "song.wav", tmp_path / "other.wav"
    write_audio(audio, 4.0, SR, 1)
    write_audio(song, 2.0, SR, 2)
    write_audio(other, 2.5, SR, 3)
    curve = curve_file(tmp_path / "mine.csv", 8)
    out = tmp_path / "out"
    files = [out / "personal.pt", out / "song.csv", out / "song.png"]
    assert personalize(tiny_run, out, "--support", audio, curve, "--predict", song) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed == [f"wrote {p}" for p in files] and all(p.is_file() for p in files)
    before = {p: p.read_bytes() for p in files}
    # the same call again: refused, nothing touched
    assert personalize(tiny_run, out, "--support", audio, curve, "--predict", song) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert {p: p.read_bytes() for p in files} == before
    # asked for: replaced, and said so
    assert personalize(tiny_run, out, "--support", audio, curve, "--predict", song, "--overwrite") == 0
    assert capsys.readouterr().out.splitlines() == [f"replaced {p}" for p in files]
    # a saved state only read, not rewritten; a new song beside the old ones
    state = (out / "personal.pt").read_bytes()
    assert personalize(tiny_run, out, "--personal", out / "personal.pt", "--predict", other) == 0
    assert capsys.readouterr().out.splitlines() == [f"personal state read from {out / 'personal.pt'}",
                                                    f"wrote {out / 'other.csv'}", f"wrote {out / 'other.png'}"]
    assert (out / "personal.pt").read_bytes() == state


@pytest.mark.parametrize("given, written", [("folder", "folder/embeddings.npy"), ("new/", "new/embeddings.npy"),
                                            ("emb", "emb.npy"), ("e.npy", "e.npy")])
def test_embed_prints_the_file_it_wrote(tmp_path, monkeypatch, capsys, given, written):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "folder").mkdir()
    a = tmp_path / "a.wav"
    write_audio(a, 1.0, SR, 1)
    assert cli_main(["embed", str(a), "--encoder", "none", "--no-cache", "--out", given]) == 0
    assert capsys.readouterr().out.strip().endswith(f"embeddings to {written}")
    assert np.load(tmp_path / written).shape == (1, 0)


def test_embed_and_export_never_replace_an_output_unasked(tmp_path, capsys):
    a = tmp_path / "a.wav"
    write_audio(a, 1.0, SR, 1)
    out = tmp_path / "e.npy"
    np.save(out, np.arange(3))
    assert cli_main(["embed", str(a), "--encoder", "none", "--no-cache", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and f"{out}: exists already" in err and "--overwrite" in err
    assert np.load(out).tolist() == [0, 1, 2]  # untouched
    assert cli_main(["embed", str(a), "--encoder", "none", "--no-cache", "--out", str(out), "--overwrite"]) == 0
    assert capsys.readouterr().out.strip().startswith("replaced 1 x 0")
    assert np.load(out).shape == (1, 0)
    target = tmp_path / "audio.pth"
    target.write_bytes(b"keep")
    assert cli_main(["export-imagebind-audio", "--checkpoint", str(tmp_path / "none.pth"), "--out", str(target)]) == 2
    assert f"{target}: exists already" in capsys.readouterr().err and target.read_bytes() == b"keep"
