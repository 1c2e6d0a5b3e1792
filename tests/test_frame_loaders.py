"""Frame feature loaders: DEAM's per-song files and PMEmo's long file, put on each song's label times."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from fixtures import PMEMO_FEATURES, write_pmemo_fixture

from dsaml_utils.data.frames import FRAME_TOLERANCE, load_frame_features, read_frame_table
from dsaml_utils.data.pmemo import load_pmemo
from dsaml_utils.data.types import MEAN, Curve, MusicDataset, Song
from dsaml_utils.errors import DataError

NAMES = ["F0final_sma_stddev", "F0final_sma_amean", "pcm_zcr_sma_stddev"]


def dataset(name: str, root: Path, first: float, steps: dict[str, int]) -> MusicDataset:
    """Songs whose MEAN curves start at `first` s with the given number of 0.5 s steps."""
    songs = {}
    for sid, n in steps.items():
        t = first + 0.5 * np.arange(n)
        songs[sid] = Song(sid, None, {MEAN: Curve(t, np.zeros(n), np.zeros(n))})
    return MusicDataset(name, root, songs, list(steps), [], (-1.0, 1.0))


def value(sid: str, t: np.ndarray) -> np.ndarray:
    """The feature values written for song `sid` at frameTimes t: [len(t), 3], easy to check."""
    return np.stack([int(sid) + t, 100 * t, -t], axis=1)


def rows(sid: str, times: np.ndarray, sep: str, id_col: bool, nan_at: float | None = None) -> list[str]:
    out = []
    for t, v in zip(times, value(sid, times)):
        cells = [f"{x:g}" for x in v]
        if nan_at is not None and abs(t - nan_at) < 1e-9:
            cells[1] = "" if sep == ";" else "nan"
        out.append(sep.join(([sid] if id_col else []) + [f"{t:f}"] + cells))
    return out


def grid(end: float) -> np.ndarray:
    """frameTimes 0, 0.5, ..., end (the published convention: a row per window start from 0)."""
    return 0.5 * np.arange(int(round(end / 0.5)) + 1)


def write_deam(root: Path) -> MusicDataset:
    """Songs 2..7 labelled 15-19.5 s (10 steps): whole, missing, NaN at 17 s, ends at 18 s, ',' file, shifted."""
    d = root / "features"
    d.mkdir(parents=True)
    header = ";".join(["frameTime"] + NAMES)
    (d / "2.csv").write_text("\n".join([header] + rows("2", grid(21.0), ";", False)) + "\n")
    (d / "4.csv").write_text("\n".join([header] + rows("4", grid(21.0), ";", False, nan_at=17.0)) + "\n")
    (d / "5.csv").write_text("\n".join([header] + rows("5", grid(18.0), ";", False)) + "\n")
    (d / "6.csv").write_text("\n".join([header.replace(";", ",")] + rows("6", grid(21.0), ",", False)) + "\n")
    (d / "7.csv").write_text("\n".join([header] + rows("7", grid(21.0) + 0.25, ";", False)) + "\n")
    (d / "99.csv").write_text("\n".join([header] + rows("99", grid(21.0), ";", False)) + "\n")
    return dataset("deam", root, 15.0, {s: 10 for s in ("2", "3", "4", "5", "6", "7")})


@pytest.fixture
def deam(tmp_path):
    ds = write_deam(tmp_path)
    return ds, load_frame_features(ds)


def test_deam_rows_are_matched_to_label_times(deam):
    ds, got = deam
    labels = ds.songs["2"].curves[MEAN].times
    f = got["2"]
    np.testing.assert_array_equal(f.times, labels)
    np.testing.assert_allclose(f.values, value("2", labels), rtol=1e-6)  # rows 15.0-19.5, not the first ten
    assert f.names == NAMES and f.values.dtype == np.float32
    np.testing.assert_allclose(got["6"].values, value("6", labels), rtol=1e-6)  # ',' is read as well as ';'


def test_deam_missing_song_is_reported_and_skipped(deam):
    ds, got = deam
    assert "3" not in got
    assert any("song 3:" in p and "3.csv: frame feature file not found; song skipped" in p for p in ds.problems)
    assert any("99.csv" in p and "not used" in p for p in ds.problems)  # a file of a song without labels


def test_deam_nan_is_reported_with_file_line_and_column_and_cuts_the_song(deam):
    ds, got = deam
    assert any("4.csv: line 36 (frameTime 17), column 'F0final_sma_amean': empty cell or NaN" in p
               for p in ds.problems)
    np.testing.assert_array_equal(got["4"].times, 15.0 + 0.5 * np.arange(4))  # 15-16.5 s; never padded
    assert any("4.csv: song 4: no usable row at 17 s: 17-19.5 s (6 steps) of 10 label times are not used" in p
               for p in ds.problems)


def test_deam_file_shorter_than_its_labels_names_the_missing_steps(deam):
    ds, got = deam
    np.testing.assert_array_equal(got["5"].times, 15.0 + 0.5 * np.arange(7))  # rows end at 18 s
    msg = next(p for p in ds.problems if "5.csv: song 5" in p)
    assert "rows end at 18 s: 18.5, 19, 19.5 s of 10 label times have no features" in msg and "never padded" in msg


def test_deam_rows_off_the_label_times_do_not_match(deam):
    ds, got = deam
    assert 0.25 > FRAME_TOLERANCE and "7" not in got  # frameTimes 15.25, 15.75, ...: no row is a label's
    assert any("7.csv: song 7: no usable row at its first label time 15 s" in p for p in ds.problems)


def test_no_feature_folder_is_a_clear_error(tmp_path):
    ds = dataset("deam", tmp_path, 15.0, {"2": 4})
    with pytest.raises(DataError, match="no frame features found.*dsaml features"):
        load_frame_features(ds)


@pytest.mark.parametrize("sep", [",", ";"])
def test_pmemo_long_file_in_either_delimiter(tmp_path, sep):
    path = tmp_path / "features" / "dynamic_features.csv"
    path.parent.mkdir()
    lines = [sep.join(["musicId", "frameTime"] + NAMES + ["class"])]
    for sid, end, nan_at in (("10", 25.0, None), ("12", 17.0, None), ("14", 25.0, 16.5)):
        lines += [r + sep + "?" for r in rows(sid, grid(end), sep, True, nan_at)]
    path.write_text("\n".join(lines) + "\n")
    ds = dataset("pmemo", tmp_path, 15.5, {"10": 12, "12": 12, "13": 12, "14": 12})
    got = load_frame_features(ds)
    labels = ds.songs["10"].curves[MEAN].times
    assert sorted(got) == ["10", "12", "14"] and got["10"].names == NAMES  # the 'class' column is dropped
    np.testing.assert_allclose(got["10"].values, value("10", labels), rtol=1e-6)
    np.testing.assert_array_equal(got["12"].times, [15.5, 16.0, 16.5, 17.0])  # the file ends at 17 s
    np.testing.assert_array_equal(got["14"].times, [15.5, 16.0])  # cut before its NaN row
    assert any("no rows for song 13; song skipped" in p for p in ds.problems)
    assert any("dynamic_features.csv: line" in p and "frameTime 16.5" in p and "'F0final_sma_amean'" in p
               for p in ds.problems)
    assert any("song 12: rows end at 17 s: 17.5-21 s (8 steps) of 12 label times" in p for p in ds.problems)


def test_pmemo_fixture_features_line_up_with_its_annotations(tmp_path):
    fx = write_pmemo_fixture(tmp_path)
    ds = load_pmemo(fx.root, check_audio=False)
    got = load_frame_features(ds)
    assert sorted(got, key=int) == fx.song_ids
    for sid in fx.song_ids:
        np.testing.assert_array_equal(got[sid].times, fx.mean[sid][0])
        np.testing.assert_allclose(got[sid].values, fx.features[sid], atol=1e-6)
        assert got[sid].names == list(PMEMO_FEATURES)
    assert not [p for p in ds.problems if "dynamic_features" in p]


def test_strict_structure_errors_still_raise(tmp_path):
    path = tmp_path / "f.csv"
    path.write_text("musicId;frameTime;a\n1;0.0;1\n1.5;0.5;2\n")
    with pytest.raises(DataError, match=r"line 3, column 'musicId': not an integer song id"):
        read_frame_table(path)
    path.write_text("musicId,time,a\n1,0.0,1\n")
    with pytest.raises(DataError, match="no column 'frameTime'"):
        read_frame_table(path)
