"""``use_cpu_allocator(mode)``: how the process's C allocator hands out large blocks (a speed setting of
long CPU jobs; ``cpu_allocator`` in ``train.yaml``, docs/design.md §9).

glibc serves every block above its mmap threshold (at most 32 MB) with a fresh ``mmap`` and returns it with
``munmap`` when freed. A training step allocates and frees the same large tensors every step (the plane
fields' dense gradients, 50 MB for the finest position plane; the ensembles' activations; the images'
gradients), so each step faults in and zero-fills every page of them again: ``torch.zeros`` of 50 MB takes
≈ 20 ms fresh against ≈ 1.5 ms in memory that was used before (2-core host, 2026-12-05).

``reuse`` (the default of ``ua3dtalk-train``) sets ``M_MMAP_MAX = 0`` (every block from the heap) and the
largest ``M_TRIM_THRESHOLD`` (freed memory stays with the process), so freed blocks are reused without page
faults — what tcmalloc/jemalloc, the allocators PyTorch's CPU tuning guide recommends, do by default. The
process's peak memory is unchanged; what it has freed is not returned to the system until it exits.
``system`` leaves the allocator as it is. Values are not affected either way (the same tensors, the same
arithmetic). Elsewhere than glibc (macOS, musl, Windows) both are a no-op.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import functools
import sys
from typing import Literal

CpuAllocator = Literal["reuse", "system"]
MODES = ("reuse", "system")

#: mallopt(3) parameters (glibc's <malloc.h>)
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4


@functools.lru_cache(maxsize=1)
def _glibc():
    """The glibc of this process (None elsewhere)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.gnu_get_libc_version.restype = ctypes.c_char_p
        libc.gnu_get_libc_version()
        return libc
    except (OSError, AttributeError):  # musl has no gnu_get_libc_version
        return None


def use_cpu_allocator(mode: str) -> bool:
    """Apply ``mode`` (``reuse`` | ``system``) to this process; True if the allocator was changed.

    ``system`` changes nothing (an allocator already set to ``reuse`` stays so: glibc cannot give back the
    blocks it has kept). Raises ``ValueError`` for another mode."""
    if mode not in MODES:
        raise ValueError(f"cpu_allocator must be one of {', '.join(MODES)}, got {mode!r}")
    libc = _glibc()
    if mode == "system" or libc is None:
        return False
    ok = libc.mallopt(M_MMAP_MAX, 0) == 1
    ok = (libc.mallopt(M_TRIM_THRESHOLD, 2**31 - 1) == 1) and ok
    return ok
