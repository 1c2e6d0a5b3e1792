"""PMEmo loader and the openSMILE frame-feature reader against the fixture tree."""

from __future__ import annotations

import numpy as np
import pytest
from fixtures import PMEMO_FEATURES, PMEMO_LENGTHS, write_pmemo_fixture

from dsaml_utils.data.pmemo import load_pmemo, load_pmemo_frame_features
from dsaml_utils.data.types import MEAN
from dsaml_utils.errors import DataError


@pytest.fixture(scope="module")
def loaded(tmp_path_factory):
    fx = write_pmemo_fixture(tmp_path_factory.mktemp("pmemo"))
    return fx, load_pmemo(fx.root)


def replace_line(path, index, new):
    lines = path.read_text().splitlines()
    lines[index] = new
    path.write_text("\n".join(lines) + "\n")


def test_counts_and_paper_split(loaded):
    fx, ds = loaded
    assert ds.name == "pmemo" and ds.value_range == (0.0, 1.0)
    assert sorted(ds.songs, key=int) == fx.song_ids
    assert ds.train_ids == fx.train_ids == ["4", "5", "12", "13"]  # 25 s and 65 s themselves are train
    assert ds.test_ids == fx.test_ids == ["7", "10"]
    assert "1" in ds.songs and "1" not in ds.train_ids + ds.test_ids  # 20 s: dropped from the split
    assert ds.listeners() == [] and ds.anonymous_curves == 0
    assert all(list(s.curves) == [MEAN] for s in ds.songs.values())


def test_split_thresholds_are_parameters(loaded):
    fx, _ = loaded
    ds = load_pmemo(fx.root, min_seconds=35, test_min_seconds=45, check_audio=False)
    assert ds.train_ids == [s for s in fx.song_ids if 35 <= PMEMO_LENGTHS[s] <= 45] == ["5"]
    assert ds.test_ids == ["7", "10", "13"]
    ds = load_pmemo(fx.root, min_seconds=0, test_min_seconds=1000, check_audio=False)
    assert len(ds.train_ids) == 7 and ds.test_ids == []


def test_values_std_and_static(loaded):
    fx, ds = loaded
    for sid in fx.song_ids:
        t, a, v = fx.mean[sid]
        c = ds.songs[sid].curves[MEAN]
        np.testing.assert_allclose(c.times, t)
        np.testing.assert_allclose(c.values(), np.stack([a, v], 1), atol=1e-6)
        s = ds.songs[sid].mean_std
        np.testing.assert_allclose(s.times, t)
        np.testing.assert_allclose(s.values(), np.stack(fx.std[sid][1:], 1), atol=1e-6)
        assert ds.songs[sid].static == pytest.approx(dict(zip(("arousal", "valence"), fx.static[sid])))
    c = ds.songs["7"].curves[MEAN]
    assert c.times[0] == 15.5 and c.times[-1] == 65.5 and len(c) == 101


def test_corrupt_audio_reported_rest_loads(loaded):
    fx, ds = loaded
    assert ds.songs["5"].audio_path is None and "5" in ds.train_ids
    assert any(str(fx.corrupt_audio) in p and "not decodable" in p for p in ds.problems)
    assert ds.songs["4"].audio_path == fx.root / "chorus" / "4.mp3"
    assert sum(s.audio_path is not None for s in ds.songs.values()) == fx.songs_with_audio == 6


def test_non_numeric_and_ragged_rows_name_the_file(tmp_path):
    fx = write_pmemo_fixture(tmp_path)
    replace_line(fx.files["dynamic"], 3, "4,16.5,high,0.5")
    with pytest.raises(DataError, match=r"dynamic_annotations\.csv: line 4, column 'Arousal\(mean\)'"):
        load_pmemo(fx.root)
    replace_line(fx.files["dynamic"], 3, "4,16.5,0.5")
    with pytest.raises(DataError, match=r"dynamic_annotations\.csv: line 4 has 3 fields"):
        load_pmemo(fx.root)


def test_out_of_range_and_time_gap_reported(tmp_path):
    fx = write_pmemo_fixture(tmp_path)
    lines = fx.files["dynamic"].read_text().splitlines()
    i = next(k for k, line in enumerate(lines) if line.startswith("4,17,"))
    lines[i] = "4,17,1.2,0.5"
    j = next(k for k, line in enumerate(lines) if line.startswith("10,20.5,"))
    del lines[j]
    fx.files["dynamic"].write_text("\n".join(lines) + "\n")
    ds = load_pmemo(fx.root, check_audio=False)
    assert any("song 4" in p and "frameTime 17" in p and "1.2" in p for p in ds.problems)
    assert ds.songs["10"].curves[MEAN].times[-1] == 20.0
    assert any("song 10" in p and "jumps from 20 to 21" in p for p in ds.problems)
    assert "10" not in ds.train_ids + ds.test_ids  # cut to 20.5 s: shorter than 25 s


def test_missing_root_and_annotations(tmp_path):
    with pytest.raises(DataError, match="dataset root not found"):
        load_pmemo(tmp_path / "nowhere")
    with pytest.raises(DataError, match=r"no PMEmo annotations found; tried .*dynamic_annotations\.csv"):
        load_pmemo(tmp_path)


def test_optional_files_missing_are_problems(tmp_path):
    fx = write_pmemo_fixture(tmp_path)
    fx.files["std"].unlink()
    fx.files["metadata"].unlink()
    ds = load_pmemo(fx.root, check_audio=False)
    assert all(s.mean_std is None for s in ds.songs.values())
    assert any("dynamic_annotations_std.csv" in p for p in ds.problems)
    assert any("metadata.csv" in p for p in ds.problems)


def test_frame_features(loaded):
    fx, _ = loaded
    feats = load_pmemo_frame_features(fx.root)
    assert sorted(feats, key=int) == fx.song_ids
    times, x, names = feats["7"]
    assert names == list(PMEMO_FEATURES) and x.dtype == np.float32
    assert x.shape == (len(fx.mean["7"][0]), len(PMEMO_FEATURES))
    np.testing.assert_allclose(times, fx.mean["7"][0])
    np.testing.assert_allclose(x, fx.features["7"], atol=1e-6)


def test_frame_features_from_a_deam_style_per_song_file(tmp_path):
    path = tmp_path / "10.csv"  # DEAM's openSMILE files: ';'-separated, no song id column
    path.write_text("frameTime;F0final_sma_amean;pcm_zcr_sma_amean\n0.0;1.5;0.25\n0.5;2.5;0.75\n")
    feats = load_pmemo_frame_features(path)
    times, x, names = feats["10"]
    np.testing.assert_allclose(times, [0.0, 0.5])
    np.testing.assert_allclose(x, [[1.5, 0.25], [2.5, 0.75]])
    assert names == ["F0final_sma_amean", "pcm_zcr_sma_amean"]
    assert list(load_pmemo_frame_features(path, song_id="x")) == ["x"]


def test_frame_features_bad_cells(tmp_path):
    path = tmp_path / "f.csv"
    path.write_text("musicId,frameTime,a,b\n1,15.5,0.1,oops\n")
    with pytest.raises(DataError, match=r"f\.csv: line 2, column 'b': 'oops' is not a number"):
        load_pmemo_frame_features(path)
    path.write_text("musicId,frameTime,a,b\n1,15.5,0.1,\n")
    with pytest.raises(DataError, match=r"line 2, column 'b': empty cell"):
        load_pmemo_frame_features(path)
    path.write_text("musicId,frameTime,a,b\n1,15.5,0.1\n")
    with pytest.raises(DataError, match=r"f\.csv: line 2 has 3 fields but the header has 4"):
        load_pmemo_frame_features(path)
    path.write_text("musicId,frameTime,a,b\n")
    with pytest.raises(DataError, match="no data rows"):
        load_pmemo_frame_features(path)
    with pytest.raises(DataError, match="not found"):
        load_pmemo_frame_features(tmp_path / "none")
