"""Typed configurations of the DataModules (DESIGN §5): frozen dataclasses whose choices are ``Literal``
types checked once (:mod:`ua3dtalk.utils.typed_config`). The field names are the keys of ``data`` in the
experiment yamls (``experiments/data/``), so a yaml key, a field and a DataModule option are one name."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional, Union

from ..utils.typed_config import check_config

Background = Literal["bc", "bc+torso", "white", "black"]
Sampler = Literal["mouth", "blink"]


@dataclass(frozen=True)
class DataConfig:
    """Options of :class:`~ua3dtalk.data.datamodule.TalkingHeadDataModule` (besides ``root`` and the settable
    ``stage``); each is documented below it."""

    feature: str = "mel"
    """``mel`` or ``wav2vec2`` (extractors: ``prepare_data`` computes and caches ``aud_<name>.npy``), or the name
    of a stored feature file (``ds``, ``hu``, ``eo``, ``w2v``, ``aud`` or a cache name; ``EXTRACTOR_FEATURES``)."""
    extractor_model: Optional[str] = None
    """wav2vec2 model (hub id in the local cache, or a directory) for a wav2vec2 feature (default
    ``facebook/wav2vec2-base-960h``)."""
    extractor_layer: Optional[Union[str, int]] = None
    """wav2vec2 output: ``logits`` (default) or a hidden-layer index."""
    context_feature: Optional[str] = None
    """features of the audio context (``AudioBatch.context`` / ``FrameBatch.audio_context``: what the prior's
    style encoder and the emotion encoder's w2v branch read) when they differ from ``feature``, given like it;
    None = ``feature``. The windows (the audio view, the prior's content encoder) keep ``feature``."""
    neighbours: int = 8
    """windows in ``FrameBatch.audio_neighbours`` (TalkingGaussian: 8)."""
    context: int = 50
    """frames of the audio context."""
    segment_seconds: float = 2.0
    """length of ``AudioBatch.waveform``."""
    background: Background = "bc+torso"
    """what the frames are composited over (:class:`~ua3dtalk.data.datasets.FrameDataset`)."""
    batch_size: int = 1
    """frames per batch of the rendering stages."""
    audio_batch_size: int = 128
    """frames per batch of the prior / emotion stages."""
    num_workers: int = 0
    """DataLoader workers (``persistent_workers`` when > 0)."""
    pin_memory: bool = False
    """DataLoader ``pin_memory``."""
    cache_size: int = 256
    """decoded frames cached per worker."""
    sampler: Optional[Sampler] = None
    """the rendering stages' train order: uniform shuffling (None), ``mouth``
    (:class:`~ua3dtalk.data.samplers.MouthOpenCurriculumSampler`) or ``blink`` (``BlinkCurriculumSampler``)."""
    sampler_power: float = 1.0
    sampler_uniform_mix: float = 0.5
    """(sampler_power, sampler_uniform_mix) parameters of the curriculum sampler."""
    jaw_column: Optional[int] = None
    """column of ``expr.npy`` holding the jaw opening, for ``sampler=mouth`` (default: read from ``synth.json``;
    else the mouth aspect ratio of the landmarks)."""
    limit_val_frames: Optional[int] = None
    """at most this many val frames (evenly spaced), None = all."""
    seed: int = 0
    """seed of shuffling and samplers."""
    index: Optional[str] = None
    """index file of an emotional root (``clips.json`` / ``clips.txt``)."""
    predict_audio: Optional[str] = None
    """audio file for ``predict_dataloader`` (default: the first val clip's audio)."""
    predict_cameras: Optional[str] = None
    """a camera track file for ``predict_dataloader`` instead of the first val clip's (then with
    ``predict_audio``, over white; the dataset itself is not needed for predict)."""
    predict_emotion: Union[str, int] = "audio"
    predict_intensity: Optional[int] = None
    predict_blink: str = "zeros"
    predict_expression: Optional[str] = None
    """(predict_emotion, predict_intensity, predict_blink) see :class:`~ua3dtalk.data.predict.PredictDataset`;
    ``predict_expression``: an ``expr.npy`` ``[M, K]`` whose rows drive ``model.frame_code=expression`` (looped like the
    camera track; ``ua3dtalk-infer expression=FILE``)."""

    def __post_init__(self) -> None:
        own = type(self).__name__
        if self.background not in Background.__args__:
            raise ValueError(f"background must be one of {', '.join(Background.__args__)}, got {self.background!r}")
        if self.sampler not in (None, *Sampler.__args__):
            raise ValueError(f"sampler must be None, 'mouth' or 'blink', got {self.sampler!r}")
        check_config(self, own)
        if self.batch_size < 1 or self.audio_batch_size < 1:
            raise ValueError("batch_size and audio_batch_size must be ≥ 1")
        if self.num_workers < 0:
            raise ValueError(f"num_workers must be ≥ 0, got {self.num_workers}")
        if self.feature == "mel" and self.context_feature in (None, "mel") and (
                self.extractor_model is not None or self.extractor_layer is not None):
            raise ValueError("the mel extractor takes no extractor_model / extractor_layer")
        if self.predict_cameras is not None and self.predict_audio is None:
            raise ValueError("predict_cameras needs predict_audio (the speech that drives the camera track)")


@dataclass(frozen=True)
class EmotionalDataConfig(DataConfig):
    """Options of :class:`~ua3dtalk.data.datamodule.EmotionalTalkingHeadDataModule`: those of
    :class:`DataConfig` and the clip split (DESIGN §5.5)."""

    val_fraction: float = 0.34
    """fraction of each emotion's clips used for validation."""
    test_fraction: float = 0.0
    """fraction of each emotion's clips used only for testing."""
    evaluator_fraction: float = 0.0
    """fraction of each emotion's clips reserved for the evaluators."""
    holdout_emotions: tuple[Union[str, int], ...] = ()
    """emotions (names or ids) used only for testing."""
    holdout_intensities: tuple[int, ...] = ()
    """intensities (1..3) used only for testing."""
    split_seed: int = 0
    """seed of the clip split (independent of ``seed``)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("val_fraction", "test_fraction", "evaluator_fraction"):
            f = getattr(self, name)
            if isinstance(f, bool) or not isinstance(f, (int, float)) or not 0.0 <= float(f) < 1.0:
                raise ValueError(f"data.{name} must be a number in [0, 1), got {f!r}")
        if self.val_fraction + self.test_fraction + self.evaluator_fraction >= 1.0:
            raise ValueError(f"data.val_fraction + data.test_fraction + data.evaluator_fraction must be < 1, got "
                             f"{self.val_fraction} + {self.test_fraction} + {self.evaluator_fraction}")


__all__ = ["Background", "DataConfig", "EmotionalDataConfig", "Sampler"]
