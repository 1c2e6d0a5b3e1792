"""`dsaml model-summary`, `dsaml embed` and `dsaml export-imagebind-audio`."""

from __future__ import annotations

import argparse
import dataclasses
import os
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from dsaml_utils.encoders import imagebind
from dsaml_utils.encoders.registry import (
    ENCODERS,
    default_encoder_name,
    embed_song,
    get_encoder,
)
from dsaml_utils.errors import UserError
from dsaml_utils.features.cache import FeatureCache
from dsaml_utils.io.atomic import atomic_write
from dsaml_utils.models.dsaml import DSAML
from dsaml_utils.models.registry import MODELS, build_model, summarize


def _summary_command(args: argparse.Namespace) -> int:
    model = build_model(args.model, args.preset)
    fields = ", ".join(f"{f.name}={getattr(model.cfg, f.name)!r}" for f in dataclasses.fields(model.cfg))
    print(f"model {args.model} ({type(model).__name__}), preset {args.preset}")
    print(f"config: {fields}")
    if isinstance(model, DSAML):
        alpha, beta = model.cfg.targets()
        c = model.cfg
        print(f"D={c.d_model} layers={c.n_layers} heads={c.n_heads} d_ff={c.d_ff} n_l={c.n_local} "
              f"n_g={c.n_global} alpha={alpha} beta={beta} lstm={c.lstm_size()}x2 inputs={model.inputs}")
    print("\n".join(summarize(model, args.steps)))
    return 0


def _register_summary(subparsers) -> None:
    """Add ``dsaml model-summary``."""
    p = subparsers.add_parser("model-summary", help="parameter counts and output shapes of a model")
    p.add_argument("--preset", choices=("paper", "quick"), default="paper", help="model size preset")
    p.add_argument("--model", choices=sorted(MODELS), default="dsaml", help="which model")
    p.add_argument("--steps", type=int, default=60, help="0.5 s steps in the example input (60 = 30 s)")
    p.set_defaults(func=_summary_command)


EXCERPT = (15.0, 30.0)
"""`dsaml embed`'s default excerpt (start, duration) in seconds: a DEAM clip's labelled span; not for imagebind."""


def embed_excerpt(encoder: str, start: float | None, duration: float | None,
                  whole: bool = False) -> tuple[float | None, float | None]:
    """(start, duration) that `dsaml embed` embeds; None = file start / to the end.

    imagebind embeds the whole file unless --start/--duration say otherwise (Meta's load_and_transform_audio_data
    has no excerpt); the other encoders default to EXCERPT.
    """
    if whole:
        return None, None
    if encoder == "imagebind":
        return start, duration
    return (EXCERPT[0] if start is None else start), (EXCERPT[1] if duration is None else duration)


def _register_embed(sub) -> None:
    """Add `dsaml embed` (and `dsaml export-imagebind-audio`)."""
    p = sub.add_parser("embed", help="one global embedding per audio file, read as training reads it",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("audio", nargs="+", help="audio files")
    p.add_argument("--out", required=True, help="output .npy, shape [N, dim] (a folder: FOLDER/embeddings.npy)")
    p.add_argument("--encoder", choices=ENCODERS, default=None,
                   help="default: imagebind when a checkpoint is configured, else musicnn")
    p.add_argument("--checkpoint", default=None,
                   help=f"imagebind .pth (or ${imagebind.CHECKPOINT_ENV}) / musicnn folder / vibenet .onnx")
    p.add_argument("--start", type=float, default=None,
                   help=f"excerpt start, s; unset: {EXCERPT[0]:g} (DEAM labels start there), imagebind: the file start")
    p.add_argument("--duration", type=float, default=None,
                   help=f"excerpt length, s; unset: {EXCERPT[1]:g}, imagebind: to the end (Meta embeds whole files)")
    p.add_argument("--whole", action="store_true", help="embed whole files (ignores --start/--duration)")
    p.add_argument("--cache", default="data/cache", help="feature cache directory")
    p.add_argument("--no-cache", action="store_true", help="compute without reading or writing the cache")
    p.add_argument("--device", default="cpu")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    p.set_defaults(func=_cli_embed)


def _refuse_existing(path: Path, overwrite: bool) -> None:
    """Refuse to replace an existing output file unless asked to (before any work is done)."""
    if path.exists() and not overwrite:
        raise UserError(f"{path}: exists already; pass --overwrite to replace it, or choose another --out")


def _cli_embed(args) -> int:
    path = embed_out_path(args.out)
    _refuse_existing(path, args.overwrite)
    name = args.encoder or default_encoder_name(args.checkpoint)
    encoder = get_encoder(name, args.checkpoint, args.device)
    cache = None if args.no_cache else FeatureCache(args.cache)
    start, duration = embed_excerpt(name, args.start, args.duration, args.whole)
    vectors = [embed_song(encoder, p, cache, start, duration)
               for p in tqdm(args.audio, desc=f"embed ({name})", unit="file")]
    out = np.stack(vectors).astype(np.float32) if vectors else np.zeros((0, encoder.dim), np.float32)
    verb = "replaced" if path.exists() else "wrote"
    atomic_write(path, lambda f: np.save(f, out))
    print(f"{verb} {out.shape[0]} x {out.shape[1]} {name} embeddings to {path}")
    return 0


def embed_out_path(out: str) -> Path:
    """The file `dsaml embed --out OUT` writes: OUT/embeddings.npy for a folder, else OUT with .npy ensured."""
    path = Path(out)
    if path.is_dir() or out.endswith(("/", os.sep)):
        return path / "embeddings.npy"
    return path if path.suffix == ".npy" else path.with_name(path.name + ".npy")  # np.save would add it unasked


def _register_export(sub) -> None:
    """Add `dsaml export-imagebind-audio`."""
    p = sub.add_parser("export-imagebind-audio", help="keep only the audio weights of imagebind_huge.pth")
    p.add_argument("--checkpoint", required=True, help="imagebind_huge.pth (or an audio-only file)")
    p.add_argument("--out", required=True, help="where to write the audio-only checkpoint")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    p.set_defaults(func=_cli_export)


def _cli_export(args) -> int:
    _refuse_existing(Path(args.out), args.overwrite)
    n = imagebind.export_audio_checkpoint(args.checkpoint, args.out)
    print(f"wrote {n} audio tensors to {args.out}")
    return 0


def register(subparsers) -> None:
    """Add `dsaml model-summary`, `dsaml embed` and `dsaml export-imagebind-audio`."""
    _register_summary(subparsers)
    _register_embed(subparsers)
    _register_export(subparsers)
