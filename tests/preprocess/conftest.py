"""Fixtures of the preprocessing tests: a real face (scikit-image's astronaut photo) animated into a
short talking video with known motion, its preprocessed dataset, and a synthetic clip with exact
ground truth. All generated once per session, offline."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

pytest.importorskip("dlib", reason="the preprocessing extra is not installed (pip install -e '.[preprocess]')")
pytest.importorskip("skimage", reason="the preprocessing extra is not installed (pip install -e '.[preprocess]')")

ASTRO_FRAMES = 60
ASTRO_SIZE = 256


@pytest.fixture(scope="session")
def astro(tmp_path_factory):
    """(video path, AnimationTruth): 60 frames of 256² at 25 fps with a synthetic speech track."""
    from ua3dtalk.preprocess.animate import write_animated_video

    d = tmp_path_factory.mktemp("astro")
    video = d / "astronaut.mp4"
    truth = write_animated_video(video, ASTRO_FRAMES, ASTRO_SIZE)
    return video, truth


@pytest.fixture(scope="session")
def astro_out(astro, tmp_path_factory):
    """(dataset dir, report) of the whole pipeline on :func:`astro` (dlib backend, mel features)."""
    from ua3dtalk.preprocess import PreprocessConfig, preprocess_video

    out = tmp_path_factory.mktemp("astro_out") / "subject"
    cfg = PreprocessConfig(size=ASTRO_SIZE, backend="dlib", progress=False)
    report = preprocess_video(astro[0], out, cfg, log=lambda m: None)
    return out, report


@pytest.fixture(scope="session")
def synth_clip(tmp_path_factory) -> Path:
    """A `tiny` synthetic subject (75 frames of 64², exact landmarks and cameras), rendered on one thread."""
    import torch

    from ua3dtalk.data.synth import generate_subject

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return generate_subject(tmp_path_factory.mktemp("synth"), "tiny", seed=0, backend="cpu", progress=False)
    finally:
        torch.set_num_threads(n)


os.environ.setdefault("GLOG_minloglevel", "2")
