"""What a dataset says about its expression coefficients (``expr.npy``) — which columns are *emotional*.

The prior's L_recon leaves the emotional coefficients out (``PriorExtraction(recon_dims="auto")``, DESIGN
§4.3) when the dataset says which they are; the CLI passes them to the model config as
``data_info.emotional_expr_dims``. Sources, per clip (``synth.json`` next to ``expr.npy``):

* ``expr_emotional`` — an explicit list of coefficient names (any generator; a subset of ``expr_names``);
* otherwise, for ``"generator": "ua3dtalk-synth"`` with ``expr_names``: the generator's own labelling
  (:data:`ua3dtalk.data.synth.speech.EMOTIONAL_EXPR`; datasets written before the key existed).

Anything else — real video, MEAD, coefficients from a regressor — is *unknown* (None): no column is
assumed emotional and L_recon keeps every coefficient. All clips must agree (same names, same emotional
set); otherwise the answer is None as well.
"""
from __future__ import annotations

import json
from typing import Optional, Sequence

from .clip import ClipInfo

__all__ = ["emotional_expr_columns", "clip_expr_semantics"]


def clip_expr_semantics(clip: ClipInfo) -> Optional[tuple[tuple[str, ...], tuple[int, ...]]]:
    """``(expr_names, emotional columns)`` of one clip from its ``synth.json``, or None when unknown."""
    p = clip.root / "synth.json"
    if "expr" not in clip.available or not p.is_file():
        return None
    try:
        meta = json.loads(p.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(meta, dict):
        return None
    names = meta.get("expr_names")
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names) or len(set(names)) != len(names):
        return None
    emotional = meta.get("expr_emotional")
    if emotional is None and meta.get("generator") == "ua3dtalk-synth":
        from .synth.speech import EMOTIONAL_EXPR

        emotional = [n for n in names if n in EMOTIONAL_EXPR]
    if not isinstance(emotional, list) or not all(isinstance(n, str) and n in names for n in emotional):
        return None
    return tuple(names), tuple(sorted(names.index(n) for n in set(emotional)))


def emotional_expr_columns(clips: Sequence[ClipInfo]) -> Optional[list[int]]:
    """The columns of ``expr.npy`` that every clip of the dataset marks as emotional (module docstring),
    or None when any clip does not say or the clips disagree."""
    found = {clip_expr_semantics(c) for c in clips}
    if len(found) != 1 or None in found:
        return None
    (_, cols), = found
    return list(cols)
