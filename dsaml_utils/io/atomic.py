"""Atomic file writes and checkpoints: a reader sees the old file or the whole new one, never half of it.

Checkpoints load as tensors and plain containers only (torch.load weights_only): a file that holds code or other
Python objects is refused with a message of ours, and nothing in it runs.
"""

from __future__ import annotations

import os
import pickle
import re
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


def load_checkpoint(path: Path, device: str | torch.device = "cpu", mmap: bool = False) -> dict:
    """torch.load(weights_only=True) with a clear error for a missing, damaged or refused file.

    mmap: memory-map the file (only the tensors read are loaded); a legacy non-zip file is then read whole.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: checkpoint not found")
    try:
        try:
            return torch.load(path, map_location=device, weights_only=True, mmap=mmap)
        except RuntimeError as exc:  # a legacy (non-zip) file cannot be memory-mapped
            if not mmap or ("mmap" not in str(exc) and "zip" not in str(exc)):
                raise
            return torch.load(path, map_location=device, weights_only=True)
    except pickle.UnpicklingError as exc:
        if "weights only load failed" not in str(exc).lower():
            raise UserError(f"{path}: cannot read checkpoint (UnpicklingError: {_first_line(exc)})") from None
        found = re.search(r"GLOBAL ([\w.]+)", str(exc))  # torch names the first global it refuses
        first = f" (the first one found: {found.group(1)})" if found else ""
        raise UserError(f"{path}: refused: the file holds code or non-tensor Python objects{first}; "
                        "dsaml never loads such files") from None
    except Exception as exc:  # a truncated or foreign file: say which one
        raise UserError(f"{path}: cannot read checkpoint ({exc.__class__.__name__}: {_first_line(exc)})") from None


def _first_line(exc: BaseException) -> str:
    """The first line of an exception's message (torch's may run over many)."""
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else ""
