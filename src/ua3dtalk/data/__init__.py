"""ua3dtalk.data (DESIGN §3, §5): the typed batch, dataset readers and validation, audio features.

* :mod:`.batch` — :class:`FrameBatch` and :func:`collate`.
* :mod:`.formats` — layouts §5.1/§5.2: :func:`load_clip`, :func:`load_emotional`, :func:`load_dataset`,
  :class:`ClipInfo`, :class:`EmotionalData`, lazy readers (:func:`read_image`, :func:`read_parsing`, …),
  :func:`read_frame` (one frame → FrameBatch), :class:`DatasetError`, :data:`EMOTIONS`, :data:`PALETTE`.
* :mod:`.cameras` — OpenGL camera-to-world → OpenCV world-to-camera conversion.
* :mod:`.validate` — the report behind ``ua3dtalk-validate``.
* :mod:`.audio` — 16 kHz loading/resampling, wav2vec2 and log-mel extractors, windows, cache.
* :mod:`.datamodule` — :class:`FrameDataset`, :class:`AudioFrameDataset`, :class:`PredictDataset`, the
  :class:`AudioBatch` / :class:`PredictBatch` dataclasses, :class:`TalkingHeadDataModule`,
  :class:`EmotionalTalkingHeadDataModule` (imported lazily: they pull in Lightning).
* :mod:`.samplers` — :class:`MouthOpenCurriculumSampler`, :class:`BlinkCurriculumSampler`.
"""
from .batch import FrameBatch, collate
from .cameras import Cameras, opengl_c2w_to_opencv_w2c
from .formats import (
    EMOTIONS,
    FPS,
    PALETTE,
    PARTS,
    ClipInfo,
    DatasetError,
    DatasetWarning,
    EmotionalData,
    Frame,
    Problem,
    load_clip,
    load_dataset,
    load_emotional,
    read_frame,
    read_image,
    read_landmarks,
    read_parsing,
    validate,
)

_LAZY = {
    "datamodule": ("AudioBatch", "PredictBatch", "collate_audio", "collate_predict", "collate_batches",
                   "FrameDataset", "AudioFrameDataset", "PredictDataset", "TalkingHeadDataModule",
                   "EmotionalTalkingHeadDataModule", "split_emotional_clips"),
    "samplers": ("CurriculumSampler", "MouthOpenCurriculumSampler", "BlinkCurriculumSampler", "mouth_openness"),
}
_LAZY_NAMES = {name: mod for mod, names in _LAZY.items() for name in names}


def __getattr__(name: str):
    """Lazy exports of :mod:`.datamodule` and :mod:`.samplers` (PEP 562)."""
    mod = _LAZY_NAMES.get(name)
    if mod is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(f".{mod}", __name__), name)


__all__ = [
    *_LAZY_NAMES, "FrameBatch", "collate", "Cameras", "opengl_c2w_to_opencv_w2c", "EMOTIONS", "FPS", "PALETTE", "PARTS",
    "ClipInfo", "DatasetError", "DatasetWarning", "EmotionalData", "Frame", "Problem", "load_clip", "load_dataset",
    "load_emotional", "read_frame", "read_image", "read_landmarks", "read_parsing", "validate",
]
