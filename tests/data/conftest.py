"""Fixtures of the data tests (builders in :mod:`dataset_builders`)."""
from __future__ import annotations

from pathlib import Path

import pytest

from dataset_builders import Spec, make_emotional, make_regular
from synth_helpers import SYNTH_EMOTIONS, single_thread


@pytest.fixture
def regular(tmp_path) -> Spec:
    return make_regular(tmp_path / "subj")


@pytest.fixture
def emotional(tmp_path) -> Path:
    root = tmp_path / "mead"
    make_emotional(root)
    return root




# --------------------------------------------------------------------------------------------------
# Synthetic datasets (ua3dtalk-synth, `tiny` preset), generated once per test session
# --------------------------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def synth_regular(tmp_path_factory) -> Path:
    """A `tiny` synthetic subject (75 frames of 64², seed 0) with cached log-mel features. Read-only:
    copy it before modifying anything."""
    from ua3dtalk.data.synth import generate_subject
    from ua3dtalk.data.synth.generate import cache_features

    with single_thread():
        subject = generate_subject(tmp_path_factory.mktemp("synth_regular"), "tiny", seed=0, backend="cpu",
                                   progress=False)
    cache_features(subject, ["mel"])
    return subject


@pytest.fixture(scope="session")
def synth_emotional(tmp_path_factory) -> Path:
    """A reduced `tiny` emotional subject: :data:`SYNTH_EMOTIONS` × intensities 1–3 (12 clips of 30
    frames of 64², seed 0) with cached log-mel features. Read-only."""
    from ua3dtalk.data.synth import generate_emotional
    from ua3dtalk.data.synth.generate import cache_features

    with single_thread():
        subject = generate_emotional(tmp_path_factory.mktemp("synth_emotional"), "tiny", seed=0, backend="cpu",
                                     progress=False, emotions=SYNTH_EMOTIONS, intensities=(1, 2, 3))
    cache_features(subject, ["mel"])
    return subject
