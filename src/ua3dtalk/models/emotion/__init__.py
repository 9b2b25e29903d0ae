"""Emotion Distillation (DESIGN §4, issue 4 item 5).

Public API:

* :data:`EMOTIONS` — the 8 MEAD emotions; a label id is an index into it (the same tuple as
  :data:`ua3dtalk.constants.EMOTIONS`);
* :class:`EmotionEncoder` — log-mel CNN / MFCC BiLSTM / wav2vec2 projection branches, attention-weighted
  fusion → ``e`` ∈ R^128, emotion and intensity heads; ``EmotionEncoder(C, branches=("w2v",))`` is
  the inference student; :class:`EmotionOutput`;
* :class:`DistillationLoss`, :class:`EmotionDistillation` (teacher + student), :func:`load_teacher`,
  :func:`save_teacher`, :class:`EmotionTeacher`;
* :class:`EmotionField` — plane field × multi-resolution codebooks → ``f_emotion`` ∈ R^192 per Gaussian;
* :class:`EmotionControl` (prototypes, label / audio / explicit control), :func:`blend`,
  :func:`emotion_index`;
* :class:`LogMel`, :class:`MFCC`, :func:`sequence_from_windows` — front-ends and input helpers.
"""
from .constants import EMOTIONS, INTENSITIES
from .control import EmotionControl, blend, emotion_index
from .distill import DistillationLoss, EmotionDistillation, EmotionTeacher, load_teacher, save_teacher
from .encoder import BRANCHES, AttentionFusion, EmotionEncoder, EmotionOutput
from .features import MFCC, LogMel, sequence_from_windows
from .field import EmotionField

__all__ = [
    "EMOTIONS", "INTENSITIES", "BRANCHES", "EmotionEncoder", "EmotionOutput", "AttentionFusion",
    "DistillationLoss", "EmotionDistillation", "EmotionTeacher", "load_teacher", "save_teacher", "EmotionField",
    "EmotionControl", "blend", "emotion_index", "LogMel", "MFCC", "sequence_from_windows",
]
