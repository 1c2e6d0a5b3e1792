"""Datasets by name (`load_dataset`) and a fingerprint of what a dataset root holds."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from dsaml_utils.data.deam import load_deam
from dsaml_utils.data.frames import feature_files
from dsaml_utils.data.pmemo import load_pmemo
from dsaml_utils.data.types import MusicDataset
from dsaml_utils.errors import UserError
from dsaml_utils.io.provenance import audio_digest

DATASETS = ("deam", "pmemo", "synthetic")


def load_dataset(name: str, root: str | Path, **kwargs) -> MusicDataset:
    """Load "deam", "pmemo" or "synthetic" (a DEAM-layout tree written by `dsaml synth`) from root."""
    if name == "deam":
        return load_deam(root, **kwargs)
    if name == "synthetic":
        return load_deam(root, name="synthetic", **kwargs)
    if name == "pmemo":
        return load_pmemo(root, **kwargs)
    raise UserError(f"unknown dataset {name!r}; expected one of {', '.join(DATASETS)}")


def data_fingerprint(ds: MusicDataset, frames: bool = False) -> str:
    """sha256 of the annotation files under the dataset root (CSV files below a folder named *annotation*;
    every CSV when there is none), the song ids of the train and test splits, and each song's audio bytes;
    with `frames`, also of the frame feature files (`data.frames.feature_files`: what a model on frames reads)."""
    root = Path(ds.root)
    files = sorted(p for p in root.rglob("*.csv") if any("annotation" in part.lower()
                                                           for part in p.relative_to(root).parts[:-1]))
    if not files:
        files = sorted(root.rglob("*.csv"))
    h = hashlib.sha256()
    for p in files:
        h.update(str(p.relative_to(root)).encode() + b"\0")
        h.update(hashlib.sha256(p.read_bytes()).digest())
    h.update(json.dumps({"train": sorted(ds.train_ids), "test": sorted(ds.test_ids)}).encode())
    for sid in sorted(ds.songs):
        path = ds.songs[sid].audio_path
        if path is not None and Path(path).is_file():
            h.update(f"{sid}\0".encode() + bytes.fromhex(audio_digest(path)))
    if frames:
        for p in feature_files(ds):
            h.update(b"frames\0" + str(p.relative_to(root)).encode() + b"\0")
            h.update(hashlib.sha256(p.read_bytes()).digest())
    return h.hexdigest()
