"""openSMILE frame features: values against openSMILE's own LLDs, published column names, the writers, and the
`dsaml features` / `dsaml synth` commands that write them."""

from __future__ import annotations

import contextlib
import io
import os
from pathlib import Path

import numpy as np
import opensmile
import pytest
from fixtures import write_corrupt, write_pmemo_fixture

from dsaml_utils import cli
from dsaml_utils.data.deam import load_deam
from dsaml_utils.data.frames import load_frame_features, read_frame_table
from dsaml_utils.data.pmemo import load_pmemo_frame_features
from dsaml_utils.data.types import MEAN
from dsaml_utils.errors import DataError, UserError
from dsaml_utils.features import opensmile as fo

FIXTURES = Path(__file__).parent / "fixtures"
SR = 16000


def published_header(name: str) -> list[str]:
    """The header line of a fixture file (its '#' line says where it comes from)."""
    line = next(x for x in (FIXTURES / name).read_text().splitlines() if x and not x.startswith("#"))
    return line.split(";" if ";" in line else ",")


def make_signal(seconds: float = 4.0, sr: int = SR) -> np.ndarray:
    """A tone gliding 180 -> 300 Hz with a swelling envelope, plus noise: every descriptor moves."""
    t = np.arange(int(seconds * sr)) / sr
    f0 = 180 + 30 * t
    env = 0.2 + 0.15 * np.sin(2 * np.pi * 0.7 * t)
    x = env * np.sin(2 * np.pi * np.cumsum(f0) / sr) + 0.03 * np.random.default_rng(0).standard_normal(len(t))
    return x.astype(np.float32)


@pytest.fixture(scope="module")
def signal_and_summary():
    x = make_signal()
    return x, fo.frame_summary(x, SR)


def opensmile_llds(x: np.ndarray, level: str) -> tuple[np.ndarray, list[str]]:
    """The IS13 ComParE LLDs (level 'lld') or deltas ('lld_de') straight from openSMILE, in its own names."""
    root = opensmile.Smile(feature_set=opensmile.FeatureSet.ComParE_2016,
                           feature_level=opensmile.FeatureLevel.LowLevelDescriptors).default_config_root
    smile = opensmile.Smile(feature_set=os.path.join(root, "is09-13", "IS13_ComParE.conf"), feature_level=level)
    df = smile.process_signal(x, SR)
    return df.to_numpy(np.float64), list(df.columns)


@pytest.mark.parametrize("window", [2, -1])  # a full 1 s window, and the last one (cut short by the end)
def test_each_window_mean_and_std_equal_openSMILEs_llds_over_that_window(signal_and_summary, window):
    x, s = signal_and_summary
    levels = {level: opensmile_llds(x, level) for level in ("lld", "lld_de")}
    n = min(len(v) for v, _ in levels.values())  # lld-func reads both levels with one reader: the common rows
    j = window % len(s.times)
    for llds, names in levels.values():
        assert len(names) == 65
        rows = llds[50 * j: min(n, 50 * j + 100)]  # 10 ms LLD steps at 16 kHz: the window [0.5 j, 0.5 j + 1) s
        for k, name in enumerate(names):
            col = s.names.index("pcm_fftMag_" + name if name.startswith("mfcc") else name)
            np.testing.assert_allclose(s.mean[j, col], rows[:, k].mean(), rtol=1e-6, atol=1e-9, err_msg=name)
            np.testing.assert_allclose(s.std[j, col], rows[:, k].std(), rtol=1e-6, atol=1e-9, err_msg=name)
    assert s.times[j] == 0.5 * j


def test_column_names_and_order_are_the_published_ones(signal_and_summary):
    _, s = signal_and_summary
    assert fo.deam_columns(s.names) == published_header("deam_features_header.txt")
    assert fo.pmemo_columns(s.names) == published_header("pmemo_dynamic_features_header.txt")
    deam, pmemo = fo.deam_values(s), fo.pmemo_values(s)
    k = s.names.index("pcm_RMSenergy_sma_de")
    assert deam[3, 2 * k] == s.std[3, k] and deam[3, 2 * k + 1] == s.mean[3, k]
    assert pmemo[3, k] == s.mean[3, k] and pmemo[3, 130 + k] == s.std[3, k]


def test_frame_times_start_at_zero_and_the_last_windows_follow_the_config(signal_and_summary):
    x, s = signal_and_summary
    assert s.times[0] == 0.0 and np.allclose(np.diff(s.times), 0.5)
    assert s.times[-1] == 3.5  # every window that starts inside 4 s of audio
    complete = fo.frame_summary(x, SR, fo.SmileConfig(partial_last=False))
    assert complete.times[-1] == 2.5  # SMILExtract's rule: only whole 1 s windows (60 ms frames end before 4 s)
    np.testing.assert_array_equal(complete.mean, s.mean[: len(complete.times)])


def test_windows_follow_lld_start_times_where_10_ms_is_not_whole_samples():
    cfg = fo.SmileConfig()
    assert fo.window_rows(400, 160, 16000, cfg)[1] == (50, 150)
    rows = fo.window_rows(4485, 221, 22050, cfg)  # 221-sample LLD steps at 22050 Hz (10.023 ms)
    assert rows[89] == (4440, 4485) and len(rows) == 90  # by time: row 4440 starts at 44.50 s, not row 4450
    assert rows[2] == (100, 200)


def test_full_scale_samples_do_not_wrap_around():
    x = np.full(SR, 1.0, np.float32)
    x[::2] = -1.0
    a, _, _ = fo.lld_frames(x, SR)
    b, _, _ = fo.lld_frames(np.clip(x, -1, 32767 / 32768), SR)
    np.testing.assert_array_equal(a, b)
    assert a[:, 8].max() > 0.9  # pcm_RMSenergy of a full-scale square wave, not of a wrapped-around one


def test_short_or_corrupt_audio_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match="too short"):
        fo.frame_summary(np.zeros(int(0.03 * SR), np.float32), SR)
    bad = tmp_path / "9.mp3"
    write_corrupt(bad)
    with pytest.raises(DataError, match=r"9\.mp3"):
        fo.song_summary(bad)
    with pytest.raises(UserError, match="feature_set"):
        fo.SmileConfig(feature_set="IS09")


def test_both_writers_read_back_as_written(signal_and_summary, tmp_path):
    _, s = signal_and_summary
    deam = tmp_path / "features" / "7.csv"
    deam.parent.mkdir()
    deam.write_text(fo.deam_text(s))
    assert deam.read_text().splitlines()[1].startswith("0.000000;")  # frameTime as openSMILE's csvSink prints it
    table = read_frame_table(deam)
    assert table.names == fo.deam_columns(s.names)[1:] and table.ids is None
    np.testing.assert_allclose(table.values, fo.deam_values(s), rtol=1e-6)
    long = tmp_path / "dynamic_features.csv"
    long.write_text(fo.pmemo_text({"12": s, "3": s}))
    got = load_pmemo_frame_features(long)
    assert list(got) == ["12", "3"] and got["3"][2] == fo.pmemo_columns(s.names)[2:]
    np.testing.assert_allclose(got["12"][0], s.times)
    np.testing.assert_allclose(got["12"][1], fo.pmemo_values(s), rtol=1e-6)


def run_cli(argv: list[str]) -> tuple[int, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = cli.main(argv)
    return rc, out.getvalue() + err.getvalue()


SYNTH = ["--songs", "2", "--anonymous-songs", "0", "--full-songs", "1", "--listeners", "2", "--test-listeners", "1",
         "--lazy-listeners", "0", "--raters-per-song", "2", "--raters-per-full-song", "1", "--clip-seconds", "16",
         "--full-seconds", "17", "17", "--sample-rate", "8000", "--workers", "2"]


@pytest.fixture(scope="module")
def synth_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthfeat") / "ds"
    rc, out = run_cli(["synth", "--out", str(root)] + SYNTH)
    assert rc == 0, out
    return root


def test_synth_writes_deam_feature_files_the_deam_loader_reads(synth_root, tmp_path):
    assert sorted(p.name for p in (synth_root / "features").iterdir()) == ["2.csv", "2001.csv", "3.csv"]
    ds = load_deam(synth_root, name="synthetic")
    frames = load_frame_features(ds)
    assert sorted(frames) == ["2", "2001", "3"]
    assert not [p for p in ds.problems if "feature" in p]
    for sid, f in frames.items():
        np.testing.assert_array_equal(f.times, ds.songs[sid].curves[MEAN].times)  # every label step has its row
        assert f.values.shape == (len(f.times), 260) and np.isfinite(f.values).all()
    rc, _ = run_cli(["synth", "--out", str(tmp_path / "nf"), "--no-features"] + SYNTH)
    assert rc == 0 and not (tmp_path / "nf" / "features").exists()


def test_features_cli_keeps_refuses_and_overwrites(synth_root):
    files = {p.name: p for p in (synth_root / "features").iterdir()}
    before = {k: (p.read_bytes(), p.stat().st_mtime_ns) for k, p in files.items()}
    rc, out = run_cli(["features", "--dataset", "synthetic", "--root", str(synth_root)])
    assert rc == 0 and "wrote 0 feature files, kept 3 up to date" in out
    assert before == {k: (p.read_bytes(), p.stat().st_mtime_ns) for k, p in files.items()}
    audio = synth_root / "DEAM_audio" / "MEMD_audio" / "3.mp3"
    # the audio changed after its features were computed: the features file is made older than the audio (not
    # the audio newer than now, which a fast rewrite could precede)
    earlier = audio.stat().st_mtime_ns - 10 * 10**9
    os.utime(files["3.csv"], ns=(earlier, earlier))
    rc, out = run_cli(["features", "--dataset", "synthetic", "--root", str(synth_root)])
    assert rc == 2 and "3.csv: older than its audio" in out and "--overwrite" in out
    assert files["3.csv"].stat().st_mtime_ns == earlier  # not replaced
    rc, out = run_cli(["features", "--dataset", "synthetic", "--root", str(synth_root), "--overwrite"])
    assert rc == 0 and "wrote 3 feature files" in out
    assert files["3.csv"].stat().st_mtime_ns >= audio.stat().st_mtime_ns > earlier
    assert files["3.csv"].read_bytes() == before["3.csv"][0]  # same audio bytes, same features
    write_corrupt(synth_root / "DEAM_audio" / "MEMD_audio" / "2.mp3")
    rc, out = run_cli(["features", "--dataset", "synthetic", "--root", str(synth_root)])
    assert rc == 0 and "skipped 1 songs" in out and "2.mp3" in out


def test_features_cli_on_a_pmemo_root(tmp_path):
    fx = write_pmemo_fixture(tmp_path / "pmemo", audio_seconds=2.0)
    published = fx.files["features"].read_bytes()
    rc, out = run_cli(["features", "--dataset", "pmemo", "--root", str(fx.root)])
    assert rc == 2 and "dynamic_features.csv" in out and "not replaced" in out  # older than the audio
    assert fx.files["features"].read_bytes() == published
    rc, out = run_cli(["features", "--dataset", "pmemo", "--root", str(fx.root), "--overwrite"])
    assert rc == 0 and "skipped 1 songs" in out  # song 5's audio is corrupt
    got = load_pmemo_frame_features(fx.root)
    assert sorted(got, key=int) == [s for s in fx.song_ids if s != "5"]
    assert got["4"][2] == published_header("pmemo_dynamic_features_header.txt")[2:]
    np.testing.assert_allclose(got["4"][0], [0.0, 0.5, 1.0, 1.5])
    assert (fx.root / "features" / "dynamic_features" / "4.csv").is_file()
    rc, out = run_cli(["features", "--dataset", "pmemo", "--root", str(fx.root)])
    assert rc == 0 and "kept 1 up to date" in out
