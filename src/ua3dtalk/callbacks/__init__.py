"""ua3dtalk.callbacks (DESIGN §3): checkpointing (:mod:`.checkpoint`) and metric callbacks (:mod:`.metrics`).

``from ua3dtalk.callbacks import MetricsCallback`` imports :mod:`.metrics` on first use.
"""
from __future__ import annotations

import importlib

_EXPORTS = {"MetricsCallback": "metrics", "update_metrics_json": "metrics", "split_sequences": "metrics",
            "render_sequence": "metrics", "side_by_side": "metrics"}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    mod = _EXPORTS.get(name)
    if mod is None:
        raise AttributeError(f"module 'ua3dtalk.callbacks' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{mod}", __name__), name)
    globals()[name] = value
    return value
