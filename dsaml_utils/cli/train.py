"""`dsaml train` and `dsaml experiment`: options that describe a run, and the commands."""

from __future__ import annotations

import argparse
import json

from dsaml_utils.data.registry import DATASETS
from dsaml_utils.errors import UserError
from dsaml_utils.evaluation.report import format_metrics
from dsaml_utils.evaluation.run import evaluate_run
from dsaml_utils.experiments.plan import train_plan
from dsaml_utils.experiments.runner import run_experiment
from dsaml_utils.experiments.specs import EXPERIMENTS
from dsaml_utils.experiments.tables import format_table
from dsaml_utils.meta import distributed as meta_dist
from dsaml_utils.plots.base import markdown_table
from dsaml_utils.training.config import PRESETS, RunConfig, apply_overrides, preset
from dsaml_utils.training.protocol import PROTOCOLS
from dsaml_utils.training.trainer import train

OPTION_FIELDS = {"root": "root", "model": "model", "encoder": "encoder", "encoder_checkpoint": "encoder_checkpoint",
                 "init": "init", "cache": "cache_dir", "dataset": "dataset", "seed": "train.seed",
                 "steps": "train.steps", "lr": "train.lr", "batch_size": "train.batch_size", "device": "train.device"}
"""Run options that set one config field each: option name -> field."""


def config_from_args(args: argparse.Namespace) -> RunConfig:
    """The RunConfig that `dsaml train` options describe (preset and protocol, then options, then --set
    overrides), checked."""
    protocol = getattr(args, "protocol", None)
    if protocol and any(item.partition("=")[0] == "protocol" for item in args.set or []):
        raise UserError("protocol is given twice (by --protocol and by --set protocol=...); give it once")
    cfg = preset(args.preset, **({"protocol": protocol} if protocol else {}))
    if args.dataset and not args.root and args.dataset != "synthetic":
        raise UserError(f"--dataset {args.dataset} needs --root (the dataset folder)")
    given = {field: getattr(args, opt) for opt, field in OPTION_FIELDS.items() if getattr(args, opt, None) is not None}
    for item in args.set or []:
        field = item.partition("=")[0]
        if field in given:
            raise UserError(f"{field} is given twice (by its own option and by --set {item}); give it once")
    cfg.mode, cfg.strategy = args.mode, args.strategy
    for opt, field in OPTION_FIELDS.items():  # one at a time, so that an error names the option
        if field in given:
            try:
                apply_overrides(cfg, [f"{field}={json.dumps(given[field])}"])
            except UserError as exc:
                raise UserError(f"--{opt.replace('_', '-')}: {exc}") from None
    return apply_overrides(cfg, args.set or [])


def _cli_train(args: argparse.Namespace) -> int:
    cfg = config_from_args(args)
    # under torchrun (WORLD_SIZE > 1) every process joins the group and meta-trains its shard of each meta-batch
    joined = meta_dist.init_from_env(cfg.train.device)
    try:
        summary = train(cfg, args.out, progress=not args.quiet)
    finally:
        if joined:
            meta_dist.destroy()
    if meta_dist.env_ranks()[0] != 0:
        return 0  # rank 0 reports (and evaluates, in one process)
    print(f"run {args.out}: {summary.get('steps')} steps, selected {summary.get('selected')} "
          f"(step {summary.get('selected_step')}, validation score {summary.get('best_val_score')}), "
          f"{summary.get('train_wall_seconds')} s")
    if args.evaluate:
        print(format_metrics(evaluate_run(args.out, progress=not args.quiet)))
    return 0


def add_run_options(p: argparse.ArgumentParser) -> None:
    """Options shared by `dsaml train` and `dsaml experiment`: preset, data, model and overrides."""
    p.add_argument("--preset", choices=PRESETS, default="quick",
                   help="settings preset: smoke (seconds, no results), quick (CPU minutes) or paper (default quick)")
    p.add_argument("--protocol", choices=PROTOCOLS,
                   help="paper (default: the paper's method) or authors (the authors' code's protocol, which "
                        "selects the model on the test split: leakage, marked in every output; training.protocol)")
    p.add_argument("--dataset", choices=DATASETS, help="dataset (default: the preset's)")
    p.add_argument("--root", help="dataset folder (default: the preset's)")
    p.add_argument("--model", help="model name (models.registry.MODELS; default dsaml)")
    p.add_argument("--encoder", help="global encoder: auto, imagebind, musicnn, vibenet or none")
    p.add_argument("--encoder-checkpoint", help="ImageBind .pth, musicnn folder or vibenet .onnx")
    p.add_argument("--steps", type=int, help="updates / meta-updates")
    p.add_argument("--lr", type=float, help="Adam learning rate (MAML's outer learning rate)")
    p.add_argument("--batch-size", type=int, help="windows per update (mode dmer)")
    p.add_argument("--device", help="auto, cpu or cuda")
    p.add_argument("--cache", help="feature cache folder (default data/cache)")
    p.add_argument("--set", action="append", metavar="FIELD=VALUE",
                   help="override any config field, e.g. meta.inner_steps=8 or model_config.n_layers=3 "
                        "(VALUE is JSON; repeatable)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def _register_train(subparsers) -> None:
    """Add `dsaml train`."""
    p = subparsers.add_parser("train", help="train a DMER model or meta-train a PDMER model (resumable)")
    p.add_argument("--mode", choices=("dmer", "pdmer"), required=True,
                   help="dmer: supervised training; pdmer: MAML meta-training")
    p.add_argument("--strategy", choices=("personalized", "traditional"),
                   help="labels/tasks per listener or mean labels (default: personalized for pdmer, "
                        "traditional for dmer)")
    p.add_argument("--out", required=True, help="run folder (rerun the same command to resume)")
    p.add_argument("--seed", type=int, help="random seed (default 0)")
    p.add_argument("--init", help="start from the weights of this trained run")
    p.add_argument("--evaluate", action="store_true", help="evaluate the run when training ends")
    add_run_options(p)
    p.set_defaults(func=_cli_train)


def _cli_experiment(args: argparse.Namespace) -> int:
    if meta_dist.env_ranks()[1] > 1:  # every process would train (and write) every run
        raise UserError("dsaml experiment runs in one process; use torchrun with `dsaml train --mode pdmer`")
    args.mode, args.strategy, args.init, args.seed = "dmer", None, None, None
    base = config_from_args(args)
    for seed in args.seeds:  # each run's config is checked again when it is made; this is before any of them
        try:
            apply_overrides(base.copy(), [f"train.seed={seed}"])
        except UserError as exc:
            raise UserError(f"--seeds: {exc}") from None
    for name in args.names:
        if name not in EXPERIMENTS:
            raise UserError(f"unknown experiment {name!r}; choose from {', '.join(EXPERIMENTS)}")
    if args.jobs < 1:
        raise UserError(f"--jobs must be at least 1, got {args.jobs}")
    if args.jobs > 1:  # train every run first, several at a time; the tables then reuse them
        train_plan({name: list(args.seeds) for name in args.names}, base, args.out, workers=args.jobs,
                   progress=not args.quiet)
    for name in args.names:
        df, _, (md, csv) = run_experiment(name, base, args.seeds, args.out, args.tables, progress=not args.quiet)
        print(f"\n{EXPERIMENTS[name]['title']}\n{markdown_table(format_table(df))}\n-> {md}, {csv}")
    return 0


def _register_experiment(subparsers) -> None:
    """Add `dsaml experiment`."""
    p = subparsers.add_parser("experiment", help="train/reuse runs over seeds and build the paper's tables")
    p.add_argument("names", nargs="+", metavar="NAME", help=f"experiments: {', '.join(EXPERIMENTS)}")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="training seeds (default 0 1 2)")
    p.add_argument("--out", default="runs/experiments", help="runs folder (default runs/experiments)")
    p.add_argument("--tables", help="where tables go (default <out>/tables)")
    p.add_argument("--jobs", type=int, default=1, help="runs trained at once, in worker processes with one "
                   "torch thread each (default 1: one after another in this process)")
    add_run_options(p)
    p.set_defaults(func=_cli_experiment)


def register(subparsers) -> None:
    """Add `dsaml train` and `dsaml experiment`."""
    _register_train(subparsers)
    _register_experiment(subparsers)
