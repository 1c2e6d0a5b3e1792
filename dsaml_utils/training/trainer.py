"""The trainer: one run of DMER training or MAML meta-training, resumable, with validation.

Runs. `train(cfg, out)` writes into the run folder `out`:
  .lock            held (fcntl.flock, with the holder's pid) from setup to the end of training: a second
                   process on the folder is refused with one line naming the folder and that pid
  config.json      the RunConfig as resolved at the start (a rerun with other settings is refused)
  checkpoint.pt    model, optimizer, torch RNG state, step, config, best score, history, and the data
                   fingerprint (`data.registry.data_fingerprint`) and resolved root (atomic, every
                   `train.checkpoint_every` updates): a killed run started again with the same command
                   continues from it and loses at most that many updates
  best.pt          weights with the best validation score so far
  history.json     training loss and validation scores per evaluation
  model.pt         the weights evaluation uses (best or last, `train.select`), written when training ends
Resumption is exact: the data order, the task draws and the dropout seed of update `s` are functions of
(seed, s) only, so an interrupted run ends with the same weights as an uninterrupted one.

A run folder is a transaction. Once the lock is held, stale `*.tmp` files (left by a killed atomic write) are
removed. Resuming on other data (another fingerprint) is refused with both fingerprints named; so is reusing
a finished run (model.pt, which records the fingerprint too) when the data has changed since. A checkpoint
from before fingerprints were recorded is not checked. Run identity is `RunConfig.settings`: the spelling of
the dataset root and the cache folder do not count. While the update loop runs, SIGINT and SIGTERM (their
previous handlers restored afterwards) let the current update and its validation finish, save checkpoint.pt
and raise `Interrupted` ("interrupted at step N; rerun the same command to resume"; exit status 130); a
second signal stops at once (KeyboardInterrupt; the files stay whole, every write is atomic).

Validation. Mode dmer: `train.val_fraction` of the training songs (mean labels), scored by sliding-window
prediction. Mode pdmer: that fraction of the task listeners is held out of meta-training; each is adapted
on one support song and scored on up to 15 of their other songs. The score is the mean of
arousal and valence CCC (higher is better).

Protocol "authors" (`training.protocol`, points 5-12): no validation split; the TEST split selects (leakage:
a warning, and "selected_on_test" in train_summary.json); their tasks, epochs and BatchNorm statistics.

`--init RUN` starts from another run's model.pt (e.g. MAML from a DMER-trained model). The paper does
not say that the authors pretrain before meta-training, so the default is from scratch.

Several processes (torchrun; `dsaml_utils.meta.distributed`). When a process group with more than one rank
is initialised, every rank builds the same data and draws the same tasks, and each meta-step's tasks are
sharded over the ranks (gradients all-reduced: the same update as one process). Validation runs on every
rank (same weights, same fixed plan: no rank waits long at a collective) and rank 0's scores are broadcast;
only rank 0 writes files (a shared run folder is read by all, e.g. to resume) and takes the lock (the others
follow its answer), and rank 0's signal decides when every rank stops. Mode dmer is refused there.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn as nn
from tqdm.auto import tqdm

from dsaml_utils.data.registry import load_dataset
from dsaml_utils.data.types import MEAN, MusicDataset
from dsaml_utils.errors import Interrupted, UserError
from dsaml_utils.features.cache import FeatureCache
from dsaml_utils.features.songs import make_batch, random_item, score_listener_song
from dsaml_utils.io.atomic import atomic_write_text, load_checkpoint, save_checkpoint
from dsaml_utils.io.lock import FolderBusy, FolderLock
from dsaml_utils.meta import batched as meta_batched
from dsaml_utils.meta import distributed as meta_dist
from dsaml_utils.meta import maml
from dsaml_utils.meta.listener import adapt_to_listener, support_items
from dsaml_utils.metrics import mean_ccc, score_song
from dsaml_utils.models.inference import predict_song, resolve_device
from dsaml_utils.runtime import keep_freed_memory
from dsaml_utils.seeding import (
    ADAPT_VALIDATION,
    TORCH_STEP,
    VALIDATION,
    WINDOW,
    generator,
    torch_seed,
)
from dsaml_utils.training import protocol
from dsaml_utils.training.authors_store import protocol_store
from dsaml_utils.training.config import RunConfig, resolve_run
from dsaml_utils.training.runs import (
    _sort_key,
    build_run_model,
    check_same_data,
    check_same_run,
    load_run_model,
    run_fingerprint,
)
from dsaml_utils.training.sampling import (
    VAL_QUERY_SONGS,
    batch_indices,
    check_disjoint,
    epoch_batch_indices,
    make_task_pool,
    sample_tasks,
    split_validation,
)
from dsaml_utils.training.signals import StopRequest


class Stop(Exception):
    """Raised by a step callback to stop training (the run can be resumed)."""


class Trainer:
    """One run: data, model, optimizer, update loop, validation and checkpoints (see the module docstring)."""

    def __init__(self, cfg: RunConfig, out: str | Path, ds: MusicDataset | None = None,
                 cache: FeatureCache | None = None, progress: bool = True):
        keep_freed_memory()  # see dsaml_utils.runtime: large activations are not page-faulted in every update
        cfg = resolve_run(cfg)  # what config.json records: encoder "auto" resolved, absolute root
        # torchrun: rank 0 alone writes files and shows progress; each rank on its own GPU
        self.main = meta_dist.rank() == 0
        self.rules = protocol.rules(cfg.protocol)  # authors: its tasks share BatchNorm statistics in turn
        if (not cfg.maml or self.rules.shared_stats) and meta_dist.world_size() > 1:
            raise UserError(f"{'mode dmer' if not cfg.maml else 'protocol authors'} runs in one process "
                            f"({meta_dist.world_size()} started): only MAML meta-training (mode pdmer) is sharded "
                            "over processes")
        self.cfg, self.out, self.progress = cfg, Path(out), progress and self.main
        self.device = meta_dist.local_device(resolve_device(cfg.train.device))
        self.out.mkdir(parents=True, exist_ok=True)
        self._lock, self._locked, self._stop = FolderLock(self.out), False, StopRequest()
        self._lock_folder()
        try:
            self._setup(ds, cache)
        except BaseException:
            self._unlock()
            raise

    def _setup(self, ds: MusicDataset | None, cache: FeatureCache | None) -> None:
        """Data, model, split, song tensors and optimizer (the folder is locked)."""
        cfg = self.cfg
        check_same_run(self.out, cfg)
        if ds is None and cfg.dataset == "synthetic" and not Path(cfg.root).is_dir():
            raise UserError(f"{cfg.root}: no synthetic dataset there; generate it with `dsaml synth --out {cfg.root}`")
        self.ds = ds if ds is not None else load_dataset(cfg.dataset, cfg.root)
        self.data_fingerprint, self.data_root = run_fingerprint(self.ds, cfg), str(Path(self.ds.root).resolve())
        t = cfg.train
        test = set(self.ds.test_ids)
        train_ids = [s for s in self.ds.train_ids if s not in test]
        if not train_ids:
            raise UserError(f"{self.ds.root}: the dataset has no training songs")

        # model first (its initial weights depend only on the seed)
        torch.manual_seed(t.seed)
        self.model = build_run_model(cfg).to(self.device)
        if cfg.init:
            _, init_model = load_run_model(cfg.init, self.device)
            try:
                self.model.load_state_dict(init_model.state_dict())
            except RuntimeError as exc:
                raise UserError(f"--init {cfg.init}: its model does not fit this run's model ({exc})") from None
        self.keys = tuple(getattr(self.model, "inputs", ("mel", "mask")))

        # data split: validation songs (dmer) or validation listeners (pdmer); authors: none, the test split selects
        listener_songs = protocol.task_listeners(self.ds, train_ids, cfg.tasks, cfg.protocol)
        if cfg.maml and not self.rules.select_on_test:
            fit_listeners, self.val_listeners = split_validation(list(listener_songs), t.val_fraction, t.seed)
            self.fit_ids, self.val_ids = train_ids, []
        else:
            self.fit_ids, self.val_ids = ((train_ids, []) if self.rules.select_on_test
                                          else split_validation(train_ids, t.val_fraction, t.seed))
            fit_listeners, self.val_listeners = list(listener_songs), []
        fit_set = set(self.fit_ids)
        self.listener_songs = {k: [s for s in v if s in fit_set] for k, v in listener_songs.items()
                               if k in set(fit_listeners)}
        self.val_listener_songs = {k: listener_songs[k] for k in self.val_listeners}
        test_ids = list(self.ds.test_ids) if self.rules.select_on_test else []
        needed = sorted(set(self.fit_ids) | set(self.val_ids) | set(test_ids)
                        | {s for v in self.val_listener_songs.values() for s in v}, key=_sort_key)
        self.store = protocol_store(self.ds, needed, cfg, self.model, cache, test_ids=self.ds.test_ids,
                                    progress=self.progress, fit_ids=self.fit_ids)  # frames: normalised on fit_ids  # authors + imagebind: their embeddings (point 4)
        self._drop_missing()

        if cfg.maml:
            songs = [s for s in self.fit_ids if s in self.store]
            self.pool = make_task_pool(cfg.strategy, self.listener_songs, songs, cfg.meta.support_songs,
                                       cfg.meta.query_songs)
            if self.rules.disjoint_tasks:
                check_disjoint(self.pool, cfg.meta.tasks_per_step)
        else:
            if cfg.strategy == "personalized":
                self.samples = [(s, lst) for lst, v in self.listener_songs.items() for s in v]
            else:
                self.samples = [(s, MEAN) for s in self.fit_ids if s in self.store]
            if not self.samples:
                raise UserError("no training samples (songs with audio and labels)")
        self.val_plan = self._validation_plan()
        self.test_plan = (protocol.test_plan(self.ds, self.store, test_ids, cfg.tasks, cfg.maml, cfg.protocol)
                          if self.rules.select_on_test else [])
        self.total, self.per_epoch = protocol.run_length(cfg.protocol, cfg.maml, t.steps, t.epochs,
                                                         0 if cfg.maml else len(self.samples), t.batch_size)
        params = maml.trainable_params(self.model)
        self.optimizer = torch.optim.Adam(params.values(), lr=t.lr)
        self.step = 0
        self.best = {"score": -math.inf, "step": -1}
        self.history: list[dict] = []
        self._losses: list[float] = []
        self.wall = 0.0
        if self.main:
            self.cfg.save(self.out / "config.json")  # only once the run could be set up
            if self.rules.select_on_test:
                protocol.warn_leakage()

    # ---- setup helpers

    def _lock_folder(self) -> None:
        """Rank 0 locks the run folder and removes stale temporary files; every rank raises FolderBusy if it can't."""
        refusal = None
        if self.main:
            try:
                self._lock.acquire()
            except FolderBusy as exc:
                refusal = str(exc)
            else:
                for tmp in self.out.glob("*.tmp"):  # io.atomic's <name>.<random>.tmp of a killed writer
                    if tmp.is_file():
                        tmp.unlink(missing_ok=True)
        refusal = meta_dist.broadcast_object(refusal)
        if refusal is not None:
            raise FolderBusy(refusal)
        self._locked = True

    def _unlock(self) -> None:
        """Let the run folder's lock go."""
        self._lock.release()
        self._locked = False

    def _drop_missing(self) -> None:
        have = set(self.store)
        self.fit_ids = [s for s in self.fit_ids if s in have]
        self.val_ids = [s for s in self.val_ids if s in have]
        for d in (self.listener_songs, self.val_listener_songs):
            for k in list(d):
                d[k] = [s for s in d[k] if s in have and self.store[s].span(k)[1] > self.store[s].span(k)[0]]

    def _validation_plan(self) -> list[tuple[str, list[str], list[str]]]:
        """Fixed (listener, support songs, query songs) for pdmer validation."""
        plan = []
        for i, lst in enumerate(sorted(self.val_listener_songs)):
            songs = self.val_listener_songs[lst]
            if len(songs) < 2:
                continue
            perm = generator(self.cfg.train.seed, VALIDATION, i).permutation(len(songs))
            songs = [songs[j] for j in perm]
            plan.append((lst, songs[:1], songs[1:1 + VAL_QUERY_SONGS]))
        return plan

    # ---- state

    def state(self) -> dict:
        """Everything needed to continue exactly where this run is."""
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "step": self.step,
            "rng": {"torch": torch.get_rng_state()},
            "config": self.cfg.to_json(),
            "best": dict(self.best),
            "history": json.dumps(self.history),
            "wall_seconds": self.wall,
            "pending_losses": torch.tensor(self._losses, dtype=torch.float64),
            "data_fingerprint": self.data_fingerprint,
            "data_root": self.data_root,
            **self._frame_norm(),
        }

    def load_state(self, state: dict) -> None:
        """Restore a state written by `state()`."""
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.step = int(state["step"])
        torch.set_rng_state(state["rng"]["torch"])
        self.best = {"score": float(state["best"]["score"]), "step": int(state["best"]["step"])}
        self.history = json.loads(state["history"])
        self.wall = float(state.get("wall_seconds", 0.0))
        self._losses = [float(x) for x in state.get("pending_losses", torch.zeros(0)).tolist()]

    def save(self) -> None:
        """checkpoint.pt and history.json, both atomically (rank 0 only)."""
        if not self.main:
            return
        save_checkpoint(self.out / "checkpoint.pt", self.state())
        atomic_write_text(self.out / "history.json", json.dumps(self.history, indent=1) + "\n")

    def _frame_norm(self) -> dict:
        """{"frame_norm": the statistics} for a model on frame features (they travel with its weights), else {}."""
        norm = getattr(self.model, "frame_norm", None)
        return {} if norm is None else {"frame_norm": norm.to_dict()}

    # ---- one update

    def update(self) -> float:
        """One optimizer update (dmer) or meta-update (pdmer) for step self.step."""
        cfg, t = self.cfg, self.cfg.train
        torch.manual_seed(torch_seed(t.seed, TORCH_STEP, self.step))
        rng = generator(t.seed, WINDOW, self.step)
        self.model.train()
        if cfg.maml:
            tasks = []
            for sup, qry in sample_tasks(self.pool, cfg.meta.tasks_per_step, t.seed, self.step,
                                         disjoint=self.rules.disjoint_tasks):
                s_items = [random_item(self.store, s, lst, t.window, rng) for s, lst in sup]
                q_items = [random_item(self.store, s, lst, t.window, rng) for s, lst in qry]
                tasks.append((make_batch(self.store, s_items, t.window, self.keys, self.device),
                              make_batch(self.store, q_items, t.window, self.keys, self.device)))
            if meta_dist.world_size() > 1:  # torchrun: this rank's shard of the tasks, gradients all-reduced
                self.optimizer.zero_grad(set_to_none=True)
                loss = meta_dist.meta_backward(self.model, tasks, cfg.meta, batched=t.batched_meta)
                if t.grad_clip is not None:
                    nn.utils.clip_grad_norm_(self.model.parameters(), t.grad_clip)
                self.optimizer.step()
                return loss
            if t.grad_clip is None:
                return meta_batched.meta_step(self.model, self.optimizer, tasks, cfg.meta, batched=t.batched_meta,
                                              share_stats=self.rules.shared_stats)
            self.optimizer.zero_grad(set_to_none=True)
            fn = meta_batched.meta_loss_batched if t.batched_meta else maml.meta_loss_loop
            loss = fn(self.model, tasks, cfg.meta, share_stats=self.rules.shared_stats)
        else:
            order = epoch_batch_indices if self.rules.dmer_epochs else batch_indices
            idx = order(len(self.samples), t.batch_size, t.seed, self.step)
            items = [random_item(self.store, *self.samples[i], t.window, rng) for i in idx]
            batch = make_batch(self.store, items, t.window, self.keys, self.device)
            self.optimizer.zero_grad(set_to_none=True)
            loss = maml.default_loss(self.model(batch), batch)
        loss.backward()
        if t.grad_clip is not None:
            nn.utils.clip_grad_norm_(self.model.parameters(), t.grad_clip)
        self.optimizer.step()
        return float(loss.detach())

    # ---- validation

    def validate(self) -> dict[str, float]:
        """Validation scores of the current weights (see the module docstring)."""
        cfg = self.cfg
        W, hop = cfg.train.window, cfg.eval.hop
        if self.rules.select_on_test:
            return protocol.score_test_split(self.model, self.store, self.test_plan, cfg, cfg.maml, self.device)
        if not cfg.maml:
            if not self.val_ids:
                return {}
            scores = [score_song(predict_song(self.model, self.store[s], W, hop, device=self.device),
                                 self.store[s].labels[MEAN]) for s in self.val_ids]
            return {"val_score": mean_ccc(scores), "val_songs": len(scores)}
        adapted, plain = [], []
        for i, (lst, sup, qry) in enumerate(self.val_plan):
            items = support_items(self.store, sup, lst, cfg.train.window, cfg.eval.support_steps)
            params = adapt_to_listener(self.model, self.store, items, cfg.meta, cfg.train.window,
                                       seed=torch_seed(cfg.train.seed, ADAPT_VALIDATION, i), device=self.device)
            for s in qry:
                sd = self.store[s]
                adapted.append(score_listener_song(predict_song(self.model, sd, W, hop, params, self.device), sd, lst))
                plain.append(score_listener_song(predict_song(self.model, sd, W, hop, None, self.device), sd, lst))
        if not adapted:
            return {}
        return {"val_score": mean_ccc(adapted), "val_score_no_adaptation": mean_ccc(plain), "val_pairs": len(adapted)}

    # ---- loop

    def run(self, max_steps_this_call: int | None = None,
            callback: Callable[["Trainer"], None] | None = None) -> dict:
        """Train until train.steps (resuming from checkpoint.pt); returns the summary (train_summary.json).

        Holds the run folder's lock until it returns or raises; raises Interrupted after SIGINT or SIGTERM."""
        if not self._locked:
            self._lock_folder()
        try:
            with self._stop.catching():
                return self._run(max_steps_this_call, callback)
        finally:
            self._unlock()

    def _run(self, max_steps_this_call: int | None, callback: Callable[["Trainer"], None] | None) -> dict:
        t = self.cfg.train
        ckpt = self.out / "checkpoint.pt"
        if ckpt.is_file():
            state = load_checkpoint(ckpt, self.device)
            check_same_data(ckpt, state, self.data_fingerprint, self.data_root)
            self.load_state(state)
        done_now = 0
        bar = tqdm(total=self.total, initial=self.step, desc=f"train {self.cfg.mode}", unit="step",
                   disable=not self.progress)
        try:
            while self.step < self.total:
                if max_steps_this_call is not None and done_now >= max_steps_this_call:
                    return {"stopped_at": self.step, "complete": False}
                t0 = time.perf_counter()
                loss = self.update()
                self.step += 1
                done_now += 1
                self._losses.append(loss)
                last = self.step == self.total
                due = (protocol.validation_due(self.cfg.maml, self.step, self.per_epoch) if self.rules.select_on_test
                       else bool(t.eval_every and self.step % t.eval_every == 0) or last)
                if due:
                    self._record(meta_dist.broadcast_object(self.validate()))  # torchrun: rank 0's scores
                self.wall += time.perf_counter() - t0
                saved = (t.checkpoint_every and self.step % t.checkpoint_every == 0) or last
                if saved:
                    self.save()
                bar.update(1)
                bar.set_postfix(loss=f"{loss:.3f}", best=f"{self.best['score']:.3f}")
                if callback is not None:
                    callback(self)
                if self._stop.asked():  # a consistent point: the update and its validation are done
                    if not saved:
                        self.save()
                    raise self._interrupted()
        finally:
            bar.close()
        summary = self.finish()
        if self._stop.asked():  # during the last step's writes: the run is complete, but stop as asked
            raise self._interrupted()
        return summary

    def _interrupted(self) -> Interrupted:
        """The error that ends an interrupted run (its checkpoint is saved)."""
        return Interrupted(f"interrupted at step {self.step}; rerun the same command to resume")

    def _record(self, val: dict) -> None:
        row = {"step": self.step, "loss": float(np.mean(self._losses)) if self._losses else math.nan, **val}
        self._losses = []
        self.history.append(row)
        score = val.get("val_score")
        if score is not None and protocol.better(score, self.best["score"], self.cfg.protocol):
            self.best = {"score": float(score), "step": self.step}
            if self.main:  # torchrun: rank 0 writes
                save_checkpoint(self.out / "best.pt", {"model": self.model.state_dict(), "step": self.step,
                                                       "val_score": float(score), **self._frame_norm()})

    def finish(self) -> dict:
        """Write model.pt (the selected weights) and train_summary.json (torchrun: rank 0; all get its summary)."""
        return meta_dist.broadcast_object(self._write_final() if self.main else None)

    def _write_final(self) -> dict:
        """Write model.pt and train_summary.json; returns the summary."""
        use_best = self.cfg.train.select == "best" and (self.out / "best.pt").is_file()
        weights = load_checkpoint(self.out / "best.pt", self.device)["model"] if use_best else self.model.state_dict()
        save_checkpoint(self.out / "model.pt", {"model": weights, "step": self.best["step"] if use_best else self.step,
                                                "data_fingerprint": self.data_fingerprint, "data_root": self.data_root,
                                                **self._frame_norm()})
        summary = {
            "complete": True,
            "steps": self.step,
            "selected": "best" if use_best else "last",
            "selected_step": self.best["step"] if use_best else self.step,
            "best_val_score": self.best["score"] if math.isfinite(self.best["score"]) else None,
            "train_wall_seconds": round(self.wall, 2),
            "processes": meta_dist.world_size(),  # torchrun: ranks that shared each meta-batch
            "fit_songs": len(self.fit_ids),
            "val_songs": len(self.val_ids),
            "task_listeners": len(self.listener_songs),
            "val_listeners": len(self.val_plan),
            "problems": list(self.ds.problems),
        }
        if self.rules.select_on_test:  # the authors' protocol: selected on the test split (leakage)
            summary.update(protocol="authors", selected_on_test=use_best, test_pairs=len(self.test_plan))
        if self.per_epoch:
            summary.update(epochs=self.total // self.per_epoch, updates_per_epoch=self.per_epoch)
        atomic_write_text(self.out / "train_summary.json", json.dumps(summary, indent=1) + "\n")
        return summary


def train(cfg: RunConfig, out: str | Path, *, ds: MusicDataset | None = None, cache: FeatureCache | None = None,
          max_steps_this_call: int | None = None, callback: Callable[[Trainer], None] | None = None,
          progress: bool = True) -> dict:
    """Train (or resume, or return the summary of a finished run on the same settings and data) into folder `out`."""
    out = Path(out)
    if (out / "model.pt").is_file() and (out / "train_summary.json").is_file():
        cfg = resolve_run(cfg)
        check_same_run(out, cfg)
        ds = ds if ds is not None else load_dataset(cfg.dataset, cfg.root)
        model = out / "model.pt"
        check_same_data(model, load_checkpoint(model), run_fingerprint(ds, cfg), str(Path(ds.root).resolve()))
        return json.loads((out / "train_summary.json").read_text())
    trainer = Trainer(cfg, out, ds=ds, cache=cache, progress=progress)
    return trainer.run(max_steps_this_call=max_steps_this_call, callback=callback)
