"""Atomic file writes and checkpoints: a reader sees the old file or the whole new one, never half of it."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import BinaryIO, Callable

import torch

from dsaml_utils.errors import UserError


def _file_mode() -> int:
    """The mode open() gives a new file under the process umask (read once: setting it is process-wide)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


FILE_MODE = _file_mode()
"""Mode of every file written here (mkstemp alone would make it 0600)."""


def atomic_write(path: Path, write: Callable[[BinaryIO], None]) -> None:
    """Call `write(file)` on a temporary file next to `path`, then move it into place (mode as open() gives)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        os.chmod(tmp, FILE_MODE)
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write a file so that readers see either the old content or the whole new one."""
    atomic_write(path, lambda f: f.write(data))


def atomic_write_text(path: Path, text: str) -> None:
    """atomic_write_bytes for text (UTF-8)."""
    atomic_write_bytes(path, text.encode())


def save_checkpoint(path: Path, state: dict) -> None:
    """torch.save `state` to path atomically."""
    atomic_write(path, lambda f: torch.save(state, f))


def load_checkpoint(path: Path, device: str | torch.device = "cpu") -> dict:
    """torch.load(weights_only=True) with a clear error for a missing or damaged file."""
    if not path.is_file():
        raise UserError(f"{path}: checkpoint not found")
    try:
        return torch.load(path, map_location=device, weights_only=True)
    except Exception as exc:  # a truncated or foreign file: say which one
        raise UserError(f"{path}: cannot read checkpoint ({exc.__class__.__name__}: {exc})") from None
