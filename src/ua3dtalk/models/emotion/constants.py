"""Emotion names and levels, shared with the datasets (one definition: ``ua3dtalk.data.formats``)."""
from __future__ import annotations

try:  # the dataset readers define the label ids; use theirs so ids always agree
    from ua3dtalk.constants import EMOTIONS
    from ua3dtalk.data.formats import INTENSITIES
except ImportError:  # pragma: no cover - formats is part of the package; kept for partial installs
    from ua3dtalk.data.synth.speech import EMOTIONS

    INTENSITIES = (1, 2, 3)

__all__ = ["EMOTIONS", "INTENSITIES"]
