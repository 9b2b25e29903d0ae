"""Argument checks shared by the deformation modules."""
from __future__ import annotations

from typing import Container


def check_names(owner: str, kind: str, names: tuple[str, ...], allowed: Container[str], expected: str) -> None:
    """Raise ``ValueError`` unless ``names`` is non-empty, every name is in ``allowed`` and none repeats.

    The errors read ``<owner>: at least one <kind> is required``, ``<owner>: unknown <kind> 'x';
    expected <expected>`` and ``<owner>: duplicate <kind>s in <names>``."""
    if not names:
        raise ValueError(f"{owner}: at least one {kind} is required")
    for n in names:
        if n not in allowed:
            raise ValueError(f"{owner}: unknown {kind} {n!r}; expected {expected}")
    if len(set(names)) != len(names):
        raise ValueError(f"{owner}: duplicate {kind}s in {names}")


__all__ = ["check_names"]
