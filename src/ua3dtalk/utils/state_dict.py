"""Comparing a state dict with a module's own and listing the differences (the weight-file errors of
:mod:`ua3dtalk.models.prior.io` and :mod:`ua3dtalk.metrics.syncnet`)."""
from __future__ import annotations

from typing import Any, Iterable, Mapping


def format_keys(keys: Iterable[str], limit: int = 20) -> str:
    """``"a, b, c"``; past ``limit`` keys the rest are counted: ``"a, b, … (3 more)"``."""
    keys = list(keys)
    s = ", ".join(keys[:limit])
    return s + (f", … ({len(keys) - limit} more)" if len(keys) > limit else "")


def state_dict_diff(own: Mapping[str, Any], state: Mapping[str, Any],
                    may_miss: tuple[str, ...] = ()) -> tuple[list[str], list[str], list[str]]:
    """``(missing, unexpected, mis-shaped)`` keys of ``state`` against the module's ``own`` state dict:
    keys of ``own`` absent from ``state`` (except those ending in one of ``may_miss``), keys of ``state``
    absent from ``own``, and keys of both whose shapes differ (a value without ``shape`` counts as
    ``()``); each in the order of ``own`` / ``state``."""
    missing = [k for k in own if k not in state and not k.endswith(may_miss)]
    unexpected = [k for k in state if k not in own]
    shaped = [k for k in own if k in state and tuple(getattr(state[k], "shape", ())) != tuple(own[k].shape)]
    return missing, unexpected, shaped


def mismatch_lines(missing: list[str], unexpected: list[str], shapes: list[str], counts: bool = False) -> list[str]:
    """One line per non-empty list: ``missing keys: …``, ``unexpected keys: …``, ``shape mismatches: …``
    (:func:`format_keys`; with ``counts`` the list's length follows the label: ``missing keys (3): …``)."""
    lines = []
    for label, keys in (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", shapes)):
        if keys:
            lines.append(f"{label}{f' ({len(keys)})' if counts else ''}: {format_keys(keys)}")
    return lines


__all__ = ["format_keys", "state_dict_diff", "mismatch_lines"]
