"""Lightning DataModules (DESIGN §2, §5.4): :class:`TalkingHeadDataModule` (a regular dataset, §5.1;
the splits of its ``transforms_*.json``) and :class:`EmotionalTalkingHeadDataModule` (§5.2; splits by
clip, stratified per emotion, optional held-out emotions / intensities).

They load and check the dataset (:mod:`ua3dtalk.data.loading`), compute missing feature caches
(``prepare_data``), and serve the datasets of :mod:`ua3dtalk.data.datasets`
(:class:`~ua3dtalk.data.datasets.FrameDataset` for the rendering stages,
:class:`~ua3dtalk.data.datasets.AudioFrameDataset` for ``prior`` / ``emotion``) and
:class:`~ua3dtalk.data.predict.PredictDataset` for ``predict``; the batches are those of
:mod:`ua3dtalk.data.batch`.
"""
from __future__ import annotations

import dataclasses
import warnings
from pathlib import Path
from typing import Any, Optional

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from ..constants import AUDIO_STAGES, STAGES
from ..utils.typed_config import make_config
from .audio import extract_features, read_feature_file
from .batch import collate_batches
from .clip import ClipInfo, iter_clips
from .config import DataConfig, EmotionalDataConfig
from .datasets import AudioFrameDataset, FrameDataset, all_positions
from .extractors import EXTRACTOR_FEATURES, make_extractor
from .features import _check_features, _common_expr
from .formats import DatasetError, DatasetWarning, Problem
from .loading import list_clip_dirs, load_dataset, load_emotional
from .predict import PredictDataset, read_expression_track
from .samplers import BlinkCurriculumSampler, MouthOpenCurriculumSampler, mouth_openness
from .splits import split_emotional_clips

__all__ = ["TalkingHeadDataModule", "EmotionalTalkingHeadDataModule", "split_emotional_clips"]


# --------------------------------------------------------------------------------------------------
# DataModules
# --------------------------------------------------------------------------------------------------


def _limit(index: np.ndarray, k: Optional[int]) -> np.ndarray:
    """At most ``k`` rows of ``index``, evenly spaced (deterministic)."""
    if k is None or len(index) <= k:
        return index
    if k <= 0:
        return index[:0]
    sel = np.unique(np.round(np.linspace(0, len(index) - 1, int(k))).astype(np.int64))
    return index[sel]


class TalkingHeadDataModule(L.LightningDataModule):
    """DataModule of a regular dataset (DESIGN §5.1): one subject directory (or every clip of an
    emotional root, each with its own transforms split).

    Train / val frames are the clip's ``transforms_train.json`` / ``transforms_val.json`` frames;
    ``test`` = val; ``predict`` re-renders the first val clip from its own audio and camera track
    (or ``predict_audio`` when given).

    Loaders follow :attr:`stage`: ``mouth`` / ``face`` / ``fuse`` → :class:`FrameBatch` loaders
    (``batch_size``, optional curriculum ``sampler``); ``prior`` / ``emotion`` → :class:`AudioBatch`
    loaders (``audio_batch_size``, shuffled). Shuffling is seeded (``seed``).

    Args:
        root: the dataset directory.
        stage: training stage selecting the loaders; settable (``dm.stage = "prior"``).
        config: the typed :class:`~ua3dtalk.data.config.DataConfig` (features, backgrounds, batch sizes, workers,
            sampler, seed, predict inputs; defaults when None).
        **options: fields of that configuration set on top of ``config`` (the keys of ``data`` in the
            experiment yamls).
    """

    config_class: type[DataConfig] = DataConfig

    def __init__(self, root: str, stage: str = "face", config: Optional[DataConfig] = None, **options: Any):
        super().__init__()
        cfg = make_config(self.config_class, config, options, type(self).__name__)
        self.config = cfg
        self.save_hyperparameters({"root": str(root), "stage": stage, **dataclasses.asdict(cfg)})
        self.root = Path(root)
        self.feature = str(cfg.feature)
        self.context_feature = None if cfg.context_feature in (None, cfg.feature) else str(cfg.context_feature)
        self.extractor_model = cfg.extractor_model
        self.extractor_layer = cfg.extractor_layer
        self.neighbours = int(cfg.neighbours)
        self.background = cfg.background
        self.batch_size = int(cfg.batch_size)
        self.audio_batch_size = int(cfg.audio_batch_size)
        self.num_workers = int(cfg.num_workers)
        self.cache_size = int(cfg.cache_size)
        self.sampler = cfg.sampler
        self.sampler_power = float(cfg.sampler_power)
        self.sampler_uniform_mix = float(cfg.sampler_uniform_mix)
        self.jaw_column = cfg.jaw_column
        self.stage = stage
        self.limit_val_frames = None if cfg.limit_val_frames is None else int(cfg.limit_val_frames)
        self.seed = int(cfg.seed)
        self.context = int(cfg.context)
        self.segment_seconds = float(cfg.segment_seconds)
        self.index = cfg.index
        self.pin_memory = bool(cfg.pin_memory)
        self.predict_audio = cfg.predict_audio
        self.predict_emotion = cfg.predict_emotion
        self.predict_intensity = cfg.predict_intensity
        self.predict_blink = cfg.predict_blink
        self.predict_expression = cfg.predict_expression
        self.predict_cameras = cfg.predict_cameras
        self._extractor_obj = None
        self._context_extractor_obj = None
        self.clips: Optional[list[ClipInfo]] = None
        self.split_index: dict[str, np.ndarray] = {}
        self._audio_dim: Optional[int] = None
        self._context_dim: Optional[int] = None
        self._expr_dim: Optional[int] = None
        self._image_size: Optional[tuple[int, int]] = None
        self._predict: Optional[PredictDataset] = None
        self._datasets: dict[str, Dataset] = {}

    # ------------------------------------------------------------------ configuration
    @property
    def stage(self) -> str:
        """Training stage: "prior" | "emotion" (AudioBatch loaders) or "mouth" | "face" | "fuse" (FrameBatch)."""
        return self._stage

    @stage.setter
    def stage(self, value: str) -> None:
        if value not in STAGES:
            raise ValueError(f"stage must be one of {', '.join(STAGES)}, got {value!r}")
        self._stage = value

    @property
    def is_audio_stage(self) -> bool:
        return self._stage in AUDIO_STAGES

    def _make_extractor(self, kind: str, key: str):
        if kind == "mel":
            return make_extractor("mel")
        # key: the config key that asked for wav2vec2, named by the missing-model message
        return make_extractor(kind, model=self.extractor_model, layer=self.extractor_layer, config_key=key)

    def _built_once(self, kind: Optional[str], attr: str, key: str):
        """The extractor of ``kind`` when it is in :data:`EXTRACTOR_FEATURES`, built on first use and kept in
        the attribute ``attr``; else None."""
        if kind not in EXTRACTOR_FEATURES:
            return None
        if getattr(self, attr) is None:
            setattr(self, attr, self._make_extractor(kind, key))
        return getattr(self, attr)

    def extractor(self):
        """The feature extractor for ``feature`` in :data:`EXTRACTOR_FEATURES` (built once), else None."""
        return self._built_once(self.feature, "_extractor_obj", "data.feature")

    def context_extractor(self):
        """The extractor of a ``context_feature`` in :data:`EXTRACTOR_FEATURES` (built once), else None."""
        return self._built_once(self.context_feature, "_context_extractor_obj", "data.context_feature")

    @property
    def feature_name(self) -> str:
        """Name of the feature file used (``aud_<feature_name>.npy``)."""
        ex = self.extractor()
        return ex.name if ex is not None else self.feature

    @property
    def context_feature_name(self) -> str:
        """Name of the feature file of the audio context (:attr:`feature_name` without a ``context_feature``)."""
        if self.context_feature is None:
            return self.feature_name
        ex = self.context_extractor()
        return ex.name if ex is not None else self.context_feature

    def _context_arg(self) -> Optional[str]:
        return None if self.context_feature is None else self.context_feature_name

    # ------------------------------------------------------------------ Lightning hooks
    def prepare_data(self) -> None:
        """Compute missing / stale feature caches (``aud_<name>.npy`` via
        :func:`~ua3dtalk.data.audio.extract_features`) for an extractor ``feature``; the only write
        into a dataset. Stored feature names need nothing. The same for ``context_feature``."""
        exs = [ex for ex in (self.extractor(), self.context_extractor()) if ex is not None]
        if not exs:
            return
        for d in list_clip_dirs(self.root, index=self.index):
            for ex in exs:
                extract_features(d, ex)

    def _load(self) -> list[ClipInfo]:
        return iter_clips(load_dataset(self.root, index=self.index))

    def _make_splits(self, clips: list[ClipInfo]) -> dict[str, np.ndarray]:
        train = all_positions(clips, "train")
        val = all_positions(clips, "val")
        return {"train": train, "val": val, "test": val}

    def setup(self, stage: Optional[str] = None) -> None:
        """Load and check the dataset (``DatasetError`` naming files), then build the datasets. ``predict`` with
        ``predict_cameras`` and ``predict_audio`` needs no dataset and loads none."""
        if stage == "predict" and self.predict_cameras is not None:
            return
        if self.clips is None:
            clips = self._load()
            name = self.feature_name
            self._audio_dim = _check_features(clips, name)
            self._context_dim = (self._audio_dim if self.context_feature is None
                                 else _check_features(clips, self.context_feature_name))
            self._expr_dim = int(clips[0].expr().shape[1]) if _common_expr(clips) else 0
            sizes = {(c.height, c.width) for c in clips}
            if len(sizes) > 1:
                raise DatasetError([Problem(self.root, f"clips have different image sizes {sorted(sizes)}; "
                                                       "one dataset must have one frame size")])
            self._image_size = sizes.pop()
            self.split_index = self._make_splits(clips)
            self.clips = clips
            self._datasets = {}
            self._predict = None

    def _require_setup(self) -> list[ClipInfo]:
        if self.clips is None:
            raise RuntimeError(f"{type(self).__name__}: call setup() first")
        return self.clips

    @property
    def audio_channels(self) -> int:
        """Channels ``C`` of the audio features (after :meth:`setup`)."""
        self._require_setup()
        return int(self._audio_dim)

    @property
    def context_channels(self) -> int:
        """Channels ``C'`` of the audio context features (= :attr:`audio_channels` without a
        ``context_feature``; after :meth:`setup`)."""
        self._require_setup()
        return int(self._context_dim)

    @property
    def expr_dim(self) -> int:
        """Number ``K`` of expression coefficients, 0 when the dataset has no ``expr.npy`` (after setup)."""
        self._require_setup()
        return int(self._expr_dim)

    def train_expr(self) -> Optional[np.ndarray]:
        """float64 ``[M, K]``: the ``expr.npy`` rows of the M training frames (after setup; None when the dataset has
        no common ``expr.npy``) — the statistics of ``model.frame_code=expression`` (held-out frames excluded)."""
        clips = self._require_setup()
        if not self._expr_dim:
            return None
        rows = [np.asarray(clips[ci].expr()[clips[ci].frame(pos).img_id], np.float64)
                for ci, pos in self.split_index["train"]]
        return np.stack(rows) if rows else None

    @property
    def image_size(self) -> tuple[int, int]:
        """(height, width) of the frames (after :meth:`setup`)."""
        self._require_setup()
        return self._image_size

    # ------------------------------------------------------------------ datasets
    def _split(self, split: str) -> np.ndarray:
        idx = self.split_index[split]
        return _limit(idx, self.limit_val_frames) if split == "val" else idx

    def frame_dataset(self, split: str) -> FrameDataset:
        """:class:`FrameDataset` of "train", "val" or "test" (built once)."""
        clips = self._require_setup()
        key = f"frames/{split}"
        if key not in self._datasets:
            self._datasets[key] = FrameDataset(clips, self._split(split), self.feature_name, self.neighbours,
                                               self.background, self.cache_size, self.context,
                                               context_feature=self._context_arg())
        return self._datasets[key]

    def audio_dataset(self, split: str) -> AudioFrameDataset:
        """:class:`AudioFrameDataset` of "train", "val" or "test" (built once)."""
        clips = self._require_setup()
        key = f"audio/{split}"
        if key not in self._datasets:
            self._datasets[key] = AudioFrameDataset(clips, self._split(split), self.feature_name,
                                                    self.segment_seconds, self.context,
                                                    context_feature=self._context_arg())
        return self._datasets[key]

    def dataset(self, split: str) -> Dataset:
        """The dataset of ``split`` for the current :attr:`stage`."""
        return self.audio_dataset(split) if self.is_audio_stage else self.frame_dataset(split)

    @property
    def predict_dataset(self) -> PredictDataset:
        """:class:`PredictDataset` of ``predict_audio`` (or the first val clip's audio) with the camera track
        ``predict_cameras`` (over white) or that of the first val clip (over its background)."""
        if self._predict is None:
            common = dict(emotion=self.predict_emotion, intensity=self.predict_intensity, neighbours=self.neighbours,
                          context=self.context, blink=self.predict_blink, segment_seconds=self.segment_seconds,
                          blink_seed=self.seed)
            if self.predict_expression is not None:
                common["expression"] = read_expression_track(self.predict_expression)
            if self.predict_cameras is not None:
                clip, bg = Path(self.predict_cameras), "white"
            else:
                clips = self._require_setup()
                val = self.split_index["val"]
                clip = clips[int(val[0, 0]) if len(val) else 0]
                bg = "bc" if self.background == "bc+torso" else self.background
            common.update(cameras=clip, background=bg)
            if self.predict_audio is not None:
                ex = self.extractor()
                feats = ex if ex is not None else self.feature
                ctx = None
                if self.context_feature is not None:
                    cex = self.context_extractor()
                    ctx = cex if cex is not None else self.context_feature
                self._predict = PredictDataset(self.predict_audio, feats, context_features=ctx, **common)
            else:
                feats = read_feature_file(clip.features[self.feature_name], clip.num_frames, name=self.feature_name,
                                          warn=False)
                ctx = None
                if self.context_feature is not None:
                    name = self.context_feature_name
                    ctx = read_feature_file(clip.features[name], clip.num_frames, name=name, warn=False)
                self._predict = PredictDataset(clip.wav_path, feats, context_features=ctx, **common)
        return self._predict

    def curriculum_sampler(self) -> Optional[torch.utils.data.Sampler]:
        """The configured curriculum sampler over the train frames, or None."""
        if self.sampler is None:
            return None
        clips = self._require_setup()
        idx = self.split_index["train"]
        scores = np.zeros(len(idx))
        for ci in np.unique(idx[:, 0]):
            rows = np.nonzero(idx[:, 0] == ci)[0]
            pos = idx[rows, 1]
            c = clips[int(ci)]
            if self.sampler == "mouth":
                s = mouth_openness(c, pos, self.jaw_column)
                # normalise per clip: different clips may use different measures / scales
                lo, hi = float(s.min()), float(s.max())
                scores[rows] = (s - lo) / (hi - lo) if hi > lo else 0.0
            else:
                scores[rows] = c.blink()[c.img_ids[pos]]
        kw = dict(power=self.sampler_power, uniform_mix=self.sampler_uniform_mix, seed=self.seed)
        return MouthOpenCurriculumSampler(scores, **kw) if self.sampler == "mouth" else BlinkCurriculumSampler(scores,
                                                                                                              **kw)

    # ------------------------------------------------------------------ loaders
    def _loader(self, ds: Dataset, batch_size: int, shuffle: bool = False, sampler=None) -> DataLoader:
        kw: dict[str, Any] = dict(batch_size=batch_size, collate_fn=collate_batches, num_workers=self.num_workers,
                                  pin_memory=self.pin_memory, persistent_workers=self.num_workers > 0)
        if sampler is not None:
            kw["sampler"] = sampler
        elif shuffle:
            kw["shuffle"] = True
            kw["generator"] = torch.Generator().manual_seed(self.seed)
        return DataLoader(ds, **kw)

    def train_dataloader(self) -> DataLoader:
        if self.is_audio_stage:
            return self._loader(self.audio_dataset("train"), self.audio_batch_size, shuffle=True)
        return self._loader(self.frame_dataset("train"), self.batch_size, shuffle=True,
                            sampler=self.curriculum_sampler())

    def val_dataloader(self) -> DataLoader:
        bs = self.audio_batch_size if self.is_audio_stage else self.batch_size
        return self._loader(self.dataset("val"), bs)

    def test_dataloader(self) -> DataLoader:
        bs = self.audio_batch_size if self.is_audio_stage else self.batch_size
        return self._loader(self.dataset("test"), bs)

    def predict_dataloader(self) -> DataLoader:
        return self._loader(self.predict_dataset, self.batch_size)


class EmotionalTalkingHeadDataModule(TalkingHeadDataModule):
    """DataModule of an emotional dataset (DESIGN §5.2): one subject, many clips with ``emotion.json``.

    Splits are by clip, never by frame (:func:`~ua3dtalk.data.splits.split_emotional_clips`): every
    frame of a clip is in the same split, so no test frame's neighbours are trained on. Four disjoint
    roles (DESIGN §5.5): ``evaluator`` clips (reserved for the metric evaluators; never loaded by any
    loader here), ``train``, ``val`` (validation and model selection) and ``test`` (``test_fraction`` of
    each emotion's clips, plus held-out emotions / intensities). With ``test_fraction = 0`` and nothing held
    out, test = val (and a warning says so). Emotion labels come from each clip's ``emotion.json``
    (``FrameBatch.emotion`` / ``AudioBatch.emotion``). :attr:`split_clips` maps each role to its clips.

    Args: as :class:`TalkingHeadDataModule`, with an :class:`~ua3dtalk.data.config.EmotionalDataConfig`
    (its options and the clip split: ``val_fraction``, ``test_fraction``, ``evaluator_fraction``,
    ``holdout_emotions``, ``holdout_intensities``, ``split_seed``).
    """

    config_class = EmotionalDataConfig

    def __init__(self, root: str, stage: str = "face", config: Optional[EmotionalDataConfig] = None,
                 **options: Any):
        super().__init__(root, stage, config, **options)
        cfg = self.config
        self.val_fraction = float(cfg.val_fraction)
        self.test_fraction = float(cfg.test_fraction)
        self.evaluator_fraction = float(cfg.evaluator_fraction)
        self.holdout_emotions = tuple(cfg.holdout_emotions)
        self.holdout_intensities = tuple(int(k) for k in cfg.holdout_intensities)
        self.split_seed = int(cfg.split_seed)
        self.split_clips: dict[str, list[ClipInfo]] = {}

    def _load(self) -> list[ClipInfo]:
        return list(load_emotional(self.root, index=self.index).clips)

    def _make_splits(self, clips: list[ClipInfo]) -> dict[str, np.ndarray]:
        s = split_emotional_clips(clips, self.val_fraction, self.holdout_emotions, self.holdout_intensities,
                                  self.split_seed, self.test_fraction, self.evaluator_fraction)
        if self.holdout_emotions or self.holdout_intensities or self.test_fraction > 0:
            if not s["test"]:
                warnings.warn(f"the test split is empty (test_fraction={self.test_fraction}, holdout_emotions="
                              f"{self.holdout_emotions}, holdout_intensities={self.holdout_intensities})",
                              DatasetWarning, stacklevel=3)
        else:
            warnings.warn("test = val: no test_fraction and nothing held out, so the test metrics come from the "
                          "validation clips (set data.test_fraction for a real test split)", DatasetWarning,
                          stacklevel=3)
            s["test"] = s["val"]
        if not s["val"]:
            warnings.warn("the validation split is empty (every emotion has a single clip or val_fraction=0)",
                          DatasetWarning, stacklevel=3)
        self.split_clips = {k: [clips[i] for i in v] for k, v in s.items()}
        return {k: all_positions(clips, None, v) for k, v in s.items() if k != "evaluator"}
