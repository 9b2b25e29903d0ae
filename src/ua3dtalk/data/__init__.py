"""ua3dtalk.data (DESIGN §3, §5): the typed batches, dataset readers and validation, audio features.

* :mod:`.batch` — :class:`FrameBatch`, :class:`AudioBatch`, :class:`PredictBatch` and their collate
  functions (:func:`collate`, :func:`collate_batches`).
* :mod:`.formats` — layouts §5.1/§5.2 and their constants (:data:`PALETTE`, :data:`PARTS`, …),
  :class:`DatasetError`, lazy readers of single files (:func:`read_image`, :func:`read_parsing`, …).
* :mod:`.clip` — :class:`ClipInfo`, :class:`Frame`, :class:`EmotionalData` (a loaded dataset).
* :mod:`.loading` — :func:`load_clip`, :func:`load_emotional`, :func:`load_dataset`, :func:`validate`,
  :func:`read_frame` (one frame → FrameBatch).
* :mod:`.validate` — the checks of a whole dataset and the report behind ``ua3dtalk-validate``;
  :mod:`.checks` — checks of single files.
* :mod:`.cameras` — OpenGL camera-to-world → OpenCV world-to-camera conversion.
* :mod:`.audio` — 16 kHz loading/resampling, windows, the length rule, feature files and cache;
  :mod:`.extractors` — the wav2vec2 and log-mel extractors.
* :mod:`.features` — per-frame features, audio context, lip target, waveform segments (numpy).
* :mod:`.datasets` — :class:`FrameDataset`, :class:`AudioFrameDataset`; :mod:`.predict` —
  :class:`PredictDataset`.
* :mod:`.datamodule` — :class:`TalkingHeadDataModule`, :class:`EmotionalTalkingHeadDataModule`
  (imported lazily, like the datasets: they pull in Lightning).
* :mod:`.samplers` — :class:`MouthOpenCurriculumSampler`, :class:`BlinkCurriculumSampler`.
"""
from ..constants import EMOTIONS
from .batch import FrameBatch, collate
from .cameras import Cameras, opengl_c2w_to_opencv_w2c
from .clip import ClipInfo, EmotionalData, Frame
from .formats import (
    FPS,
    PALETTE,
    PARTS,
    DatasetError,
    DatasetWarning,
    Problem,
    read_image,
    read_landmarks,
    read_parsing,
)
from .loading import load_clip, load_dataset, load_emotional, read_frame, validate

_LAZY = {
    "batch": ("AudioBatch", "PredictBatch", "collate_audio", "collate_predict", "collate_batches"),
    "datasets": ("FrameDataset", "AudioFrameDataset"),
    "predict": ("PredictDataset",),
    "datamodule": ("TalkingHeadDataModule", "EmotionalTalkingHeadDataModule"),
    "splits": ("split_emotional_clips",),
    "samplers": ("CurriculumSampler", "MouthOpenCurriculumSampler", "BlinkCurriculumSampler", "mouth_openness"),
}
_LAZY_NAMES = {name: mod for mod, names in _LAZY.items() for name in names}


def __getattr__(name: str):
    """Lazy exports (PEP 562): the datasets, DataModules, samplers and the batches beyond FrameBatch."""
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
