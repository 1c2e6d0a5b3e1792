"""data.py: the in-memory model, CSV/audio helpers, load_dataset, summarize and task construction."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from fixtures import (
    FLAT,
    WORKERS,
    write_audio,
    write_corrupt,
    write_deam_fixture,
    write_pmemo_fixture,
)

from dsaml_utils.data.files import (
    attach_audio,
    audio_problem,
    parse_floats,
    read_csv_grid,
)
from dsaml_utils.data.registry import load_dataset
from dsaml_utils.data.summary import format_summary, summarize
from dsaml_utils.data.types import (
    MEAN,
    Curve,
    MusicDataset,
    Song,
    TaskFilter,
    is_flat,
    personalized_tasks,
)
from dsaml_utils.errors import DataError, UserError

W1, W2, W3 = WORKERS


@pytest.fixture(scope="module")
def deam(tmp_path_factory):
    fx = write_deam_fixture(tmp_path_factory.mktemp("deam"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the fixture's static swap (tested in test_deam)
        return fx, load_dataset("deam", fx.root)


def test_curve_basics():
    c = Curve([15.0, 15.5, 16.0], [0.1, 0.2, 0.3], [-0.1, -0.2, -0.3])
    assert len(c) == 3 and c.values().shape == (3, 2)
    assert c.crop(1, 2).times.tolist() == [15.5, 16.0]
    with pytest.raises(ValueError, match="curve lengths differ"):
        Curve([0.0], [0.1, 0.2], [0.3])


def test_read_csv_grid_strips_header_and_rejects_ragged_rows(tmp_path):
    path = tmp_path / "s.csv"
    path.write_text("song_id, valence_mean, arousal_mean\n2, 3.1, 4.0\n\n3,5,6\n")
    header, rows = read_csv_grid(path)
    assert header == ["song_id", "valence_mean", "arousal_mean"]
    assert [line for line, _ in rows] == [2, 4] and rows[1][1] == ["3", "5", "6"]
    path.write_text("a,b\n1,2\n3\n")
    with pytest.raises(DataError, match=r"s\.csv: line 3 has 1 fields but the header has 2"):
        read_csv_grid(path)
    path.write_text("")
    with pytest.raises(DataError, match="empty file"):
        read_csv_grid(path)


def test_parse_floats(tmp_path):
    out = parse_floats([" 0.5", "", "-1"], tmp_path / "x.csv", 7, ["a", "b", "c"])
    assert out[0] == 0.5 and np.isnan(out[1]) and out[2] == -1
    with pytest.raises(DataError, match=r"x\.csv: line 7, column 'b': 'zz' is not a number"):
        parse_floats(["1", "zz"], tmp_path / "x.csv", 7, ["a", "b"])


def test_audio_problem(tmp_path):
    good, bad = tmp_path / "a.mp3", tmp_path / "b.mp3"
    write_audio(good, 0.5, 8000, seed=1)
    write_corrupt(bad)
    assert audio_problem(good) is None
    assert "not decodable" in audio_problem(bad) and str(bad) in audio_problem(bad)
    assert "missing" in audio_problem(tmp_path / "c.mp3")


def test_attach_audio(tmp_path):
    write_audio(tmp_path / "1.mp3", 0.5, 8000, seed=1)
    write_corrupt(tmp_path / "2.mp3")
    c = Curve([15.0], [0.0], [0.0])
    songs = {k: Song(k, None, {MEAN: c}) for k in ("1", "2", "3")}
    problems: list[str] = []
    attach_audio(songs, tmp_path, problems)
    assert [s.audio_path for s in songs.values()] == [tmp_path / "1.mp3", None, None]
    assert len(problems) == 2 and problems[0].startswith("song 2: ") and "missing" in problems[1]
    problems.clear()
    attach_audio(songs, tmp_path, problems, check=False)  # existence only: the corrupt file passes
    assert songs["2"].audio_path == tmp_path / "2.mp3" and len(problems) == 1


def test_load_dataset_dispatch(deam, tmp_path):
    fx, ds = deam
    assert ds.name == "deam" and len(ds.songs) == 12
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        syn = load_dataset("synthetic", fx.root)
    assert syn.name == "synthetic" and syn.test_ids == ds.test_ids
    pm = load_dataset("pmemo", write_pmemo_fixture(tmp_path / "p").root)
    assert pm.name == "pmemo"
    with pytest.raises(UserError, match="unknown dataset 'mystery'"):
        load_dataset("mystery", fx.root)


def test_summarize_counts(deam):
    fx, ds = deam
    s = summarize(ds)
    assert s["songs_annotated"] == 12 and s["songs_with_audio"] == fx.songs_with_audio
    assert s["listeners"] == 3 and s["listener_curves"] == fx.listener_curves
    assert s["anonymous_curves"] == 15
    assert s["train_songs"] == 10 and s["test_songs"] == 2 and s["unsplit_songs"] == 0
    assert s["mean_labels_min"] == 20 and s["mean_labels_max"] == 30
    assert s["task_listeners_train"] == 0  # nobody has 16 songs in the fixture
    assert s["usable"] is True and s["reason"] is None
    assert s["problems"] == ds.problems and len(s["problems"]) == 3
    text = format_summary(s)
    assert "12 annotated, 10 with audio" in text and "train 10, test 2" in text


def test_summarize_unusable_without_test_songs(deam):
    _, ds = deam
    s = summarize(ds.subset(ds.train_ids))
    assert s["usable"] is False and s["reason"] == "no test songs in the paper's split"
    assert "usable     no: no test songs" in format_summary(s)


def test_personalized_tasks_filters_on_fixture(deam):
    _, ds = deam
    assert personalized_tasks(ds, ds.train_ids, TaskFilter(min_songs=3)) == {
        W1: ["1001", "1002", "1003", "1004", "1005"],
        W2: ["1001", "1002", "1003"],  # 1004 is flat
    }
    assert list(personalized_tasks(ds, ds.train_ids, TaskFilter(min_songs=4))) == [W1]
    no_flat = personalized_tasks(ds, ds.train_ids, TaskFilter(min_songs=4, flat_threshold=0))
    assert no_flat[W2] == ["1001", "1002", "1003", "1004"]
    assert personalized_tasks(ds, ds.test_ids, TaskFilter(min_songs=1)) == {
        W1: ["2001", "2002"], W2: ["2001"]}
    assert personalized_tasks(ds, ds.train_ids) == {}  # default: at least 16 songs
    song, worker = FLAT
    assert is_flat(ds.songs[song].curves[worker], 0.01, 60)
    assert not is_flat(ds.songs[song].curves[W1], 0.01, 60)


def test_dataset_listeners_subset_and_mean_std():
    c = Curve([15.0, 15.5], [0.1, 0.2], [0.3, 0.4])
    songs = {"1": Song("1", None, {MEAN: c, "w": c}), "2": Song("2", None, {MEAN: c}, mean_std=c)}
    ds = MusicDataset("deam", None, songs, ["1"], ["2"], (-1.0, 1.0), problems=["p"])
    assert ds.listeners() == ["w"] and ds.songs_of("w") == ["1"]
    sub = ds.subset(["2"])
    assert list(sub.songs) == ["2"] and sub.train_ids == [] and sub.test_ids == ["2"]
    assert sub.songs["2"].mean_std is c and songs["1"].mean_std is None
    sub.problems.append("q")
    assert ds.problems == ["p"]
