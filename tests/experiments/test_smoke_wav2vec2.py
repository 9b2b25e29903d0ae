"""The shipped ``smoke`` experiment reads wav2vec2 features (a tiny random model saved on first use) in the
audio context — the emotion student's w2v branch and the prior's style encoder — and keeps log-mel windows;
``demo_synth`` is unchanged (log-mel everywhere)."""
from __future__ import annotations

from pathlib import Path

from ua3dtalk.cli.train import compose, datamodule_kwargs, model_config


def test_smoke_feeds_wav2vec2_features_to_the_emotion_branch(tmp_path, monkeypatch):
    monkeypatch.setenv("UA3DTALK_ROOT", str(tmp_path))
    cfg = compose(["experiment=smoke"])
    d = cfg.data
    assert (d.feature, d.context_feature, d.extractor_layer, d.synth.wav2vec2) == ("mel", "wav2vec2", -1, "tiny")
    assert Path(d.extractor_model) == tmp_path / "data" / "models" / "wav2vec2-tiny-random"
    kw = datamodule_kwargs(cfg)
    assert kw["context_feature"] == "wav2vec2" and kw["extractor_model"] == d.extractor_model
    assert "synth" not in kw
    # the w2v branch and the style encoder are sized by the context's channels, the windows by the feature's
    cfg.data_info.audio_channels, cfg.data_info.context_channels = 80, 64
    mc = model_config(cfg)
    assert mc["emotion"]["w2v_channels"] == 64
    assert (mc["prior"]["in_channels"], mc["prior"]["context_channels"]) == (80, 64)
    assert mc["deformation"]["audio_in_channels"] == 80
    tiny = compose(["experiment=smoke", "scale=tiny"])  # the tests' scale keeps it
    assert tiny.data.context_feature == "wav2vec2" and tiny.data.synth.wav2vec2 == "tiny"


def test_demo_synth_stays_on_log_mel():
    cfg = compose(["experiment=demo_synth"])
    assert cfg.data.feature == "mel" and cfg.data.get("context_feature") is None
    assert cfg.data.get("extractor_model") is None and cfg.data.synth.get("wav2vec2") is None
    mc = model_config(cfg)
    assert mc["emotion"]["w2v_channels"] == mc["prior"]["in_channels"] == mc["prior"]["context_channels"] == 80
