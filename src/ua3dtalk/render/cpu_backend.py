"""``cpu`` backend: the project's C++ compositing kernel (placeholder until the kernel lands)."""
from __future__ import annotations


def cpu_backend_available() -> bool:
    return False


def cpu_backend_status(build: bool = False) -> str:
    return "not built"


def composite_cpu(*args, **kwargs):
    raise NotImplementedError
