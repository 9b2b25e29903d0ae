"""``cpu_allocator``: ``reuse`` makes a freed large block come back without page faults; ``system`` does not
touch the allocator. Each case runs in its own process (the setting is process-wide)."""
from __future__ import annotations

import subprocess
import sys

import pytest

from ua3dtalk.utils.malloc import _glibc, use_cpu_allocator

PROBE = r"""
import resource, sys, torch
from ua3dtalk.utils.malloc import use_cpu_allocator
changed = use_cpu_allocator(sys.argv[1])
for _ in range(10):  # 64 MB blocks allocated and freed before counting (glibc's heap settles after a few)
    torch.zeros(16 << 20)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(5):
    torch.zeros(16 << 20)  # allocated, zero-filled, freed
print(changed, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _faults(mode: str) -> tuple[str, int]:
    out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True).stdout
    changed, faults = out.split()
    return changed, int(faults)


@pytest.mark.skipif(_glibc() is None, reason="glibc only")
def test_reuse_serves_freed_blocks_without_page_faults_and_system_leaves_the_allocator():
    pages = 5 * (64 << 20) // 4096  # every page of the five blocks
    changed, faults = _faults("system")
    assert changed == "False" and faults > pages // 2, faults  # fresh mmap each time: the pages fault again
    changed, faults = _faults("reuse")
    assert changed == "True" and faults < pages // 20, faults


def test_unknown_mode_is_refused():
    with pytest.raises(ValueError, match="cpu_allocator"):
        use_cpu_allocator("tcmalloc")
