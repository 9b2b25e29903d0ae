"""Fixtures of the data tests (builders in :mod:`dataset_builders`)."""
from __future__ import annotations

from pathlib import Path

import pytest

from dataset_builders import Spec, make_emotional, make_regular


@pytest.fixture
def regular(tmp_path) -> Spec:
    return make_regular(tmp_path / "subj")


@pytest.fixture
def emotional(tmp_path) -> Path:
    root = tmp_path / "mead"
    make_emotional(root)
    return root


@pytest.fixture(scope="session")
def tiny_w2v(tmp_path_factory) -> Path:
    """A tiny random-initialised Wav2Vec2ForCTC saved with save_pretrained (the real loading code runs)."""
    import torch
    from transformers import Wav2Vec2Config, Wav2Vec2ForCTC

    torch.manual_seed(0)
    cfg = Wav2Vec2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=48,
                         conv_dim=(16,) * 7, vocab_size=12, num_conv_pos_embeddings=16,
                         num_conv_pos_embedding_groups=2)
    path = tmp_path_factory.mktemp("models") / "tiny-w2v"
    Wav2Vec2ForCTC(cfg).eval().save_pretrained(str(path))
    return path
