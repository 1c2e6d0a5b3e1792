"""Protocol "authors" (training.protocol): one test per difference 5-12 of issue 11, each failing when that
rule falls back to the paper's, plus config.json, two metrics files per run, and the leakage warning and marks.

Hand-made datasets for the rules; the tiny synthetic dataset of test_train.py for the runs.
"""

import contextlib
import dataclasses
import io
import json
import math

import numpy as np
import pytest
import torch
import torch.nn as nn
from test_train import one_thread, tiny_cache, tiny_config, tiny_ds, tiny_root  # noqa: F401 (fixtures)

from dsaml_utils.cli import build_parser
from dsaml_utils.cli import main as cli_main
from dsaml_utils.cli.train import config_from_args
from dsaml_utils.data.types import MEAN, Curve, MusicDataset, Song, TaskFilter
from dsaml_utils.errors import RunConflict, UserError
from dsaml_utils.evaluation.protocols import held_out_listeners
from dsaml_utils.evaluation.report import format_metrics
from dsaml_utils.evaluation.results import read_metrics
from dsaml_utils.evaluation.run import evaluate_run
from dsaml_utils.experiments.tables import provenance
from dsaml_utils.features.cache import FeatureCache
from dsaml_utils.features.songs import SongData, align_curve
from dsaml_utils.meta.batched import meta_loss_batched
from dsaml_utils.meta.maml import MetaConfig, meta_loss_loop
from dsaml_utils.plots.base import provenance_text
from dsaml_utils.training import protocol
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
