"""Process settings that make CPU training fast: glibc malloc that keeps freed memory for reuse.

A training update allocates and frees the same large activation tensors every step. By default glibc
serves every block over 32 MB with a fresh mmap and unmaps it when freed, so each update page-faults its
activations in again (about 2.5 us per 4 KB page, measured on the project's 2-core machine): a 40 MB
tensor then costs more to fault in than to compute (a clone of 10.5 M floats: 40 ms untuned, 7 ms tuned).
`keep_freed_memory` asks malloc to keep freed memory instead; the trainer, the evaluation, the workbook
and the benchmarks call it once per process. The price is that the process's resident memory stays at
its peak (docs/performance.md gives the measured peak of the quick workbook).
"""

from __future__ import annotations

import ctypes
import os

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_applied: bool | None = None


def keep_freed_memory() -> bool:
    """Make glibc malloc keep freed memory (no mmap below 1 GiB, no trimming); True if in effect.

    Process-wide and not undone; applied once. A no-op (False) where the C library is not glibc or
    where DSAML_MALLOC=default is set in the environment.
    """
    global _applied
    if _applied is None:
        _applied = os.environ.get("DSAML_MALLOC", "") != "default" and _mallopt()
    return _applied


def _mallopt() -> bool:
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    # -1 as the trim threshold is SIZE_MAX for glibc: never give the heap's top back to the system
    return bool(libc.mallopt(_M_MMAP_THRESHOLD, 1 << 30)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, -1))
