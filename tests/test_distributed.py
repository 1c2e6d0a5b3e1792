"""Meta-training over processes (dsaml_utils.meta.distributed): two CPU ranks (gloo) give one process's result.

One spawn of two ranks runs every case (process start-up costs more than the tiny model's steps); the parent
runs the same cases in one process, without a process group, and compares: the meta-gradient of the first
step, the meta-losses, and the weights and BatchNorm buffers after three steps, in float64 so that the
tolerance can be tight. The end-to-end test runs `dsaml train` under torchrun on the tiny synthetic dataset
of test_train.py (float32, Adam).

The spawned ranks import this module, so its top level imports only what they need: test_train and the CLI
(seconds to import) are imported inside the end-to-end test.
"""

import contextlib
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from dsaml_utils.errors import UserError
from dsaml_utils.experiments.bench import TINY_MODEL, BenchCase, make_tasks
from dsaml_utils.meta import batched as meta_batched
from dsaml_utils.meta import distributed as meta_dist
from dsaml_utils.meta.maml import MetaConfig
from dsaml_utils.models.dsaml import DSAML, DSAMLConfig
from dsaml_utils.training.config import preset
from dsaml_utils.training.trainer import Trainer

WORLD = 2
STEPS = 3
CASES = {
    "batched, 3 tasks": dict(batched=True, tasks=3),
    "loop, 3 tasks": dict(batched=False, tasks=3),
    "batched, 4 tasks, second order": dict(batched=True, tasks=4, first_order=False),
    "loop, 1 task (rank 1 has none)": dict(batched=False, tasks=1),
    "batched, 3 tasks, dropout": dict(batched=True, tasks=3, dropout=0.1),
}
"""Meta-batches over WORLD ranks; the first step's gradient and the weights after STEPS steps are compared."""

EXACT = [name for name, spec in CASES.items() if not spec.get("dropout")]
"""Cases that must equal one process (dropout masks differ across ranks by design: see meta.distributed)."""


class SGD:
    """SGD with momentum, with the optimizer methods meta_step calls."""

    # Not torch.optim: its first use imports torch._dynamo (seconds in every spawned rank). Not Adam: it
    # blows float noise on analytically zero gradients (the biases before a BatchNorm) up to full-size
    # steps of either sign, so that two runs would differ by noise even in one process.

    def __init__(self, params, lr: float = 0.3, momentum: float = 0.9):
        self.params, self.lr, self.momentum = list(params), lr, momentum
        self.velocity = [torch.zeros_like(p) for p in self.params]

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self.params:
            p.grad = None

    @torch.no_grad()
    def step(self) -> None:
        for p, v in zip(self.params, self.velocity):
            if p.grad is not None:
                p.sub_(v.mul_(self.momentum).add_(p.grad), alpha=self.lr)


@contextlib.contextmanager
def _one_thread():
    """Tiny models: one intra-op thread is faster, and immune to other processes on the cores."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def one_thread():
    """_one_thread for every test (module-scoped fixtures are set up before it: they use _one_thread)."""
    with _one_thread():
        yield


def _run_case(spec: dict, step_fn) -> dict:
    """STEPS meta-steps (float64) of a tiny DSAML from seed 0 with `step_fn`; what the tests compare."""
    torch.manual_seed(0)
    model = DSAML(DSAMLConfig.quick(**TINY_MODEL, dropout=spec.get("dropout", 0.0))).double()
    model.train()
    start = {k: v.clone() for k, v in model.state_dict().items()}
    optimizer = SGD(model.parameters())
    cfg = MetaConfig(inner_steps=2, inner_lr=0.05, first_order=spec.get("first_order", True))
    case = BenchCase("smoke", tasks=spec["tasks"], inner_steps=cfg.inner_steps, query_songs=2, steps=8)
    out = {"losses": [], "start": start}
    for step in range(STEPS):
        torch.manual_seed(1000 + step)  # the trainer seeds each update like this
        tasks = [tuple({k: v.double() if v.is_floating_point() else v for k, v in b.items()} for b in task)
                 for task in make_tasks(model, case, seed=100 * step)]
        out["losses"].append(step_fn(model, optimizer, tasks, cfg, batched=spec["batched"]))
        if step == 0:
            out["grads"] = {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}
            out["shard"] = len(meta_dist.shard(tasks, meta_dist.rank(), meta_dist.world_size()))
    out["state"] = {k: v.clone() for k, v in model.state_dict().items()}
    return out


def _worker(rank: int, world: int, store: str, out: str) -> None:
    """One rank: join the gloo group, run every case with the distributed meta-step, save the results."""
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    try:
        res = {name: _run_case(spec, meta_dist.meta_step) for name, spec in CASES.items()}
        res["world"] = meta_dist.world_size()
        try:  # mode dmer is refused before it reads any data
            Trainer(preset("smoke", mode="dmer", root=str(Path(out) / "nowhere")), Path(out) / f"dmer{rank}")
            res["dmer"] = "not refused"
        except UserError as exc:
            res["dmer"] = str(exc)
        res["dmer_folder"] = (Path(out) / f"dmer{rank}").exists()
        torch.save(res, Path(out) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    """The results of every rank (spawned processes, gloo over a file store: no port to choose)."""
    tmp = tmp_path_factory.mktemp("distributed")
    ctx = mp.spawn(_worker, args=(WORLD, str(tmp / "store"), str(tmp)), nprocs=WORLD, join=False)
    deadline = time.monotonic() + 120
    while not ctx.join(timeout=1):
        if time.monotonic() > deadline:
            for p in ctx.processes:
                p.kill()
            pytest.fail("the distributed workers did not finish in 120 s (a deadlock?)")
    return [torch.load(tmp / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]


@pytest.fixture(scope="module")
def single():
    """The same cases in one process, with the existing one-process meta-step."""
    assert not dist.is_initialized()
    with _one_thread():
        return {name: _run_case(spec, meta_batched.meta_step) for name, spec in CASES.items()}


def _assert_all_close(got: dict, want: dict, **tol) -> None:
    assert got.keys() == want.keys()
    for k in want:
        torch.testing.assert_close(got[k], want[k], msg=lambda m, k=k: f"{k}: {m}", **tol)


@pytest.mark.parametrize("name", EXACT)
def test_first_meta_gradient_equals_one_process(ranks, single, name):
    want = single[name]
    assert ranks[0]["world"] == WORLD
    tasks = CASES[name]["tasks"]
    assert [r[name]["shard"] for r in ranks] == [len(meta_dist.shard(range(tasks), r, WORLD)) for r in range(WORLD)]
    assert any(g.abs().max() > 0 for g in want["grads"].values())
    for r in ranks:
        _assert_all_close(r[name]["grads"], want["grads"], rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("name", EXACT)
def test_weights_and_batchnorm_buffers_after_three_steps_equal_one_process(ranks, single, name):
    want = single[name]
    moved = [k for k in want["state"] if not torch.equal(want["state"][k], want["start"][k])]
    assert any("running_mean" in k for k in moved) and any("weight" in k for k in moved)
    for r in ranks:
        _assert_all_close(r[name]["state"], want["state"], rtol=1e-9, atol=1e-12)
        assert r[name]["losses"] == pytest.approx(want["losses"], rel=1e-12)


@pytest.mark.parametrize("name", list(CASES))
def test_every_rank_ends_with_identical_weights(ranks, name):
    for k, v in ranks[0][name]["state"].items():
        assert all(torch.equal(r[name]["state"][k], v) for r in ranks[1:]), k
    assert all(r[name]["losses"] == ranks[0][name]["losses"] for r in ranks[1:])


def test_mode_dmer_is_refused_with_several_processes(ranks):
    assert all("mode dmer runs in one process (2 started)" in r["dmer"] and not r["dmer_folder"] for r in ranks)


def test_shards_cover_every_task_exactly_once():
    for world in range(1, 6):
        for n in range(12):
            parts = [meta_dist.shard(list(range(n)), r, world) for r in range(world)]
            assert [t for p in parts for t in p] == list(range(n)), (n, world)
            sizes = [len(p) for p in parts]
            assert max(sizes) - min(sizes) <= 1 and sizes == sorted(sizes, reverse=True)
    with pytest.raises(ValueError, match="rank 2"):
        meta_dist.shard([1, 2, 3], 2, 2)


@pytest.mark.parametrize("batched", [True, False])
def test_without_a_process_group_it_is_the_one_process_meta_step(batched):
    spec = dict(batched=batched, tasks=2)
    a = _run_case(spec, meta_dist.meta_step)
    b = _run_case(spec, meta_batched.meta_step)
    assert a["losses"] == b["losses"] and a["shard"] == 2
    assert all(torch.equal(a["state"][k], v) for k, v in b["state"].items())


ZERO_GRADIENT = ("adapter.block1.0.bias", "adapter.block2.0.bias", "adapter.block1.1.running_mean",
                 "adapter.block2.1.running_mean")
"""The convolution biases right before a BatchNorm, whose gradient is zero in exact arithmetic: Adam turns the
float noise in it into steps of up to lr either way (in one process as in two), and the running means after
them follow. Compared only up to the steps Adam can take."""


def _train_args(root, cache, out) -> list[str]:
    from test_train import TINY_RUN  # here, not at the top: see the module docstring

    model = '{"d_model": 16, "n_heads": 2, "d_ff": 32, "n_layers": 1, "max_rel_distance": 12, "dropout": 0.0}'
    sets = [s for s in TINY_RUN if not s.startswith("model_config")] + [f"model_config={model}",
                                                                         "meta.tasks_per_step=3"]
    return ["train", "--mode", "pdmer", "--dataset", "synthetic", "--root", str(root), "--cache", str(cache),
            "--out", str(out), "--device", "cpu", "--quiet", *[a for s in sets for a in ("--set", s)]]


@pytest.fixture(scope="module")
def synth_root(tmp_path_factory):
    """test_train's tiny synthetic dataset."""
    from test_train import TINY_SYNTH  # here, not at the top: see the module docstring

    from dsaml_utils.data.synthetic.config import SynthConfig
    from dsaml_utils.data.synthetic.writer import generate

    root = tmp_path_factory.mktemp("tiny_synth")
    generate(root, SynthConfig(**TINY_SYNTH), overwrite=True)
    return root


def test_dsaml_train_under_torchrun_equals_one_process(synth_root, tmp_path):
    from dsaml_utils.cli import main as cli_main  # here, not at the top: see the module docstring

    root, cache = synth_root, tmp_path / "cache"
    assert cli_main(_train_args(root, cache, tmp_path / "one")) == 0  # also fills the feature cache
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(WORLD),
           "-m", "dsaml_utils", *_train_args(root, cache, tmp_path / "two")]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("run ") == 1  # rank 0 reports
    assert json.loads((tmp_path / "two" / "train_summary.json").read_text())["processes"] == WORLD
    one, two = (torch.load(tmp_path / d / "model.pt", weights_only=True) for d in ("one", "two"))
    assert one["step"] == two["step"] and one["model"].keys() == two["model"].keys()
    t = json.loads((tmp_path / "one" / "config.json").read_text())["train"]
    bound = 2 * t["lr"] * t["steps"]
    for k, v in one["model"].items():  # float32 and Adam: rounding differs, so looser than above
        if k in ZERO_GRADIENT:
            assert (two["model"][k] - v).abs().max() <= bound, k
        else:
            torch.testing.assert_close(two["model"][k], v, rtol=1e-3, atol=1e-4, msg=lambda m, k=k: f"{k}: {m}")
    h1, h2 = (json.loads((tmp_path / d / "history.json").read_text()) for d in ("one", "two"))
    assert [r["loss"] for r in h2] == pytest.approx([r["loss"] for r in h1], rel=1e-5)
    assert [r["val_score"] for r in h2] == pytest.approx([r["val_score"] for r in h1], abs=1e-5)
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == sorted(p.name for p in (tmp_path / "one").iterdir())
