"""ua3dtalk.callbacks (DESIGN §3): checkpointing (:mod:`.checkpoint`) and metric callbacks (:mod:`.metrics`).

``from ua3dtalk.callbacks import MetricsCallback`` imports :mod:`.metrics` on first use.
"""
from __future__ import annotations

from ..utils.lazy import lazy_exports

__all__, __getattr__, __dir__ = lazy_exports(__name__, {
    "metrics": ("MetricsCallback", "update_metrics_json", "split_sequences", "render_sequence", "side_by_side"),
}, globals())
