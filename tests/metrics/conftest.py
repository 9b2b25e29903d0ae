"""Fixtures of the metrics tests: synthetic datasets generated once per session (read-only)."""
from __future__ import annotations

from pathlib import Path

import pytest

ALL_EMOTIONS = ("neutral", "angry", "contempt", "disgusted", "fear", "happy", "sad", "surprised")


from ua3dtalk.utils.threads import torch_threads as _single_thread  # noqa: E402 (one torch thread)


@pytest.fixture(scope="session")
def synth_emo8(tmp_path_factory) -> Path:
    """A `tiny` emotional subject (seed 0): all 8 emotions × intensities 1–3 = 24 clips of 30 frames of
    64² (≈ 20 s to generate). The subject directory (``…/synth0``); read-only."""
    from ua3dtalk.data.synth import generate_emotional

    with _single_thread():
        return generate_emotional(tmp_path_factory.mktemp("synth_emo8"), "tiny", seed=0, backend="cpu",
                                  progress=False, emotions=ALL_EMOTIONS, intensities=(1, 2, 3))


@pytest.fixture(scope="session")
def emo8_gt(synth_emo8):
    """:class:`~ua3dtalk.metrics.ground_truth.GroundTruth` of :func:`synth_emo8` (720 frames)."""
    from ua3dtalk.metrics.ground_truth import load_ground_truth

    return load_ground_truth(synth_emo8, progress=False)


EVAL_EPOCHS = 30


def _train(kind: str, gt, out_root):
    """Train one project evaluator on ``gt`` (held out: the intensity-2 clip of every emotion), save it and
    re-load it from disk (so the real loading code runs). ≈ 10–20 s on one thread."""
    from ua3dtalk.metrics import evaluator_training as tr
    from ua3dtalk.metrics import evaluators as ev

    fit, cls = {"expression": (tr.fit_expression_regressor, ev.ExpressionRegressor),
                "landmark": (tr.fit_landmark_regressor, ev.LandmarkRegressor),
                "emotion": (tr.fit_emotion_classifier, ev.EmotionClassifier)}[kind]
    # one thread (TrainConfig.num_threads) and every random draw from the seed: the same model whichever test asks
    model, report = fit(gt, train=tr.TrainConfig(epochs=EVAL_EPOCHS, progress=False, seed=0))
    path = model.save(out_root / kind)
    return cls.load(path), report


@pytest.fixture(scope="session")
def trained_expression(emo8_gt, tmp_path_factory):
    """(ExpressionRegressor, fit report) trained on :func:`synth_emo8`."""
    return _train("expression", emo8_gt, tmp_path_factory.mktemp("evaluators"))


@pytest.fixture(scope="session")
def trained_landmark(emo8_gt, tmp_path_factory):
    """(LandmarkRegressor, fit report) trained on :func:`synth_emo8`."""
    return _train("landmark", emo8_gt, tmp_path_factory.mktemp("evaluators"))


@pytest.fixture(scope="session")
def trained_emotion(emo8_gt, tmp_path_factory):
    """(EmotionClassifier, fit report) trained on :func:`synth_emo8`."""
    return _train("emotion", emo8_gt, tmp_path_factory.mktemp("evaluators"))
