"""Trainer: song tensors, windows and masks, splits and task sampling, checkpoints, exact resumption, CLI.

Everything runs on a tiny synthetic dataset (10 clips of 20 s, 2 full test songs, 3 training and 2 test
listeners, 8 kHz) with a tiny DSAML (`tiny_config`). `tiny_root`, `tiny_cache` and `tiny_config` are
imported by test_evaluate.py and test_experiments.py.
"""

import json
import os
from pathlib import Path

import numpy as np
import pytest
from fixtures import one_thread  # noqa: F401 (an autouse fixture)
import torch

import dsaml_utils.io.atomic as atomic_io
from dsaml_utils.cli import main as cli_main
from dsaml_utils.data.registry import load_dataset
from dsaml_utils.data.synthetic.config import SynthConfig
from dsaml_utils.data.synthetic.writer import generate
from dsaml_utils.data.types import MEAN, Curve
from dsaml_utils.errors import RunConflict, UserError
from dsaml_utils.features.cache import FeatureCache
from dsaml_utils.features.songs import (
    Item,
    SongData,
    align_curve,
    make_batch,
    random_item,
    window_starts,
)
from dsaml_utils.io.atomic import load_checkpoint, save_checkpoint
from dsaml_utils.models.registry import build_model
from dsaml_utils.training.config import apply_overrides, preset
from dsaml_utils.training.sampling import (
    batch_indices,
    make_task_pool,
    sample_tasks,
    split_validation,
)
from dsaml_utils.training.store import build_store
from dsaml_utils.training.trainer import Stop, Trainer, train

TINY_SYNTH = dict(songs=10, full_songs=2, anonymous_songs=1, listeners=3, test_listeners=2, lazy_listeners=0,
                  raters_per_song=2, raters_per_full_song=2, clip_seconds=20.0, full_seconds=(25.0, 30.0),
                  sample_rate=8000)
TINY_RUN = ["train.steps=4", "train.window=12", "train.batch_size=4", "train.eval_every=2",
            "train.checkpoint_every=2", "train.val_fraction=0.2", "tasks.min_songs=3", "meta.tasks_per_step=2",
            "meta.inner_steps=2", "meta.query_songs=2", "eval.hop=6", "eval.support_steps=8", "eval.kshots=[1, 4]",
            "mel.sample_rate=8000", "mel.n_mels=16",
            'model_config={"d_model": 16, "n_heads": 2, "d_ff": 32, "n_layers": 1, "max_rel_distance": 12}']


@pytest.fixture(scope="session")
def tiny_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny_synth")
    generate(root, SynthConfig(**TINY_SYNTH), overwrite=True)
    return root


@pytest.fixture(scope="session")
def tiny_cache(tmp_path_factory):
    return str(tmp_path_factory.mktemp("tiny_cache"))



def tiny_config(root, cache, mode="dmer", strategy=None, extra=()):
    cfg = preset("quick", root=str(root), cache_dir=str(cache))
    cfg.mode, cfg.strategy = mode, strategy
    return apply_overrides(cfg, [*TINY_RUN, *extra])


@pytest.fixture(scope="session")
def tiny_ds(tiny_root):
    return load_dataset("synthetic", tiny_root)


def test_align_curve_puts_values_on_the_grid():
    times = 15.0 + 0.5 * np.arange(6)
    c = Curve(times[2:5], [1, 2, 3], [4, 5, 6])
    out = align_curve(c, times)
    assert np.isnan(out[[0, 1, 5]]).all()
    assert out[2:5].tolist() == [[1, 4], [2, 5], [3, 6]]
    sd = SongData("s", times, {}, {"x": out})
    assert sd.span("x") == (2, 5)
    off = Curve(times[:2] + 0.25, [1, 2], [1, 2])  # off the grid: ignored
    assert np.isnan(align_curve(off, times)).all()


def test_window_starts_cover_every_step():
    assert window_starts(5, 8, 4) == [0]
    assert window_starts(20, 8, 6) == [0, 6, 12]
    assert window_starts(21, 8, 6) == [0, 6, 12, 13]
    for length in (8, 9, 30, 61):
        covered = set()
        for s in window_starts(length, 8, 3):
            assert 0 <= s <= max(0, length - 8)
            covered |= set(range(s, min(length, s + 8)))
        assert covered == set(range(length))


def _fake_store():
    rng = np.random.default_rng(0)
    a = SongData("a", 0.5 * np.arange(10), {"mel": rng.normal(size=(10, 3, 4)).astype(np.float32),
                                              "global": np.ones(5, np.float32)},
                   {MEAN: rng.normal(size=(10, 2)).astype(np.float32)})
    lab = np.full((10, 2), np.nan, np.float32)
    lab[:6] = 0.5
    a.labels["L"] = lab
    return {"a": a}


def test_make_batch_pads_and_masks():
    store = _fake_store()
    items = [Item("a", MEAN, 2, 8), Item("a", "L", 0, 6), Item("a", MEAN, 7, 3)]
    b = make_batch(store, items, 8, ("mel", "global", "mask"))
    assert b["mel"].shape == (3, 8, 3, 4) and b["global"].shape == (3, 5) and b["y"].shape == (3, 8, 2)
    assert b["mask"].sum(1).tolist() == [8, 6, 3]
    assert torch.equal(b["mel"][0], torch.from_numpy(store["a"].inputs["mel"][2:10]))
    assert torch.equal(b["y"][2, :3], torch.from_numpy(store["a"].labels[MEAN][7:10]))
    assert float(b["mel"][2, 3:].abs().sum()) == 0 and float(b["y"][1, 6:].abs().sum()) == 0
    with pytest.raises(ValueError, match="missing labels"):
        make_batch(store, [Item("a", "L", 4, 4)], 8, ("mel", "mask"))
    rng = np.random.default_rng(1)
    for _ in range(20):  # random windows stay inside the listener's span
        it = random_item(store, "a", "L", 4, rng)
        assert 0 <= it.start and it.start + it.length <= 6 and it.length == 4


def test_split_and_batch_order_are_functions_of_seed_and_step():
    ids = [str(i) for i in range(20)]
    tr, va = split_validation(ids, 0.2, seed=3)
    assert len(va) == 4 and not set(tr) & set(va) and sorted(tr + va) == sorted(ids)
    assert split_validation(ids, 0.2, seed=3) == (tr, va) and split_validation(ids, 0.2, seed=4) != (tr, va)
    assert split_validation(ids, 0.0, seed=3) == (sorted(ids), [])
    # one epoch of batches visits every sample once; any step can be recomputed on its own
    n, bs = 10, 4
    seen = [i for step in range(5) for i in batch_indices(n, bs, 0, step)]
    assert sorted(seen[:10]) == list(range(10)) and sorted(seen[10:20]) == list(range(10))
    assert batch_indices(n, bs, 0, 3) == seen[12:16]


def test_task_pool_and_sampling_keep_support_and_query_apart():
    pool = make_task_pool("personalized", {"A": list("abcdef"), "B": list("cdefgh"), "C": list("xyz")},
                            [], support=1, query=15)
    assert pool.query == 2  # the listener with the fewest songs has 3
    for step in range(30):
        for sup, qry in sample_tasks(pool, 4, seed=0, step=step):
            assert len(sup) == 1 and len(qry) == 2
            lst = {l for _, l in sup + qry}
            assert len(lst) == 1
            songs = [s for s, _ in sup + qry]
            assert len(set(songs)) == 3 and set(songs) <= set(pool.listener_songs[lst.pop()])
    assert sample_tasks(pool, 4, 0, 7) == sample_tasks(pool, 4, 0, 7)
    trad = make_task_pool("traditional", {}, list("abcde"), 1, 15)
    for sup, qry in sample_tasks(trad, 3, 0, 0):
        assert {l for _, l in sup + qry} == {MEAN} and len({s for s, _ in sup + qry}) == 5
    with pytest.raises(UserError, match="query"):
        make_task_pool("personalized", {"A": ["a"]}, [], 1, 15)
    with pytest.raises(UserError, match="listener"):
        make_task_pool("personalized", {}, [], 1, 15)


def test_build_store_shapes(tiny_ds, tiny_root, tiny_cache):
    cfg = tiny_config(tiny_root, tiny_cache)

    model = build_model(cfg.model, cfg.preset, **cfg.model_overrides())
    ids = tiny_ds.train_ids[:2] + tiny_ds.test_ids[:1]
    store = build_store(tiny_ds, ids, cfg, model, FeatureCache(tiny_cache), progress=False)
    for sid in ids:
        sd, song = store[sid], tiny_ds.songs[sid]
        assert sd.inputs["mel"].shape == (len(song.curves[MEAN]), cfg.mel.n_frames, 16)
        assert set(sd.labels) == set(song.curves)
        for lst, c in song.curves.items():
            s, e = sd.span(lst)
            assert np.allclose(sd.labels[lst][s:e], c.values()[: e - s])


def test_personalized_training_never_sees_test_listeners_or_songs(tiny_ds, tiny_root, tiny_cache, tmp_path):
    cfg = tiny_config(tiny_root, tiny_cache, mode="pdmer")
    tr = Trainer(cfg, tmp_path / "run", ds=tiny_ds, cache=FeatureCache(tiny_cache), progress=False)
    test_songs = set(tiny_ds.test_ids)
    test_listeners = tiny_ds.listeners(tiny_ds.test_ids)
    assert test_listeners and not set(test_listeners) & set(tr.listener_songs)
    assert not set(tr.val_listeners) & set(tr.listener_songs)  # validation listeners are held out too
    for step in range(50):
        for sup, qry in sample_tasks(tr.pool, 4, cfg.train.seed, step):
            assert not {s for s, _ in sup} & {s for s, _ in qry}
            for s, lst in sup + qry:
                assert s not in test_songs and lst not in test_listeners and lst in tr.listener_songs
                assert lst in tiny_ds.songs[s].curves


def _weights(run):
    return torch.load(Path(run) / "model.pt", weights_only=True)["model"]


@pytest.mark.parametrize("mode", ["dmer", "pdmer"])
def test_resume_after_kill_gives_the_same_result(tiny_ds, tiny_root, tiny_cache, tmp_path, mode):
    cache = FeatureCache(tiny_cache)
    extra = ["train.steps=5", "train.eval_every=1"]
    cfg = tiny_config(tiny_root, tiny_cache, mode=mode, extra=extra)
    full = train(cfg, tmp_path / "full", ds=tiny_ds, cache=cache, progress=False)

    def kill_at_3(trainer):
        if trainer.step == 3:
            raise Stop

    cfg2 = tiny_config(tiny_root, tiny_cache, mode=mode, extra=extra)
    with pytest.raises(Stop):
        train(cfg2, tmp_path / "killed", ds=tiny_ds, cache=cache, progress=False, callback=kill_at_3)
    ck = torch.load(tmp_path / "killed" / "checkpoint.pt", weights_only=True)
    assert ck["step"] == 2 and not (tmp_path / "killed" / "model.pt").exists()  # lost step 3 only
    again = train(cfg2, tmp_path / "killed", ds=tiny_ds, cache=cache, progress=False)
    assert again["complete"] and again["selected_step"] == full["selected_step"]
    assert again["best_val_score"] == pytest.approx(full["best_val_score"], abs=1e-6)
    a, b = _weights(tmp_path / "full"), _weights(tmp_path / "killed")
    assert a.keys() == b.keys() and all(torch.allclose(a[k].float(), b[k].float(), atol=1e-6) for k in a)
    ha = json.loads((tmp_path / "full" / "history.json").read_text())
    hb = json.loads((tmp_path / "killed" / "history.json").read_text())
    assert [r["step"] for r in ha] == [r["step"] for r in hb] == [1, 2, 3, 4, 5]
    assert np.allclose([r["val_score"] for r in ha], [r["val_score"] for r in hb], atol=1e-6)


def test_stopping_after_n_steps_and_finished_runs(tiny_ds, tiny_root, tiny_cache, tmp_path):
    cache = FeatureCache(tiny_cache)
    cfg = tiny_config(tiny_root, tiny_cache)
    part = train(cfg, tmp_path / "r", ds=tiny_ds, cache=cache, progress=False, max_steps_this_call=2)
    assert part == {"stopped_at": 2, "complete": False}
    done = train(cfg, tmp_path / "r", ds=tiny_ds, cache=cache, progress=False)
    assert done["complete"] and done["steps"] == 4
    for f in ("config.json", "checkpoint.pt", "best.pt", "model.pt", "history.json", "train_summary.json"):
        assert (tmp_path / "r" / f).is_file(), f
    assert train(cfg, tmp_path / "r", ds=tiny_ds, cache=cache, progress=False) == done  # nothing to do
    other = tiny_config(tiny_root, tiny_cache, extra=["train.lr=0.5"])
    with pytest.raises(RunConflict, match="other settings"):
        train(other, tmp_path / "r", ds=tiny_ds, cache=cache, progress=False)


def test_checkpoint_writes_are_atomic(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, {"step": 1, "w": torch.ones(3)})

    def broken_save(obj, f):
        f.write(b"half a checkpoint")
        raise KeyboardInterrupt  # killed mid-write

    monkeypatch.setattr(atomic_io.torch, "save", broken_save)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, {"step": 2, "w": torch.zeros(3)})
    monkeypatch.undo()
    state = load_checkpoint(path)
    assert state["step"] == 1 and torch.equal(state["w"], torch.ones(3))
    assert sorted(os.listdir(tmp_path)) == ["checkpoint.pt"]  # no temp file left behind
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="junk.pt"):
        load_checkpoint(tmp_path / "junk.pt")


def test_init_starts_from_another_runs_weights(tiny_ds, tiny_root, tiny_cache, tmp_path):
    cache = FeatureCache(tiny_cache)
    train(tiny_config(tiny_root, tiny_cache, extra=["train.steps=2"]), tmp_path / "dmer", ds=tiny_ds,
            cache=cache, progress=False)
    cfg = tiny_config(tiny_root, tiny_cache, mode="pdmer", extra=[f"init={json.dumps(str(tmp_path / 'dmer'))}"])
    tr = Trainer(cfg, tmp_path / "meta", ds=tiny_ds, cache=cache, progress=False)
    w = _weights(tmp_path / "dmer")
    assert all(torch.equal(v, w[k]) for k, v in tr.model.state_dict().items())


def test_train_cli(tiny_root, tiny_cache, tmp_path, capsys):
    args = ["train", "--mode", "dmer", "--dataset", "synthetic", "--root", str(tiny_root), "--out",
            str(tmp_path / "cli"), "--cache", tiny_cache, "--steps", "2", "--seed", "1", "--quiet"]
    args += [a for s in TINY_RUN if not s.startswith("train.steps") for a in ("--set", s)]
    assert cli_main(args) == 0
    assert "2 steps" in capsys.readouterr().out
    cfg = json.loads((tmp_path / "cli" / "config.json").read_text())
    assert cfg["train"]["seed"] == 1 and cfg["mode"] == "dmer" and cfg["strategy"] == "traditional"
    bad = ["train", "--mode", "dmer", "--dataset", "synthetic", "--root", str(tmp_path / "nowhere"),
           "--out", str(tmp_path / "x"), "--quiet"]
    assert cli_main(bad) == 2
    err = capsys.readouterr().err
    assert "nowhere" in err and "dsaml synth" in err
