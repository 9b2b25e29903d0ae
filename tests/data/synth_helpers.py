"""Helpers shared by the synthetic-data fixtures (conftest.py) and tests (an importable module:
``conftest`` itself is not reliably importable by name when several conftest.py files exist)."""
from __future__ import annotations

SYNTH_EMOTIONS = ("neutral", "angry", "happy", "sad")
"""Emotions of the reduced emotional fixture (× intensities 1, 2, 3 = 12 clips of 30 frames)."""


class single_thread:
    """Context manager: torch on one thread (the tiny renders are ~10× faster than with contended
    intra-op threads on a loaded 2-core machine)."""

    def __enter__(self):
        import torch

        self.n = torch.get_num_threads()
        torch.set_num_threads(1)
        return self

    def __exit__(self, *exc):
        import torch

        torch.set_num_threads(self.n)
        return False
