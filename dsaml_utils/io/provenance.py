"""Where a result came from: file digests and the code version."""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

import dsaml_utils
from dsaml_utils.errors import DataError


def code_version() -> str:
    """The git commit of the package's repository (+ '-dirty' with uncommitted changes), else its version."""
    repo = Path(dsaml_utils.__file__).resolve().parent.parent
    try:
        commit = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10, check=True).stdout.strip()
        return commit + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return f"dsaml_utils {dsaml_utils.__version__}"


def file_digest(path: Path) -> str:
    """sha256 of a file's bytes."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def audio_digest(path: str | Path) -> str:
    """Hex sha256 of the file's bytes (the content half of a feature-cache key)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: audio file not found")
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
