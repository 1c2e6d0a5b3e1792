"""Protocol "authors" (training.protocol): one test per difference 4-12 of issue 11, each failing when that
rule falls back to the paper's, plus config.json, two metrics files per run, and the leakage warning and marks.

Hand-made datasets for the rules; the tiny synthetic dataset of test_train.py for the runs; for point 4 a
random-weight ImageBind in the official key layout and two 44.1 kHz stereo songs.
"""

import contextlib
import dataclasses
import io
import json
import math

import numpy as np
import pytest
import soundfile as sf
import torch
from test_imagebind import write_official_checkpoint
from test_imagebind_preprocessing import TINY, stereo_fixture
from test_train import TINY_RUN, one_thread, tiny_cache, tiny_config, tiny_ds, tiny_root  # noqa: F401 (fixtures)
from torch import nn

from dsaml_utils.cli import build_parser
from dsaml_utils.cli import main as cli_main
from dsaml_utils.cli.train import config_from_args
from dsaml_utils.data.types import MEAN, Curve, MusicDataset, Song, TaskFilter
from dsaml_utils.encoders.authors import step_ranges
from dsaml_utils.encoders.imagebind import load_imagebind_audio
from dsaml_utils.encoders.registry import get_encoder
from dsaml_utils.errors import RunConflict, UserError
from dsaml_utils.evaluation.protocols import evaluate_dmer, held_out_listeners
from dsaml_utils.evaluation.report import format_metrics
from dsaml_utils.evaluation.results import read_metrics
from dsaml_utils.evaluation.run import evaluate_run
from dsaml_utils.experiments.tables import provenance
from dsaml_utils.features.cache import FeatureCache
from dsaml_utils.features.kaldi import kaldi_fbank
from dsaml_utils.features.songs import Item, SongData, align_curve, make_batch
from dsaml_utils.meta.batched import meta_loss_batched
from dsaml_utils.meta.maml import MetaConfig, meta_loss_loop
from dsaml_utils.models.inference import predict_song, stitch_authors
from dsaml_utils.models.registry import build_model
from dsaml_utils.plots.base import provenance_text
from dsaml_utils.training import protocol
from dsaml_utils.training.authors_store import authors_global, protocol_store
from dsaml_utils.training.config import RunConfig, apply_overrides, preset
from dsaml_utils.training.sampling import (
    epoch_batch_indices,
    make_task_pool,
    sample_tasks,
)
from dsaml_utils.training.trainer import Trainer, train

AUTHORS = protocol.rules("authors")
T12 = 0.5 * np.arange(12)
WAVE = np.sin(T12)


def _ds(songs: dict[str, dict[str, tuple]], train: list[str], test: list[str]) -> MusicDataset:
    """A dataset from song -> {listener: (arousal, valence)} (a MEAN curve added to each song)."""
    out = {}
    for sid, raters in songs.items():
        curves = {MEAN: Curve(T12, WAVE, WAVE)}
        curves.update({r: Curve(T12, a, v) for r, (a, v) in raters.items()})
        out[sid] = Song(sid, None, curves)
    return MusicDataset("x", ".", out, train, test, (-1, 1))


def _store(ds: MusicDataset) -> dict[str, SongData]:
    return {s: SongData(s, T12, {}, {k: align_curve(c, T12) for k, c in song.curves.items()})
            for s, song in ds.songs.items()}


MOVING, FLAT = (WAVE, WAVE), (WAVE, np.zeros(12))  # FLAT: arousal moves, valence does not


# ---- 5-7: which curves make tasks and which pairs are scored


def test_5_a_curve_flat_in_one_dimension_is_dropped():
    ds = _ds({"1": {"a": FLAT, "b": MOVING}, "2": {"a": MOVING, "b": MOVING},
              "3": {"a": FLAT, "b": MOVING}}, ["1", "2"], ["3"])
    filt = TaskFilter(min_songs=1)
    got = protocol.task_listeners(ds, ["1", "2"], filt, "authors")
    assert got["a"] == ["2"] and got["b"] == ["1", "2"]
    assert protocol.task_listeners(ds, ["1", "2"], filt, "paper")["a"] == ["1", "2"]  # paper: both must be flat
    tests = protocol.test_listeners(ds, _store(ds), ["3"], filt, "authors")
    assert "a" not in tests and tests["b"] == ["3"]


def test_6_the_mean_curve_is_one_more_task_and_test_listener():
    ds = _ds({"1": {}, "2": {"a": MOVING}, "3": {"a": MOVING}, "4": {"a": MOVING}}, ["1", "2", "3"], ["4"])
    filt = TaskFilter(min_songs=2)
    # "all" covers the training songs of the personalized data (song 1 has no identified rater: DEAM <= 1000)
    assert protocol.task_listeners(ds, ["1", "2", "3"], filt, "authors") == {"a": ["2", "3"], MEAN: ["2", "3"]}
    assert MEAN not in protocol.task_listeners(ds, ["1", "2", "3"], filt, "paper")
    cfg = apply_overrides(preset("quick"), ["tasks.min_songs=1", "protocol=authors"])
    listeners, _ = held_out_listeners(ds, _store(ds), ["1", "2", "3"], ["4"], cfg)
    assert listeners[MEAN] == ["4"]


def test_6_a_run_trains_on_the_mean_task_without_a_validation_split(tiny_ds, tiny_root, tiny_cache, tmp_path):  # noqa: F811
    cfg = tiny_config(tiny_root, tiny_cache, mode="pdmer", extra=["protocol=authors", "tasks.min_songs=2"])
    with contextlib.redirect_stderr(io.StringIO()):
        tr = Trainer(cfg, tmp_path / "run", ds=tiny_ds, cache=FeatureCache(tiny_cache), progress=False)
    tr.run(max_steps_this_call=0)  # set up only; lets the folder's lock go
    named = [s for s in tr.fit_ids if tiny_ds.songs[s].listeners]
    assert tr.listener_songs[MEAN] == named and MEAN in tr.pool.listener_songs
    assert tr.val_listeners == [] and tr.val_plan == []  # 10: nothing held out, the test split selects
    assert {lst for lst, _ in tr.test_plan} >= {MEAN} and {s for _, s in tr.test_plan} <= set(tiny_ds.test_ids)


def test_7_every_test_rater_with_enough_test_songs_is_scored_seen_or_not():
    ds = _ds({"1": {"seen": MOVING}, "2": {"seen": MOVING, "new": MOVING}, "3": {"seen": MOVING, "new": MOVING},
              "4": {"rare": MOVING}}, ["1"], ["2", "3", "4"])
    store = _store(ds)
    cfg = apply_overrides(preset("quick"), ["tasks.min_songs=2", "protocol=authors"])
    got, notes = held_out_listeners(ds, store, ["1"], ["2", "3", "4"], cfg)
    assert got == {"new": ["2", "3"], MEAN: ["2", "3", "4"], "seen": ["2", "3"]} and "seen in" in notes[0]
    pairs = protocol.test_plan(ds, store, ["2", "3", "4"], cfg.tasks, True, "authors")
    assert sorted(pairs) == sorted((lst, s) for lst, songs in got.items() for s in songs)
    paper, _ = held_out_listeners(ds, store, ["1"], ["2", "3", "4"], cfg, protocol="paper")
    assert set(paper) == {"new", "rare"}  # paper: unseen listeners only, no song count


# ---- 8, 9: full songs


class WindowTag(nn.Module):
    """Tags each output with its window and offset: 1000 * (the window's first step) + offset."""

    inputs = ("mel", "mask")

    def __init__(self):
        super().__init__()
        self.modes, self.sizes = [], []

    def forward(self, batch):
        self.modes.append(self.training)
        self.sizes.append(batch["mel"].shape[0])
        x = batch["mel"][:, :, 0, 0]
        v = 1000 * x[:, :1] + torch.arange(x.shape[1], dtype=x.dtype)
        return {"pred": torch.stack([v, v], -1), "aux_loss": v.new_zeros(())}


def _tag_song(T: int) -> SongData:
    mel = np.broadcast_to(np.arange(T, dtype=np.float32)[:, None, None], (T, 2, 2)).copy()
    return SongData("s", 0.5 * np.arange(T), {"mel": mel, "global": np.ones(3, np.float32)},
                    {MEAN: np.zeros((T, 2), np.float32)})


def test_8_full_songs_are_stride_1_windows_stitched_the_authors_way():
    pred = protocol.predict(WindowTag(), _tag_song(20), 8, 3, None, "cpu", "authors")
    # 13 windows of 8. Arousal (hop 5): window 0 whole, the last 5 of windows 6 and 11, the last 12 % 5 = 2 of
    # window 12 (step 8 holds window 6's value for step 9, as their code does). Valence: last step of each.
    arousal = [*range(8), *(6000 + o for o in range(3, 8)), *(11000 + o for o in range(3, 8)), 12006, 12007]
    valence = [*range(8), *(1000 * i + 7 for i in range(1, 13))]
    assert pred[:, 0].tolist() == arousal and pred[:, 1].tolist() == valence
    assert protocol.predict(WindowTag(), _tag_song(20), 8, 3, None, "cpu", "paper")[:, 0].tolist() != arousal
    # the same-song rest is a song of its own: windows start at its first step
    part = protocol.song_part(_tag_song(20), 5, 20)
    assert part.inputs["mel"][0, 0, 0] == 5 and part.times[0] == 2.5 and part.inputs["global"].shape == (3,)
    assert protocol.predict(WindowTag(), part, 8, 3, None, "cpu", "authors")[0, 1] == 5000


def test_9_the_test_split_is_scored_in_train_mode():
    model = WindowTag().eval()
    protocol.predict(model, _tag_song(80), 8, 3, None, "cpu", "authors")
    assert set(model.modes) == {True} and not model.training  # train mode while scoring, restored after
    assert model.sizes == [32, 32, 9]  # 73 windows, 32 per forward (their slide_inference batch)
    cfg = apply_overrides(preset("quick"), ["protocol=authors", "train.window=8"])
    model.modes.clear()
    val = protocol.score_test_split(model, {"s": _tag_song(80)}, [(MEAN, "s")], cfg, False, "cpu")
    assert set(model.modes) == {True} and val["val_split"] == "test" and val["val_pairs"] == 1
    model.modes.clear()
    protocol.predict(model, _tag_song(80), 8, 3, None, "cpu", "paper")
    assert set(model.modes) == {False}


# ---- 10, 11: selection and length


def test_10_selection_on_the_test_split_every_10_meta_steps_with_their_score_and_rule():
    assert [s for s in range(1, 32) if protocol.validation_due(True, s, 0)] == [1, 11, 21, 31]
    assert [s for s in range(1, 10) if protocol.validation_due(False, s, 3)] == [3, 6, 9]  # DMER: every epoch
    rows = [{"arousal_ccc": 0.2, "arousal_pcc": 0.4, "arousal_rmse": 0.3, "valence_ccc": 0.0,
             "valence_pcc": 0.1, "valence_rmse": 0.5},
            {"arousal_ccc": 0.4, "arousal_pcc": 0.6, "arousal_rmse": 0.1, "valence_ccc": 0.2,
             "valence_pcc": 0.3, "valence_rmse": 0.3}]
    assert protocol.authors_score(rows) == pytest.approx((0.3 + 0.5 + 0.8 + 0.1 + 0.2 + 0.6) / 6)
    assert protocol.better(0.0, -math.inf, "authors") and not protocol.better(-0.1, -math.inf, "authors")
    assert protocol.better(0.5, 0.5, "authors") and not protocol.better(0.5, 0.5, "paper")  # a tie: the later
    assert protocol.better(-0.1, -math.inf, "paper")


def test_11_dmer_counts_epochs_of_the_whole_loader():
    epoch0 = [epoch_batch_indices(7, 3, 0, s) for s in range(3)]
    assert [len(b) for b in epoch0] == [3, 3, 1] and sorted(i for b in epoch0 for i in b) == list(range(7))
    assert sorted(i for s in range(3, 6) for i in epoch_batch_indices(7, 3, 0, s)) == list(range(7))
    assert protocol.run_length("authors", False, 10, 2, 7, 3) == (6, 3)
    assert protocol.run_length("authors", False, 10, None, 7, 3) == (12, 3)  # 10 updates -> 4 whole epochs
    assert protocol.run_length("paper", False, 10, None, 7, 3) == (10, 0)
    assert protocol.run_length("authors", True, 10, None, 7, 3) == (10, 0)  # a meta-step is their epoch
    with pytest.raises(UserError, match="train.epochs"):
        apply_overrides(preset("quick"), ["train.epochs=3"])


def test_11_a_dmer_run_is_whole_epochs_validated_after_each(tiny_ds, tiny_root, tiny_cache, tmp_path):  # noqa: F811
    cfg = tiny_config(tiny_root, tiny_cache, extra=["protocol=authors", "train.epochs=2"])
    with contextlib.redirect_stderr(io.StringIO()):
        summary = train(cfg, tmp_path / "dmer", ds=tiny_ds, cache=FeatureCache(tiny_cache), progress=False)
    per_epoch = -(-len([s for s in tiny_ds.train_ids if s not in tiny_ds.test_ids]) // 4)
    assert (summary["steps"], summary["epochs"], summary["updates_per_epoch"]) == (2 * per_epoch, 2, per_epoch)
    history = json.loads((tmp_path / "dmer" / "history.json").read_text())
    assert [h["step"] for h in history] == [per_epoch, 2 * per_epoch]
    assert all(h["val_split"] == "test" and h["val_pairs"] == len(tiny_ds.test_ids) for h in history)


# ---- 12: tasks and BatchNorm statistics


def test_12_traditional_tasks_share_no_song_within_a_meta_batch():
    pool = make_task_pool("traditional", {}, [f"s{i:02d}" for i in range(20)], 1, 3)
    for step in range(5):
        tasks = sample_tasks(pool, 4, 0, step, disjoint=AUTHORS.disjoint_tasks)
        songs = [s for sup, qry in tasks for s, _ in sup + qry]
        assert len(songs) == 16 == len(set(songs)) and all(len(q) == 3 for _, q in tasks)
    repeats = [step for step in range(5) if len({s for sup, qry in sample_tasks(pool, 4, 0, step)
                                                 for s, _ in sup + qry}) < 16]
    assert repeats  # paper: each task draws on its own, so songs repeat across tasks
    with pytest.raises(UserError, match="sharing no song"):
        sample_tasks(pool, 6, 0, 0, disjoint=True)


class BNNet(nn.Module):
    """Conv + BatchNorm per step (one per-task block on the batched path), then a linear head."""

    inputs = ("mel", "mask")

    def __init__(self):
        super().__init__()
        self.block = nn.Sequential(nn.Conv1d(3, 4, 1), nn.BatchNorm1d(4))
        self.head = nn.Linear(4, 2)

    def forward(self, batch):
        h = self.block(batch["mel"].transpose(1, 2)).transpose(1, 2)
        return {"pred": self.head(torch.tanh(h))}


@pytest.mark.parametrize("way", ["loop", "batched"])
def test_12_batchnorm_statistics_are_shared_across_tasks_in_turn(way):
    torch.manual_seed(0)
    model = BNNet().train()
    g = torch.Generator().manual_seed(1)

    def batch(shift):
        return {"mel": torch.randn(2, 5, 3, generator=g) + shift, "y": torch.rand(2, 5, 2, generator=g),
                "mask": torch.ones(2, 5, dtype=torch.bool)}

    tasks = [(batch(t), batch(t + 0.5)) for t in range(3)]
    cfg = MetaConfig(inner_lr=0.0, inner_steps=2)  # lr 0: the weights, so each batch's statistics, stay fixed
    conv, bn = model.block
    r_mean, r_var, m = bn.running_mean.clone(), bn.running_var.clone(), bn.momentum
    with torch.no_grad():  # one copy through every forward of every task in turn (learn2learn)
        for sup, qry in tasks:
            for b in [sup] * cfg.inner_steps + [qry]:
                h = conv(b["mel"].transpose(1, 2))
                r_mean = (1 - m) * r_mean + m * h.mean((0, 2))
                r_var = (1 - m) * r_var + m * h.var((0, 2), unbiased=True)
    fn = meta_loss_loop if way == "loop" else meta_loss_batched
    fn(model, tasks, cfg, share_stats=AUTHORS.shared_stats)
    assert torch.allclose(bn.running_mean, r_mean, atol=1e-6) and torch.allclose(bn.running_var, r_var, atol=1e-6)
    assert int(bn.num_batches_tracked) == 3 * 3
    torch.manual_seed(0)
    paper = BNNet().train()  # the same weights
    fn(paper, tasks, cfg)
    assert not torch.allclose(paper.block[1].running_mean, r_mean, atol=1e-4)  # paper: mean of per-task copies


# ---- runs: config.json, two metrics files, the leakage warning and marks


@pytest.fixture(scope="module")
def runs(tiny_ds, tiny_root, tiny_cache, tmp_path_factory):  # noqa: F811
    out, cache = tmp_path_factory.mktemp("protocols"), FeatureCache(tiny_cache)
    extra = ["tasks.min_songs=2", "train.steps=1"]
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        train(tiny_config(tiny_root, tiny_cache, mode="pdmer", extra=[*extra, "protocol=authors"]), out / "authors",
              ds=tiny_ds, cache=cache, progress=False)
    train(tiny_config(tiny_root, tiny_cache, mode="pdmer", extra=extra), out / "paper", ds=tiny_ds, cache=cache,
          progress=False)
    return {"authors": out / "authors", "paper": out / "paper", "train_err": err.getvalue()}


def test_config_json_records_the_protocol_as_part_of_the_run(runs, tiny_ds, tiny_root, tiny_cache):  # noqa: F811
    for name in ("authors", "paper"):
        assert json.loads((runs[name] / "config.json").read_text())["protocol"] == name
    a, p = (RunConfig.load(runs[n] / "config.json") for n in ("authors", "paper"))
    assert a.settings() != p.settings() and a.settings() == dataclasses.replace(p, protocol="authors").settings()
    paper_cfg = tiny_config(tiny_root, tiny_cache, mode="pdmer", extra=["tasks.min_songs=2", "train.steps=1"])
    with pytest.raises(RunConflict, match="protocol"):
        train(paper_cfg, runs["authors"], ds=tiny_ds, progress=False)
    args = build_parser().parse_args(["train", "--mode", "dmer", "--out", "x", "--preset", "paper",
                                      "--protocol", "authors"])
    cfg = config_from_args(args)
    assert (cfg.protocol, cfg.train.batch_size, cfg.train.epochs) == ("authors", 15, 2000)


def test_a_run_evaluated_under_both_protocols_gives_two_metrics_files(runs, tiny_ds, capsys):  # noqa: F811
    run = runs["paper"]
    own = evaluate_run(run, ds=tiny_ds, progress=False)
    text = (run / "metrics.json").read_text()
    other = evaluate_run(run, ds=tiny_ds, progress=False, protocol="authors")
    assert (run / "metrics.json").read_text() == text  # the run's own file is left alone
    assert read_metrics(run / "metrics-authors.json") == other and read_metrics(run / "metrics.json") == own
    assert json.loads(text)["protocol"] == "paper" and json.loads(text)["selected_on_test"] is False
    assert json.loads((run / "metrics-authors.json").read_text())["protocol"] == "authors"
    assert MEAN in other.pdmer.songs_per_listener and MEAN not in own.pdmer.songs_per_listener
    assert own.dmer.scores.rows != other.dmer.scores.rows
    for m, name in ((own, "paper"), (other, "authors")):
        assert f"protocol {name}" in format_metrics(m)
        assert f"protocol: {name}" in provenance_text(provenance({"row": [m]}, RunConfig(), [0]))
    both = provenance_text(provenance({"a": [own], "b": [other]}, RunConfig(), [0]))
    assert "protocol: authors, paper" in both and "leakage" not in both
    # the CLI writes the other protocol's file too, and reuses it
    assert cli_main(["evaluate", "--run", str(run), "--protocol", "authors", "--reuse", "--json", "--quiet"]) == 0
    assert json.loads(capsys.readouterr().out)["protocol"] == "authors"
    authors_own = evaluate_run(runs["authors"], ds=tiny_ds, progress=False, protocol="paper")
    assert authors_own.protocol == "paper" and (runs["authors"] / "metrics-paper.json").is_file()


def test_the_leakage_warning_is_printed_and_every_output_is_marked(runs, tiny_ds, capsys):  # noqa: F811
    assert "test-set leakage" in runs["train_err"]
    summary = json.loads((runs["authors"] / "train_summary.json").read_text())
    assert summary["selected_on_test"] is True and summary["protocol"] == "authors"
    history = json.loads((runs["authors"] / "history.json").read_text())
    assert [h["step"] for h in history] == [1] and history[0]["val_split"] == "test"
    assert history[0]["val_pairs"] == summary["test_pairs"] > 0
    m = evaluate_run(runs["authors"], ds=tiny_ds, progress=False)
    assert "test-set leakage" in capsys.readouterr().err
    assert json.loads((runs["authors"] / "metrics.json").read_text())["selected_on_test"] is True
    assert protocol.LEAKAGE_MARK in format_metrics(m)
    assert provenance({"row": [m]}, RunConfig(), [0])["selection"] == protocol.LEAKAGE_MARK
    assert protocol.LEAKAGE_MARK in provenance_text(provenance({"row": [m]}, RunConfig(), [0]))
    plain = evaluate_run(runs["paper"], ds=tiny_ds, progress=False)
    assert not plain.selected_on_test and protocol.LEAKAGE_MARK not in format_metrics(plain)


# ---- 4: the authors' ImageBind input (encoder imagebind only)


@pytest.fixture(scope="module")
def ib_data(tmp_path_factory):
    """(dataset, checkpoint, cache) with train song "1" (18 s, labels 15-17.5 s) and test song "2" (47 s,
    labels 15-46.5 s), both stereo at 44.1 kHz, and a random-weight ImageBind in the official key layout."""
    root = tmp_path_factory.mktemp("ib_songs")
    ckpt = root / "imagebind_tiny.pth"
    write_official_checkpoint(ckpt, TINY)
    songs = {}
    for sid, seconds, steps in (("1", 18.0, 6), ("2", 47.0, 64)):
        path = stereo_fixture(root / f"{sid}.wav", seconds=seconds)
        t = 15.0 + 0.5 * np.arange(steps)
        songs[sid] = Song(sid, path, {MEAN: Curve(t, np.sin(t), np.cos(t))})
    ds = MusicDataset("x", root, songs, ["1"], ["2"], (-1, 1))
    return ds, ckpt, FeatureCache(root / "cache")


def _ib_config(ckpt, protocol_name="authors"):
    return apply_overrides(preset("quick"), [*TINY_RUN, "encoder=imagebind", f"encoder_checkpoint={ckpt}",
                                             f"protocol={protocol_name}"])


@pytest.fixture(scope="module")
def ib_stores(ib_data):
    """The authors' and the paper's stores of both songs, with a tiny DSAML reading the 1024-d global."""
    ds, ckpt, cache = ib_data
    cfg = _ib_config(ckpt)
    torch.manual_seed(0)
    model = build_model("dsaml", cfg.model_size, **cfg.model_overrides()).eval()
    authors = protocol_store(ds, ["1", "2"], cfg, model, cache, test_ids=["2"], progress=False)
    paper = protocol_store(ds, ["1", "2"], cfg, model, cache, protocol="paper", test_ids=["2"], progress=False)
    return {"authors": authors, "paper": paper, "model": model, "cfg": cfg}


def _mono(path):
    data, sr = sf.read(str(path), dtype="float32", always_2d=True)
    assert sr == 44100
    return data.mean(axis=1), data


def _authors_clips(wave, bounds):
    """The authors' ImageBind input from a 44.1 kHz mono wave: waveform2melspec at sample_frequency 44100."""
    out = []
    for a, b in bounds:
        clip = torch.from_numpy(np.ascontiguousarray(wave[a:b]))
        fb = kaldi_fbank(clip - clip.mean(), sample_rate=44100).T  # 1102-sample frames, shift 441
        assert fb.shape == (128, 198)  # 1 + (88200 - 1102) // 441 frames, padded to 204
        out.append((torch.nn.functional.pad(fb, (0, 6)) + 4.268) / 9.138)
    return torch.stack(out).unsqueeze(1)


def test_4_imagebind_is_fed_the_44k_mono_mix_with_pytorchvideo_015_clips(ib_data, ib_stores):
    ds, ckpt, cache = ib_data
    mono, stereo = _mono(ds.songs["1"].audio_path)
    # training song: 15 s + train.window / 2 = 6 s, of which the file holds 3 s: zero-padded to 264600 samples
    excerpt = np.pad(mono[661500:], (0, 264600 - len(mono[661500:])))
    assert len(mono[661500:]) == 132300
    # d = 6 s: 0.1.5 starts k * 4 / 3 s (pinned: k * 2 s), at 44100 samples a second
    clips = _authors_clips(excerpt, [(0, 88200), (58800, 147000), (117600, 205800)])
    encoder = get_encoder("imagebind", ckpt, clip_spacing=AUTHORS.imagebind_clip_spacing,
                          native_rate=AUTHORS.imagebind_native_rate)
    wave, sr = encoder.load(ds.songs["1"].audio_path)
    assert sr == 44100 and np.array_equal(wave, mono)
    torch.testing.assert_close(encoder.clips(excerpt), clips)
    model = load_imagebind_audio(ckpt)
    with torch.no_grad():
        ref = model(clips[None])[0].numpy()
    got = ib_stores["authors"]["1"].inputs["global"]
    assert got.shape == (1024,)
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-4)
    # each rule reverted moves the vector: Meta's 16 kHz channel 0, pinned spacing, channel 0, no padding
    pinned = _authors_clips(excerpt, [(0, 88200), (88200, 176400), (176400, 264600)])
    left = np.pad(stereo[661500:, 0], (0, 132300))
    with torch.no_grad():
        reverted = {"pinned": model(pinned[None])[0].numpy(),
                    "channel 0": model(_authors_clips(left, [(0, 88200), (58800, 147000), (117600, 205800)])[None])[0].numpy(),
                    "no padding": model(_authors_clips(mono[661500:], [(0, 88200), (14700, 102900), (29400, 117600)])[None])[0].numpy()}
    reverted["16 kHz"] = ib_stores["paper"]["1"].inputs["global"]
    reverted["16 kHz fbank"] = get_encoder("imagebind", ckpt, clip_spacing="pytorchvideo-0.1.5").embed(excerpt)
    for what, vec in reverted.items():
        assert np.abs(vec - got).max() > 1e-2, what
    # its own cache entries: the paper's store did not read the authors' ones back (nor the reverse)
    assert len(list((cache.root / "global").glob("*.npz"))) == 3  # authors "1", paper "1" and "2"
    assert len(list((cache.root / "global_steps").glob("*.npz"))) == 1
    # encoder "none" (the quick preset): point 4 changes nothing
    assert not authors_global(preset("quick", protocol="authors"))
    assert authors_global(ib_stores["cfg"]) and not authors_global(ib_stores["cfg"], "paper")


def test_4_a_test_song_has_one_global_per_step_over_30_s_centred_on_it(ib_data, ib_stores):
    # the audio after the first label (15 s) holds n = 32 s; step i's window is [0.5 i - 15, 0.5 i + 15) s of it
    n = 32 * 44100
    by_hand = {0: [(0, 661500), (0, 661500)],  # the start: its first 15 s twice
               1: [(0, 639450), (0, 683550)],  # 14.5 s of the start repeated, then 0-15.5 s
               29: [(0, 22050), (0, 1300950)],
               30: [(0, 1323000)],  # the middle: 0-30 s
               34: [(88200, 1411200)],  # ends exactly at the end of the audio
               35: [(110250, 1411200), (1389150, 1411200)],  # the end: 2.5-32 s, then its last 0.5 s again
               63: [(727650, 1411200), (771750, 1411200)]}
    for step, ranges in by_hand.items():
        assert step_ranges(n, step, 44100) == ranges, step
        assert sum(b - a for a, b in ranges) == 1323000
    ds, ckpt, _ = ib_data
    mono, _ = _mono(ds.songs["2"].audio_path)
    after = mono[661500:]
    assert len(after) == n
    g = ib_stores["authors"]["2"].inputs["global"]
    assert g.shape == (64, 1024)
    encoder = get_encoder("imagebind", ckpt, clip_spacing="pytorchvideo-0.1.5", native_rate=True)
    for step in (0, 1, 30, 35, 63):
        window = np.concatenate([after[a:b] for a, b in by_hand[step]])
        np.testing.assert_allclose(g[step], encoder.embed(window), rtol=0, atol=1e-5)
    assert np.abs(g[0] - g[30]).max() > 1e-2 and np.abs(g[30] - g[63]).max() > 1e-2
    assert ib_stores["paper"]["2"].inputs["global"].shape == (1024,)  # paper: one vector of the labelled span


def test_4_the_per_step_global_reaches_the_prediction_of_a_test_song(ib_stores):
    model, cfg, sd = ib_stores["model"], ib_stores["cfg"], ib_stores["authors"]["2"]
    g, W, T = torch.from_numpy(sd.inputs["global"]), cfg.train.window, len(sd.times)
    mel = torch.from_numpy(sd.inputs["mel"])
    with torch.no_grad():  # window s sees the global of its own steps, s .. s + W - 1 (slide_inference)
        windows = np.stack([model({"mel": mel[s:s + W][None], "global": g[s:s + W][None],
                                   "mask": torch.ones(1, W, dtype=torch.bool)})["pred"][0].numpy()
                            for s in range(T - W + 1)])
    pred = predict_song(model, sd, W, cfg.eval.hop, stitch="authors")
    np.testing.assert_allclose(pred, stitch_authors(windows, T), rtol=0, atol=1e-5)
    song_global = SongData(sd.song_id, sd.times, {**sd.inputs, "global": sd.inputs["global"].mean(0)}, sd.labels)
    assert np.abs(predict_song(model, song_global, W, cfg.eval.hop, stitch="authors") - pred).max() > 1e-3
    # support windows and the same-song rest take their steps' global too
    batch = make_batch({"2": sd}, [Item("2", MEAN, 7, W)], W, ("mel", "global", "mask"))
    assert torch.equal(batch["global"][0], g[7:7 + W])
    part = protocol.song_part(sd, 5, T)
    assert np.array_equal(part.inputs["global"], sd.inputs["global"][5:])
    # DMER evaluation under the authors' protocol scores with it (train mode: the same dropout draws)
    store, alt = {"2": sd}, {"2": song_global}
    torch.manual_seed(0)
    a = evaluate_dmer(model, store, ["2"], cfg).scores.rows[0]
    torch.manual_seed(0)
    b = evaluate_dmer(model, alt, ["2"], cfg).scores.rows[0]
    assert a["arousal_ccc"] != b["arousal_ccc"] and a["valence_rmse"] != b["valence_rmse"]
