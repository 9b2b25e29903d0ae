"""``torch_threads(n)``: run a block with ``n`` torch intra-op threads, restoring the previous count.

Tiny tensors (64² test renders, small evaluator batches) run much faster on one thread than with
contended intra-op threads on a loaded machine; long jobs pick their own count. ``n=None`` leaves the
count unchanged (so callers can pass a user option straight through)."""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, Optional


@contextmanager
def torch_threads(n: Optional[int] = 1) -> Iterator[None]:
    import torch

    old = torch.get_num_threads()
    if n is not None:
        if int(n) < 1:
            raise ValueError(f"torch_threads: the thread count must be ≥ 1, got {n}")
        torch.set_num_threads(int(n))
    try:
        yield
    finally:
        torch.set_num_threads(old)
