"""An exclusive lock on a folder (fcntl.flock on <folder>/.lock, which holds the owner's pid).

The operating system releases the lock when its process ends, however it ends, so a crashed or killed owner
never leaves a folder locked. The lock file itself stays: removing it would let two processes each lock a
different file of that name.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from dsaml_utils.errors import UserError

LOCK_NAME = ".lock"


class FolderBusy(UserError):
    """Another process holds the folder's lock."""


class FolderLock:
    """`acquire()` takes <folder>/.lock or raises FolderBusy naming the holder's pid; `release()` lets it go."""

    def __init__(self, folder: str | Path):
        self.path = Path(folder) / LOCK_NAME
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        """Whether this object holds the lock."""
        return self._fd is not None

    def acquire(self) -> None:
        """Take the lock (nothing to do when this object holds it already); never waits."""
        if self._fd is not None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)  # not inherited by started programs
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:  # BlockingIOError: held by another open file (process)
            os.close(fd)
            raise FolderBusy(f"{self.path.parent}: another process (pid {self.holder()}) is training into this "
                             f"run folder (it holds {self.path}); wait for it to end, or use another folder") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd

    def release(self) -> None:
        """Let the lock go (nothing to do when not held)."""
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)  # closing the last descriptor of the open file releases the flock

    def holder(self) -> str:
        """The pid written in the lock file ("unknown" when it cannot be read)."""
        try:
            return self.path.read_text().strip() or "unknown"
        except OSError:
            return "unknown"

    def __del__(self):
        self.release()
