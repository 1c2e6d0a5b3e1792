"""DEAM loader against the fixture tree: counts, exact values, and every reported problem."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from fixtures import (
    ANON_ROWS,
    DEAM_RATER,
    FLAT,
    SHORT_RATER,
    WORKERS,
    write_deam_fixture,
)

from dsaml_utils.data.deam import (
    check_static_swap,
    load_deam,
    read_rater_file,
    sample_seconds,
)
from dsaml_utils.data.types import MEAN
from dsaml_utils.errors import DataError

W1, W2, W3 = WORKERS


def load_quiet(root, **kw):
    """Load while collecting warnings (the default fixture's static swap warns)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = load_deam(root, **kw)
    return ds, [str(w.message) for w in caught]


@pytest.fixture(scope="module")
def loaded(tmp_path_factory):
    fx = write_deam_fixture(tmp_path_factory.mktemp("deam"))
    ds, caught = load_quiet(fx.root)
    assert not any("swapped" in m for m in caught)  # 5 songs <= 1000: too few to decide (MIN_SWAP_SONGS)
    return fx, ds


def edit_cell(path, key, column, value):
    """Set the cell of row `key` (first field) and header `column` in a wide CSV."""
    lines = path.read_text().splitlines()
    header = lines[0].split(",")
    col = header.index(column)
    for i, line in enumerate(lines[1:], 1):
        cells = line.split(",")
        if cells[0] == key:
            cells[col] = value
            lines[i] = ",".join(cells)
            path.write_text("\n".join(lines) + "\n")
            return
    raise KeyError(key)


def test_counts_and_split(loaded):
    fx, ds = loaded
    assert ds.name == "deam" and ds.value_range == (-1.0, 1.0)
    assert sorted(ds.songs, key=int) == fx.song_ids
    assert ds.train_ids == fx.train_ids and ds.test_ids == ["2001", "2002"]
    assert [s for s in ds.songs if ds.songs[s].full_length] == ["2001", "2002"]
    assert ds.listeners() == sorted(WORKERS)
    assert sum(len(s.listeners) for s in ds.songs.values()) == fx.listener_curves == 14
    assert ds.anonymous_curves == fx.anonymous_curves == 15
    assert sum(s.audio_path is not None for s in ds.songs.values()) == fx.songs_with_audio == 10
    assert ds.songs_of(W3) == ["1001", "1002"]


def test_mean_and_rater_values(loaded):
    fx, ds = loaded
    for sid, (t, a, v) in fx.mean.items():
        c = ds.songs[sid].curves[MEAN]
        np.testing.assert_allclose(c.times, t)
        np.testing.assert_allclose(c.arousal, a, atol=1e-6)
        np.testing.assert_allclose(c.valence, v, atol=1e-6)
    for (sid, w), (t, a, v) in fx.raters.items():
        c = ds.songs[sid].curves[w]
        np.testing.assert_allclose(c.times, t)
        np.testing.assert_allclose(c.values(), np.stack([a, v], 1), atol=1e-6)
    # one specific value: worker W1, song 1002, label at 17.5 s (column sample_17500ms)
    c = ds.songs["1002"].curves[W1]
    i = int(np.flatnonzero(c.times == 17.5)[0])
    assert i == 5 and c.times[0] == 15.0
    assert c.arousal[i] == pytest.approx(fx.raters[("1002", W1)][1][5], abs=1e-6)


def test_short_songs_end_at_last_value(loaded):
    fx, ds = loaded
    assert len(ds.songs["2001"].curves[MEAN]) == 30
    assert len(ds.songs["2002"].curves[MEAN]) == 24  # averaged row has 6 empty cells after
    assert len(ds.songs["1001"].curves[MEAN]) == 20
    song, worker, short = SHORT_RATER
    assert len(ds.songs[song].curves[worker]) == 30 - short
    assert ds.songs[song].curves[worker].times[-1] == 15.0 + 0.5 * (29 - short)
    assert not any("empty cell" in p for p in ds.problems)  # trailing empties are not a problem


def test_anonymous_rater_files_have_no_listeners(loaded):
    fx, ds = loaded
    for sid in ("2", "3", "4", "5", "6"):
        assert ds.songs[sid].listeners == []
    curves, count = read_rater_file(fx.root / DEAM_RATER / "arousal" / "2.csv", [])
    assert curves is None and count == ANON_ROWS


def test_headerless_anonymous_rater_file_counts_every_line(tmp_path):
    fx = write_deam_fixture(tmp_path, corrupt_song=None, missing_song=None, swap_static=False)
    for dim in ("arousal", "valence"):
        path = fx.root / DEAM_RATER / dim / "4.csv"
        path.write_text("\n".join(path.read_text().splitlines()[1:]) + "\n")  # drop the header
    ds, _ = load_quiet(fx.root)
    assert ds.anonymous_curves == 15
    assert ds.songs["4"].listeners == []


def test_static_header_spaces_and_small_swap_group_left_as_written(loaded):
    fx, ds = loaded
    for sid, (a, v) in fx.static.items():
        written = (v, a) if int(sid) <= 1000 else (a, v)  # the fixture swaps songs <= 1000
        assert ds.songs[sid].static == pytest.approx(dict(zip(("arousal", "valence"), written)))
    assert not any("swapped" in p for p in ds.problems)
    notes = [p for p in ds.problems if "fewer than the 20 needed" in p]
    assert len(notes) == 1 and "<= 1000: only 5 songs" in notes[0] and "left as written" in notes[0]


def test_no_swap_when_columns_are_right(tmp_path):
    fx = write_deam_fixture(tmp_path, swap_static=False)
    ds, caught = load_quiet(fx.root)
    assert not any("swapped" in m for m in caught)
    assert not any("swapped" in p for p in ds.problems)
    assert ds.songs["2"].static == pytest.approx(dict(zip(("arousal", "valence"), fx.static["2"])))


def test_check_static_swap_skips_small_groups(loaded):
    _, ds = loaded
    two = {k: ds.songs[k] for k in ("2", "3")}
    before = {k: dict(s.static) for k, s in two.items()}
    assert check_static_swap(two) == []
    assert {k: s.static for k, s in two.items()} == before


def test_corrupt_and_missing_audio_reported_rest_loads(loaded):
    fx, ds = loaded
    assert ds.songs["3"].audio_path is None and MEAN in ds.songs["3"].curves
    assert any(str(fx.corrupt_audio) in p and "not decodable" in p for p in ds.problems)
    assert ds.songs["1005"].audio_path is None
    assert any("1005.mp3" in p and "missing" in p for p in ds.problems)
    assert ds.songs["1001"].audio_path == fx.root / "DEAM_audio/MEMD_audio/1001.mp3"


def test_audio_required_drops_songs_without_audio(loaded):
    fx, _ = loaded
    ds, _ = load_quiet(fx.root, audio_required=True)
    assert "3" not in ds.songs and "1005" not in ds.songs
    assert len(ds.songs) == 10 and "1005" not in ds.train_ids


def test_missing_audio_folder_is_one_problem(tmp_path):
    fx = write_deam_fixture(tmp_path, swap_static=False)
    for p in (fx.root / "DEAM_audio/MEMD_audio").iterdir():
        p.unlink()
    (fx.root / "DEAM_audio/MEMD_audio").rmdir()
    ds, _ = load_quiet(fx.root)
    assert all(s.audio_path is None for s in ds.songs.values())
    assert [p for p in ds.problems if "audio" in p] == [
        p for p in ds.problems if "no audio folder found" in p and "12 songs" in p]


def test_non_numeric_averaged_cell_names_file_and_line(tmp_path):
    fx = write_deam_fixture(tmp_path)
    edit_cell(fx.files["arousal"], "1001", "sample_16000ms", "abc")
    with pytest.raises(DataError, match=r"arousal\.csv: line \d+, column 'sample_16000ms': 'abc'"):
        load_deam(fx.root)


def test_ragged_averaged_row_names_file_and_line(tmp_path):
    fx = write_deam_fixture(tmp_path)
    lines = fx.files["valence"].read_text().splitlines()
    lines[3] += ",0.1"
    fx.files["valence"].write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"valence\.csv: line 4 has 32 fields but the header has 31"):
        load_deam(fx.root)


def test_bad_rater_file_is_reported_and_skipped(tmp_path):
    fx = write_deam_fixture(tmp_path)
    path = fx.root / DEAM_RATER / "arousal" / "1003.csv"
    edit_cell(path, W1, "sample_15500ms", "n/a")
    ds, _ = load_quiet(fx.root)
    assert ds.songs["1003"].listeners == [] and MEAN in ds.songs["1003"].curves
    assert any(str(path) in p and "'n/a'" in p and "skipped" in p for p in ds.problems)
    assert ds.songs["1002"].listeners == [W1, W2, W3]


def test_out_of_range_value_reported_with_file_song_column(tmp_path):
    fx = write_deam_fixture(tmp_path)
    edit_cell(fx.files["valence"], "1001", "sample_16000ms", "1.5")
    path = fx.root / DEAM_RATER / "arousal" / "1002.csv"
    edit_cell(path, W2, "sample_15000ms", "-3")
    ds, _ = load_quiet(fx.root)
    assert any(str(fx.files["valence"]) in p and "song 1001" in p and "sample_16000ms" in p
               and "1.5" in p for p in ds.problems)
    assert any(str(path) in p and W2 in p and "sample_15000ms" in p for p in ds.problems)
    assert ds.songs["1001"].curves[MEAN].valence[2] == pytest.approx(1.5)  # kept, only reported


def test_duplicate_worker_keeps_first_row_and_says_so(tmp_path):
    fx = write_deam_fixture(tmp_path)
    path = fx.root / DEAM_RATER / "arousal" / "1001.csv"
    lines = path.read_text().splitlines()
    first = next(line for line in lines if line.startswith(W1 + ","))
    dup = ",".join([W1] + ["0.9000"] * (len(first.split(",")) - 1))
    path.write_text("\n".join(lines + [dup]) + "\n")
    ds, _ = load_quiet(fx.root)
    msg = [p for p in ds.problems if "more than once" in p]
    assert len(msg) == 1 and str(path) in msg[0] and W1 in msg[0]
    np.testing.assert_allclose(ds.songs["1001"].curves[W1].arousal, fx.raters[("1001", W1)][1], atol=1e-6)


def test_worker_with_only_one_dimension_is_reported(tmp_path):
    fx = write_deam_fixture(tmp_path)
    path = fx.root / DEAM_RATER / "valence" / "1001.csv"
    path.write_text("\n".join(line for line in path.read_text().splitlines()
                              if not line.startswith(W3)) + "\n")
    ds, _ = load_quiet(fx.root)
    assert W3 not in ds.songs["1001"].curves and W3 in ds.songs["1002"].curves
    assert any("song 1001" in p and W3 in p and "only one of" in p for p in ds.problems)


def test_gap_inside_a_curve_cuts_it_and_is_reported(tmp_path):
    fx = write_deam_fixture(tmp_path)
    edit_cell(fx.files["arousal"], "1002", "sample_17000ms", "")
    ds, _ = load_quiet(fx.root)
    assert len(ds.songs["1002"].curves[MEAN]) == 4  # 15.0 .. 16.5 s
    assert any("song 1002" in p and "sample_17000ms" in p and "cut" in p for p in ds.problems)


def test_flat_rater_curve_is_loaded_as_written(loaded):
    _, ds = loaded
    song, worker = FLAT
    assert np.all(ds.songs[song].curves[worker].arousal == np.float32(0.1234))


def test_missing_root_and_missing_annotations(tmp_path):
    with pytest.raises(DataError, match="dataset root not found"):
        load_deam(tmp_path / "nowhere")
    with pytest.raises(DataError, match="no DEAM annotations found; tried") as err:
        load_deam(tmp_path)
    assert str(tmp_path / "DEAM_Annotations/annotations") in str(err.value)


def test_bad_column_name_is_an_error(tmp_path):
    fx = write_deam_fixture(tmp_path)
    text = fx.files["arousal"].read_text().replace("sample_15500ms", "sample_15.5s", 1)
    fx.files["arousal"].write_text(text)
    with pytest.raises(DataError, match="unexpected column 'sample_15.5s'"):
        load_deam(fx.root)


def test_sample_seconds():
    assert sample_seconds("sample_15000ms") == 15.0
    assert sample_seconds(" sample_626500ms ") == 626.5
    assert sample_seconds("song_id") is None


def test_averaged_row_without_trailing_commas_reads_as_short_song(tmp_path):
    fx = write_deam_fixture(tmp_path)
    path = fx.files["valence"]
    lines = path.read_text().splitlines()
    song = lines[3].split(",")[0]
    full = load_quiet(fx.root)[0].songs[song].curves[MEAN]
    lines[3] = ",".join(lines[3].split(",")[:6])  # song id + 5 values, trailing cells dropped
    path.write_text("\n".join(lines) + "\n")
    short = load_quiet(fx.root)[0].songs[song].curves[MEAN]
    assert len(short) == 5 and np.allclose(short.valence, full.valence[:5])
