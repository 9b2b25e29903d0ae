"""Where the emotion stage learns from (DESIGN §4.4), decided once the dataset is loaded.

* an emotional dataset (clips with emotion labels) → ``"labels"``: the teacher is trained on the labels and
  distilled (or a pretrained teacher is used when ``model.emotion.teacher_path`` is set);
* a video without labels and a teacher (``model.emotion.teacher_path=DIR``, written by ``ua3dtalk-teacher``)
  → ``"teacher"``: the stage distils from it;
* a video without labels and without a teacher → ``"none"``: the emotion module, its deformation view and the
  emotion-swap term are left out (as with ``model/emotion=none``), one line says why, and the checkpoint has
  no emotion control, so ``ua3dtalk-infer`` refuses emotion labels — never a stage that trains on nothing and
  reports NaN.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable


def has_emotion_labels(dm) -> bool:
    """Whether any clip of the set-up DataModule carries an emotion label (``ClipInfo.emotion`` ≥ 0)."""
    return any(int(getattr(c, "emotion", -1)) >= 0 for c in (getattr(dm, "clips", None) or ()))


def settle_emotion_source(cfg, dm, log: Callable[[str], None] = print) -> str:
    """``"labels"`` | ``"teacher"`` | ``"none"`` (see the module docstring); for ``"none"`` the emotion parts of
    ``cfg.model`` are removed in place. Raises ``ValueError`` naming ``model.emotion.teacher_path`` when it
    is set but is not a directory."""
    from omegaconf import open_dict

    m = cfg.model
    if m.get("emotion") is None:
        return "none"
    teacher = m.emotion.get("teacher_path") if hasattr(m.emotion, "get") else None
    if teacher:
        if not Path(str(teacher)).expanduser().is_dir():
            raise ValueError(f"model.emotion.teacher_path={teacher}: not a directory; train the teacher with "
                             "`ua3dtalk-teacher --data EMOTIONAL_DATASET --out DIR` or set it to null")
        return "labels" if has_emotion_labels(dm) else "teacher"
    if has_emotion_labels(dm):
        return "labels"
    with open_dict(cfg):
        cfg.model.emotion = None
        cfg.model.emotion_field = None
        cfg.model.emotion_control = None
        views = dict(cfg.model.get("drop_views") or {})
        views["emotion"] = ["emotion"]
        cfg.model.drop_views = views
        if "emotion_swap_weight" in cfg.model:
            cfg.model.emotion_swap_weight = 0.0
        cfg.stages = [s for s in cfg.stages if s != "emotion"]  # said here, once
    log(f"ua3dtalk-train: stage emotion skipped: data.root={cfg.data.get('root')} has no emotion labels and "
        "model.emotion.teacher_path is not set, so the model has no emotion view and ua3dtalk-infer will refuse "
        "emotion labels (to distil emotion: ua3dtalk-teacher --data EMOTIONAL_DATASET --out DIR, then "
        "model.emotion.teacher_path=DIR)")
    return "none"
