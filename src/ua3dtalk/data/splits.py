"""Clip roles of an emotional dataset and the evaluation protocol that keeps them apart (DESIGN §5.5).

An emotional dataset's clips get four disjoint *roles* (:func:`split_emotional_clips`):

* ``evaluator`` — reserved for the metric evaluators (landmark/expression regressors, emotion classifier,
  SyncNet: ``ua3dtalk-evaluators train``); the avatar never sees them;
* ``train`` — the avatar's training clips;
* ``val`` — validation and model selection (hyper-parameters, the demo's tuning, best checkpoints);
* ``test`` — the held-out clips every ``test/*`` metric comes from.

Splits are by clip, never by frame, and stratified per emotion × intensity. A clip is named across tools
by :func:`clip_key` (``<subject>/<clip_id>``). :func:`eval_protocol` compares the clips an evaluator
directory was trained on (its ``manifest.json`` ``clips``) with the clips it is about to score and refuses
an overlap with :class:`ProtocolError` naming the clips, unless the caller allows it explicitly — and
then the record says so.
"""
from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np

from ..constants import EMOTIONS
from .clip import ClipInfo
from .formats import INTENSITIES

ROLES = ("evaluator", "train", "val", "test")

#: the role fractions of the synthetic emotional configs (``experiments/data/synth_*_emotional.yaml``) and
#: the defaults of ``ua3dtalk-evaluators train`` (a test checks that the two agree). With 3 clips per
#: emotion × intensity (9 per emotion) they give 3 evaluator, 3 train, 1 val and 2 test clips per emotion.
SYNTH_SPLIT = {"evaluator_fraction": 0.34, "val_fraction": 0.12, "test_fraction": 0.22, "split_seed": 0}


class ProtocolError(ValueError):
    """The evaluators were trained on clips they are asked to score (or do not say which clips)."""


def clip_key(clip: ClipInfo) -> str:
    """``<subject>/<clip_id>`` (``clip_id`` alone when the subject is unknown): the name of a clip in
    evaluator manifests and ``eval_protocol`` records."""
    return f"{clip.subject}/{clip.clip_id}" if clip.subject else str(clip.clip_id)


def _counts(n: int, val_fraction: float, test_fraction: float, evaluator_fraction: float) -> tuple[int, int, int]:
    """Clips of one emotion group for (val, test, evaluator): ``round(fraction · n)``, at least one when the
    fraction is > 0, allocated in that priority while one clip is always left for training."""
    out, left = [], n - 1  # one training clip at least
    for f in (val_fraction, test_fraction, evaluator_fraction):
        k = 0
        if f > 0 and left > 0:
            k = min(left, max(1, int(round(f * n))))
        out.append(k)
        left -= k
    return out[0], out[1], out[2]


def split_emotional_clips(clips: Sequence[ClipInfo], val_fraction: float = 0.34,
                          holdout_emotions: Sequence[Union[str, int]] = (), holdout_intensities: Sequence[int] = (),
                          seed: int = 0, test_fraction: float = 0.0, evaluator_fraction: float = 0.0
                          ) -> dict[str, list[int]]:
    """Split clips (never frames) → ``{"evaluator", "train", "val", "test"}`` lists of clip indices.

    Clips whose emotion is in ``holdout_emotions`` or whose intensity is in ``holdout_intensities`` go to
    ``test``. The others are grouped by emotion; each group (sorted by ``clip_id``, then shuffled with a
    generator seeded by ``(seed, emotion id)`` within each intensity, and the intensities interleaved from
    a random starting level) gives, in this order, ``evaluator``, ``test``, ``val`` and the rest ``train``
    clips, so consecutive roles cover distinct intensities. Counts per group: ``round(fraction · n)``, at
    least 1 for a fraction > 0 while the group has clips to spare, and never all of them: every emotion
    keeps a training clip (:func:`_counts`; val is served first, then test, then evaluator).
    Deterministic for ``seed``; with ``test_fraction = evaluator_fraction = 0`` the val/train split is the
    same as before those roles existed.
    """
    for name, f in (("val_fraction", val_fraction), ("test_fraction", test_fraction),
                    ("evaluator_fraction", evaluator_fraction)):
        if not 0.0 <= float(f) < 1.0:
            raise ValueError(f"{name} must be in [0, 1), got {f}")
    if val_fraction + test_fraction + evaluator_fraction >= 1.0:
        raise ValueError(f"val_fraction + test_fraction + evaluator_fraction must be < 1 (clips are left for "
                         f"training), got {val_fraction} + {test_fraction} + {evaluator_fraction}")
    emo_out = set()
    for e in holdout_emotions:
        if isinstance(e, str):
            if e.strip().lower() not in EMOTIONS:
                raise ValueError(f"unknown holdout emotion {e!r}; expected one of {', '.join(EMOTIONS)}")
            emo_out.add(EMOTIONS.index(e.strip().lower()))
        else:
            emo_out.add(int(e))
    int_out = {int(k) for k in holdout_intensities}
    bad = int_out - set(INTENSITIES)
    if bad:
        raise ValueError(f"holdout_intensities must be in {INTENSITIES}, got {sorted(bad)}")
    out: dict[str, list[int]] = {r: [] for r in ROLES}
    groups: dict[int, list[int]] = {}
    for i, c in enumerate(clips):
        if c.emotion in emo_out or c.intensity in int_out:
            out["test"].append(i)
        else:
            groups.setdefault(c.emotion, []).append(i)
    for emo, members in sorted(groups.items()):
        members = sorted(members, key=lambda i: clips[i].clip_id)
        rng = np.random.default_rng([int(seed) & 0xFFFFFFFF, emo + 1])
        by_int: dict[int, list[int]] = {}
        for i in members:
            by_int.setdefault(int(clips[i].intensity), []).append(i)
        levels = sorted(by_int)
        start = int(rng.integers(len(levels)))
        levels = levels[start:] + levels[:start]
        queues = [[by_int[k][j] for j in rng.permutation(len(by_int[k]))] for k in levels]
        members = [q[r] for r in range(max(map(len, queues))) for q in queues if r < len(q)]
        n_val, n_test, n_eval = _counts(len(members), val_fraction, test_fraction, evaluator_fraction)
        a, b, c = n_eval, n_eval + n_test, n_eval + n_test + n_val
        out["evaluator"] += members[:a]
        out["test"] += members[a:b]
        out["val"] += members[b:c]
        out["train"] += members[c:]
    return {k: sorted(v) for k, v in out.items()}


# --------------------------------------------------------------------------------------------------
# the evaluation protocol
# --------------------------------------------------------------------------------------------------

def evaluator_clips(directory: Union[str, Path, None]) -> Optional[list[str]]:
    """The clips an evaluator directory was trained on (``manifest.json`` ``clips``); ``[]`` for no
    directory; None when the directory has no manifest or its manifest does not record them."""
    if directory is None:
        return []
    p = Path(directory) / "manifest.json"
    if not p.is_file():
        return None
    try:
        m = json.loads(p.read_text())
    except (OSError, ValueError):
        return None
    clips = m.get("clips") if isinstance(m, dict) else None
    return [str(c) for c in clips] if isinstance(clips, list) else None


def eval_protocol(evaluators: Union[str, Path, None], splits: dict[str, Sequence[ClipInfo]], *,
                  scored: Sequence[str] = ("val", "test"), allow_overlap: bool = False) -> dict:
    """The ``eval_protocol`` record of a run: which clips trained the evaluators, the avatar, and which
    are scored — refused when they overlap.

    Args:
        evaluators: the evaluator directory (None: no trained evaluator is used).
        splits: ``{"train": clips, "val": clips, "test": clips}`` of the DataModule (ClipInfo lists).
        scored: the splits the evaluators score.
        allow_overlap: accept an overlap (or an evaluator directory that does not record its clips); the
            record then says ``overlap_allowed: true`` and lists the overlap.
    Raises:
        ProtocolError: naming the overlapping clips (or the directory without a clip record).
    """
    ev = evaluator_clips(evaluators)
    rec: dict = {"evaluator_dir": None if evaluators is None else str(evaluators),
                 "evaluator_clips": ev if ev is not None else "unknown"}
    for k in ("train", "val", "test"):
        rec[f"{k}_clips"] = sorted(dict.fromkeys(clip_key(c) for c in splits.get(k, ())))
    scored_keys = sorted({c for s in scored for c in rec[f"{s}_clips"]})
    problem = None
    if ev is None:
        overlap = []
        problem = (f"the evaluator directory {evaluators} does not record the clips it was trained on "
                   "(manifest.json 'clips'); retrain it with `ua3dtalk-evaluators train`")
    else:
        overlap = sorted(set(ev) & set(scored_keys))
        if overlap:
            more = f" (+{len(overlap) - 8} more)" if len(overlap) > 8 else ""
            problem = (f"the evaluators in {evaluators} were trained on {len(overlap)} of the clips they would "
                       f"score: {', '.join(overlap[:8])}{more}")
    rec["overlap"] = overlap
    rec["overlap_allowed"] = bool(allow_overlap and problem is not None)
    rec["disjoint"] = problem is None and not (set(rec["val_clips"]) & set(rec["test_clips"]))
    if problem is not None:
        if not allow_overlap:
            raise ProtocolError(f"{problem}; pass allow_overlap=true to score anyway (the record says so)")
        warnings.warn(f"{problem}; scoring anyway (allow_overlap): the metrics are optimistic", UserWarning,
                      stacklevel=2)
    return rec


def role_clips(dm) -> dict[str, list[ClipInfo]]:
    """The clips of each role of a set-up DataModule: an emotional one's :attr:`split_clips`; a regular
    dataset is one clip whose frames are split, so it is in train, val and test at once."""
    sc = getattr(dm, "split_clips", None)
    if sc:
        return sc
    clips = list(dm.clips or [])
    return {"train": clips, "val": clips, "test": clips}
