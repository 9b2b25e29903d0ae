"""Fixtures of the robustness tests (helpers in :mod:`robustness_helpers`).

Every dataset fixture is generated once per session by the synthetic generator (``tiny`` preset) and
is read-only: tests that corrupt a dataset work on a copy (:func:`regular` and friends).
"""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from robustness_helpers import single_thread, train_overrides


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny renders and models: one torch thread is much faster than contended intra-op threads."""
    with single_thread():
        yield


@pytest.fixture(scope="session")
def regular_src(tmp_path_factory) -> Path:
    """A `tiny` regular synthetic subject (75 frames of 64², seed 0) with cached log-mel features."""
    from ua3dtalk.data.synth import generate_subject
    from ua3dtalk.data.synth.generate import cache_features

    with single_thread():
        subject = generate_subject(tmp_path_factory.mktemp("robust_regular"), "tiny", seed=0, backend="cpu",
                                   progress=False)
    cache_features(subject, ["mel"])
    return subject


@pytest.fixture
def regular(regular_src, tmp_path) -> Path:
    """A private copy of :func:`regular_src` that a test may corrupt."""
    dst = tmp_path / "ds" / "synth0"
    shutil.copytree(regular_src, dst, symlinks=True)
    return dst


@pytest.fixture
def emotional(synth_emotional_small, tmp_path) -> Path:
    """A private copy of the session's reduced emotional subject (4 emotions × 3 intensities)."""
    dst = tmp_path / "emo" / "synth0"
    shutil.copytree(synth_emotional_small, dst, symlinks=True)
    return dst


@pytest.fixture(scope="session")
def trained_run(synth_emotional_small, tmp_path_factory) -> Path:
    """A run directory of ``ua3dtalk-train`` (in-process, emotion and face stages, 2 steps each): its
    ``checkpoints/face/last.ckpt`` is a real checkpoint that ``ua3dtalk-infer`` accepts."""
    from ua3dtalk.cli.train import compose, run

    run_dir = tmp_path_factory.mktemp("robust_run")
    cfg = compose(train_overrides(synth_emotional_small, run_dir, "stages=[emotion,face]", "stage_steps.face=2",
                                  "stage_steps.emotion=2"))
    with single_thread():
        run(cfg)
    torch.set_grad_enabled(True)
    return run_dir


@pytest.fixture(scope="session")
def trained_ckpt(trained_run) -> Path:
    return trained_run / "checkpoints" / "face" / "last.ckpt"


@pytest.fixture
def speech(tmp_path) -> Path:
    """0.4 s of 16 kHz mono noise-modulated tone (10 frames at 25 fps)."""
    import numpy as np
    import soundfile as sf

    t = np.arange(int(0.4 * 16000)) / 16000
    x = 0.3 * np.sin(2 * np.pi * 220 * t) * (0.5 + 0.5 * np.sin(2 * np.pi * 3 * t))
    p = tmp_path / "speech.wav"
    sf.write(str(p), x.astype(np.float32), 16000)
    return p


def pytest_collection_modifyitems(config, items):  # noqa: ARG001
    here = Path(__file__).parent
    for item in items:
        if Path(str(item.fspath)).parent == here and item.get_closest_marker("timeout") is None:
            item.add_marker(pytest.mark.timeout(600))
