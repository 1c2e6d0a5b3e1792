"""Audio and labels must agree before anything trains (issue 12, findings 1, 2 and 6b).

1. Audio that decodes shorter than its label span is reported and left out, at load time (`dsaml inspect`,
   `decode_audio=True`) and where the feature store decodes it (a warm cache decodes nothing), never padded.
2. Label times off the 0.5 s grid are named and kept out of the curves; a fatal loader error quotes the
   per-song problems behind it.
3. The static valence/arousal swap is only judged on songs <= 1000, and only with enough of them.
"""

from __future__ import annotations

import json
import shutil
import warnings
from types import SimpleNamespace

import numpy as np
import pytest
from fixtures import (
    DEAM_AUDIO,
    corrupt_frames,
    truncate_audio,
    write_audio,
    write_deam_fixture,
    write_pmemo_fixture,
)

from dsaml_utils import cli
from dsaml_utils.cli import data as cli_data
from dsaml_utils.data.deam import (
    MIN_SWAP_SONGS,
    SYNTH_CONFIG,
    check_static_swap,
    load_deam,
)
from dsaml_utils.data.files import AUDIO_TOLERANCE, on_grid
from dsaml_utils.data.pmemo import load_pmemo
from dsaml_utils.data.synthetic import (
    STATIC_CLIPS_FILE,
    STATIC_DIR,
    STATIC_FULL_FILE,
    SynthConfig,
    generate,
)
from dsaml_utils.data.types import MEAN, Curve, MusicDataset, Song
from dsaml_utils.errors import DataError
from dsaml_utils.features import cache as feature_cache
from dsaml_utils.features.cache import FeatureCache
from dsaml_utils.features.mel import MelConfig
from dsaml_utils.training.config import RunConfig
from dsaml_utils.training.store import build_store


def quiet(fn, *args, **kw):
    """Call fn with warnings silenced (the fixture's static-swap notes)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fn(*args, **kw)


@pytest.fixture(scope="module")
def covered(tmp_path_factory):
    """A DEAM fixture whose audio covers every label (30 s; song 2001's labels end at 30 s)."""
    return write_deam_fixture(tmp_path_factory.mktemp("deam30"), audio_seconds=30.0, corrupt_song=None,
                              missing_song=None)


def damaged_copy(fx, tmp_path):
    """A copy of the covered fixture with 1001.mp3 truncated and 1002.mp3 holding damaged frames."""
    root = tmp_path / "deam"
    shutil.copytree(fx.root, root)
    truncate_audio(root / DEAM_AUDIO / "1001.mp3", 0.1)  # ~3 s of 30 s; the header still says 30 s
    corrupt_frames(root / DEAM_AUDIO / "1002.mp3")  # decodes to ~7 s
    return root


# --- finding 1: audio shorter than its labels ------------------------------------------------------------


def test_decode_audio_reports_short_files_and_leaves_them_out(covered, tmp_path):
    root = damaged_copy(covered, tmp_path)
    ds = quiet(load_deam, root, decode_audio=True)
    for sid in ("1001", "1002"):
        assert ds.songs[sid].audio_path is None and MEAN in ds.songs[sid].curves
        (line,) = [p for p in ds.problems if f"{sid}.mp3" in p]
        assert "audio decodes to" in line and "labels span 15-25 s" in line and "never zero-padded" in line
    assert sum(s.audio_path is not None for s in ds.songs.values()) == 10
    assert not any("decodes" in p for p in quiet(load_deam, covered.root, decode_audio=True).problems)


def test_inspect_decodes_and_does_not_count_short_audio(covered, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(cli, "COMMAND_GROUPS", (cli_data,))
    root = damaged_copy(covered, tmp_path)
    assert cli.main(["inspect", "--dataset", "deam", "--root", str(root), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["songs_with_audio"] == 10
    assert sum("audio decodes to" in p for p in out["problems"]) == 2
    assert cli.main(["inspect", "--dataset", "deam", "--root", str(root), "--json", "--quick"]) == 0
    assert json.loads(capsys.readouterr().out)["songs_with_audio"] == 12  # headers alone miss it


def test_pmemo_decode_audio_reports_clips_shorter_than_their_labels(tmp_path):
    fx = write_pmemo_fixture(tmp_path, corrupt_song=None)  # 1 s of audio, labels from 15.5 s
    ds = load_pmemo(fx.root, decode_audio=True)
    assert all(s.audio_path is None for s in ds.songs.values())
    line = next(p for p in ds.problems if "4.mp3" in p)
    assert "audio decodes to 1.00 s but the labels span 15.5-30 s" in line


def store_config(tmp_path) -> RunConfig:
    return RunConfig(mel=MelConfig(sample_rate=8000, n_mels=16), cache_dir=str(tmp_path / "cache"))


def test_feature_store_leaves_out_short_audio_and_a_warm_cache_does_not_decode(covered, tmp_path, monkeypatch):
    root = damaged_copy(covered, tmp_path)
    cfg, model = store_config(tmp_path), SimpleNamespace(inputs=("mel", "mask"))
    ids = ["1001", "1002", "1003"]
    ds = quiet(load_deam, root)  # header check only: the short files still have an audio path
    assert all(ds.songs[s].audio_path is not None for s in ids)
    store = build_store(ds, ids, cfg, model, FeatureCache(cfg.cache_dir), progress=False)
    assert sorted(store) == ["1003"] and store["1003"].inputs["mel"].shape[0] == 20
    for sid in ("1001", "1002"):
        (line,) = [p for p in ds.problems if f"song {sid} skipped" in p]
        assert f"{sid}.mp3: audio decodes to" in line and "labels span 15-25 s" in line

    monkeypatch.setattr(feature_cache, "load_audio", lambda *a, **k: pytest.fail("decoded on a warm cache"))
    again = quiet(load_deam, root)
    store = build_store(again, ids, cfg, model, FeatureCache(cfg.cache_dir), progress=False)
    assert sorted(store) == ["1003"] and sum("audio decodes to" in p for p in again.problems) == 2


def test_tolerance_lets_audio_end_slightly_early(tmp_path):
    cfg, model = store_config(tmp_path), SimpleNamespace(inputs=("mel", "mask"))
    times = 0.5 * np.arange(8)  # labels span 0-4 s
    songs = {}
    for sid, seconds in (("1", 4.0 - AUDIO_TOLERANCE / 2), ("2", 4.0 - 2 * AUDIO_TOLERANCE)):
        write_audio(tmp_path / f"{sid}.wav", seconds, 8000, seed=1)
        songs[sid] = Song(sid, tmp_path / f"{sid}.wav", {MEAN: Curve(times, np.zeros(8), np.zeros(8))})
    ds = MusicDataset("synthetic", tmp_path, songs, ["1", "2"], [], (-1.0, 1.0))
    store = build_store(ds, ["1", "2"], cfg, model, FeatureCache(cfg.cache_dir), progress=False)
    assert sorted(store) == ["1"] and "2.wav: audio decodes to 3.80 s" in ds.problems[0]


# --- finding 2: label times off the 0.5 s grid -----------------------------------------------------------


def shift_columns(path, ms: int, only: str | None = None):
    """Add `ms` to the time of every sample_<ms>ms column (or only the one named `only`)."""
    lines = path.read_text().splitlines()
    cells = lines[0].split(",")
    for i, c in enumerate(cells[1:], 1):
        if c.startswith("sample_") and (only is None or c == only):
            cells[i] = f"sample_{int(c[7:-2]) + ms}ms"
    lines[0] = ",".join(cells)
    path.write_text("\n".join(lines) + "\n")


def insert_column(path, after: str, name: str, value: str = "0.1"):
    """Insert a column `name` after column `after`, holding `value` in every row that has a value there."""
    lines = [line.split(",") for line in path.read_text().splitlines()]
    k = lines[0].index(after) + 1
    for row in lines:
        row.insert(k, name if row is lines[0] else (value if row[k - 1] else ""))
    path.write_text("\n".join(",".join(r) for r in lines) + "\n")


def test_off_grid_column_is_named_and_never_reaches_a_curve(tmp_path):
    fx = write_deam_fixture(tmp_path, missing_song=None, corrupt_song=None)
    for dim in ("arousal", "valence"):
        insert_column(fx.files[dim], "sample_15000ms", "sample_15250ms")
    ds = quiet(load_deam, fx.root, check_audio=False)
    for dim in ("arousal", "valence"):
        assert any(str(fx.files[dim]) in p and "sample_15250ms off the 0.5 s label grid" in p
                   for p in ds.problems)
    for sid, (times, a, v) in fx.mean.items():
        curve = ds.songs[sid].curves[MEAN]
        assert all(on_grid(t) for t in curve.times)
        np.testing.assert_allclose(curve.times, times)
        np.testing.assert_allclose(curve.arousal, a, atol=1e-6)


def test_renamed_column_cuts_curves_before_the_hole(tmp_path):
    fx = write_deam_fixture(tmp_path, missing_song=None, corrupt_song=None)
    shift_columns(fx.files["arousal"], -250, only="sample_16000ms")  # 15.0, 15.5, 15.75, 16.5, ...
    ds = quiet(load_deam, fx.root, check_audio=False)
    assert any("sample_15750ms off the 0.5 s label grid" in p for p in ds.problems)
    assert any("jump from sample_15500ms to sample_16500ms" in p for p in ds.problems)
    assert ds.songs["1001"].curves[MEAN].times.tolist() == [15.0, 15.5]


def test_fatal_error_quotes_the_per_song_problems(tmp_path):
    fx = write_deam_fixture(tmp_path)
    shift_columns(fx.files["arousal"], 250)  # every arousal column off the grid; valence is fine
    with pytest.raises(DataError) as err:
        quiet(load_deam, fx.root)
    msg = str(err.value)
    assert "no song has both an arousal and a valence curve" in msg and "\n" not in msg
    assert "arousal.csv: columns sample_15250ms" in msg and "off the 0.5 s label grid" in msg
    assert "problems met first" in msg and "more)" in msg


def test_pmemo_off_grid_frame_times_are_named_and_dropped(tmp_path):
    fx = write_pmemo_fixture(tmp_path)
    lines = fx.files["dynamic"].read_text().splitlines()
    for i, line in enumerate(lines):
        cells = line.split(",")
        if cells[0] == "4":  # song 4: every frameTime 0.25 s late (15.75, 16.25, ...)
            cells[1] = f"{float(cells[1]) + 0.25:g}"
            lines[i] = ",".join(cells)
    fx.files["dynamic"].write_text("\n".join(lines) + "\n")
    ds = load_pmemo(fx.root, check_audio=False)
    assert "4" not in ds.songs and "4" not in ds.train_ids
    assert any("song 4: frameTime 15.75 is off the 0.5 s label grid" in p for p in ds.problems)
    assert all(on_grid(t) for s in ds.songs.values() for t in s.curves[MEAN].times)


def test_pmemo_fatal_error_quotes_the_per_song_problems(tmp_path):
    fx = write_pmemo_fixture(tmp_path)
    lines = fx.files["dynamic"].read_text().splitlines()
    lines[1:] = [",".join([c[0], f"{float(c[1]) + 0.25:g}"] + c[2:]) for c in (x.split(",") for x in lines[1:])]
    fx.files["dynamic"].write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"no annotated song; \d+ problems met first: .*off the 0\.5 s label grid"):
        load_pmemo(fx.root)


def test_song_tensors_skip_a_mean_curve_off_one_grid(tmp_path):
    cfg, model = store_config(tmp_path), SimpleNamespace(inputs=("mel", "mask"))
    times = np.array([0.0, 0.5, 1.25, 1.75])
    song = Song("1", tmp_path / "absent.wav", {MEAN: Curve(times, np.zeros(4), np.zeros(4))})
    ds = MusicDataset("synthetic", tmp_path, {"1": song}, ["1"], [], (-1.0, 1.0))
    assert build_store(ds, ["1"], cfg, model, FeatureCache(cfg.cache_dir), progress=False) == {}
    assert ds.problems == ["song 1: 'mean' label times are not one unbroken 0.5 s grid (4 times from 0 s); skipped"]


# --- finding 6b: the static swap ---------------------------------------------------------------------------


def crossed_songs(ids: list[int]) -> dict[str, Song]:
    """Songs whose static arousal follows their dynamic valence and vice versa (a swapped static file)."""
    rng = np.random.default_rng(0)
    songs = {}
    for sid in ids:
        a, v = rng.uniform(-0.8, 0.8, 2)
        curve = Curve(15.0 + 0.5 * np.arange(4), np.full(4, a), np.full(4, v))
        songs[str(sid)] = Song(str(sid), None, {MEAN: curve}, static={"arousal": 5 + 4 * v, "valence": 5 + 4 * a})
    return songs


def test_full_songs_are_never_swapped():
    songs = crossed_songs([2001, 2002, 2003])
    before = {k: dict(s.static) for k, s in songs.items()}
    assert check_static_swap(songs) == []
    assert {k: s.static for k, s in songs.items()} == before


def test_swap_needs_min_songs_below_the_boundary():
    few = crossed_songs(list(range(2, 2 + MIN_SWAP_SONGS - 1)))
    before = {k: dict(s.static) for k, s in few.items()}
    assert check_static_swap(few) == [] and {k: s.static for k, s in few.items()} == before
    enough = crossed_songs(list(range(2, 2 + MIN_SWAP_SONGS)))
    with pytest.warns(UserWarning, match="swapped back"):
        (msg,) = check_static_swap(enough)
    assert f"{MIN_SWAP_SONGS} songs" in msg
    for s in enough.values():
        assert s.static["arousal"] == pytest.approx(5 + 4 * float(s.curves[MEAN].arousal[0]), abs=1e-5)


@pytest.fixture(scope="module")
def small_synth(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth") / "ds"
    generate(root, SynthConfig(songs=3, anonymous_songs=0, full_songs=3, listeners=3, test_listeners=2,
                               lazy_listeners=0, raters_per_song=2, raters_per_full_song=2, clip_seconds=16.0,
                               full_seconds=(16.0, 17.0), sample_rate=8000, workers=1,
                               seed=1))  # seed 1: the old estimate swapped the 3 full songs (0.36 vs 0.15)
    return root


def written_static(root) -> dict[str, dict[str, float]]:
    """Song -> static means read by column name, as the CSV files hold them."""
    out = {}
    for name in (STATIC_CLIPS_FILE, STATIC_FULL_FILE):
        rows = [r.split(",") for r in (root / STATIC_DIR / name).read_text().splitlines()]
        cols = [c.strip() for c in rows[0]]
        for r in rows[1:]:
            out[r[0]] = {"arousal": float(r[cols.index("arousal_mean")]),
                         "valence": float(r[cols.index("valence_mean")])}
    return out


def test_synthetic_root_follows_its_recorded_swap(small_synth, tmp_path):
    written = written_static(small_synth)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # expected on a synthetic root: reported in problems, not warned
        ds = load_deam(small_synth, name="synthetic", check_audio=False)
    assert any("swapped back, as" in p and "config.json records" in p for p in ds.problems)
    for sid in ("2", "3", "4"):  # clips: written swapped, read back straight
        assert ds.songs[sid].static == {"arousal": written[sid]["valence"], "valence": written[sid]["arousal"]}
    for sid in ("2001", "2002", "2003"):  # full songs: as written, whatever the correlations say
        assert ds.songs[sid].static == written[sid]
    assert (small_synth / SYNTH_CONFIG).is_file()


def test_root_without_the_record_and_too_few_clips_is_left_as_written(small_synth, tmp_path):
    root = tmp_path / "copy"
    shutil.copytree(small_synth, root)
    (root / SYNTH_CONFIG).unlink()
    ds = quiet(load_deam, root, check_audio=False)
    assert {sid: s.static for sid, s in ds.songs.items()} == written_static(root)
    assert any("only 3 songs" in p and f"fewer than the {MIN_SWAP_SONGS} needed" in p for p in ds.problems)
