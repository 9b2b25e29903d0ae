"""Names shared across the project, defined once: the training stages and the emotion labels.

* :data:`STAGES` — the five training stages, in training order; :data:`AUDIO_STAGES` train on
  :class:`~ua3dtalk.data.batch.AudioBatch` loaders (no images), :data:`FRAME_STAGES` on
  :class:`~ua3dtalk.data.batch.FrameBatch` loaders; :data:`RENDER_STAGES` are the stages that render
  (the same three).
* :data:`EMOTIONS` — the 8 MEAD emotions; the label id of an emotion is its index here.
"""
from __future__ import annotations

STAGES: tuple[str, ...] = ("prior", "emotion", "mouth", "face", "fuse")
"""The training stages, in training order."""

AUDIO_STAGES: tuple[str, ...] = ("prior", "emotion")
"""Stages trained on audio-side batches (no image is decoded)."""

FRAME_STAGES: tuple[str, ...] = ("mouth", "face", "fuse")
"""Stages trained on frame batches (images, masks, cameras)."""

RENDER_STAGES: tuple[str, ...] = ("mouth", "face", "fuse")
"""Stages that render images (their metrics are image metrics)."""

EMOTIONS: tuple[str, ...] = ("neutral", "angry", "contempt", "disgusted", "fear", "happy", "sad", "surprised")
"""The 8 MEAD emotions; the label id of an emotion is its index here."""
