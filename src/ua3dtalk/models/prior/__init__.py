"""Prior Extraction (DESIGN §4, issue 4 item 4).

Public API:

* :class:`PriorExtraction` — content encoder + style encoder + FuseNet, ``forward(audio_window
  [B,16,C], audio_context [B,50,C']) → PriorOutput``, ``losses(out, expr, lip_target, …)``,
  ``save_pretrained`` / ``load_pretrained``;
* :class:`ContentEncoder`, :class:`StyleEncoder`, :class:`FuseNet` — the networks;
* :func:`info_nce`, :func:`decorrelation_penalty`, :func:`emotion_invariance_penalty` — the losses;
* :func:`frame_features`, :func:`audio_context` — per-frame features and ≈2 s contexts from the §5.3
  windows of a clip;
* :func:`read_state_dict`, :func:`load_checked`, :class:`WeightsError` — weight-file helpers.
"""
from .encoders import ContentEncoder, FuseNet, StyleEncoder
from .io import WeightsError, load_checked, read_state_dict, write_state_dict
from .losses import decorrelation_penalty, emotion_invariance_penalty, info_nce
from .config import PriorConfig
from .module import PriorExtraction, PriorOutput, audio_context, frame_features

__all__ = [
    "ContentEncoder", "StyleEncoder", "FuseNet", "PriorExtraction", "PriorConfig", "PriorOutput", "frame_features",
    "audio_context", "info_nce", "decorrelation_penalty", "emotion_invariance_penalty", "read_state_dict",
    "write_state_dict", "load_checked", "WeightsError",
]
