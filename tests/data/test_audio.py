"""Audio: resampling, windows, the length rule, extractors (tiny wav2vec2, mel), cache, stored features."""
from __future__ import annotations

import json
import os
import warnings

import numpy as np
import pytest
import soundfile as sf

from dataset_builders import make_emotional, make_regular
from ua3dtalk.data.audio import (
    AudioFeatures,
    LengthMismatchWarning,
    extract_features,
    features_for_clip,
    fit_length,
    load_wav,
    read_aud_ds,
    read_aud_hu,
    read_feature_file,
    window_features,
)
from ua3dtalk.data.extractors import MelExtractor, MissingModelError, Wav2Vec2Extractor
from ua3dtalk.data.formats import DatasetError
from ua3dtalk.data.loading import load_clip


def peak_hz(x, sr):
    spec = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return np.fft.rfftfreq(len(x), 1 / sr)[int(spec.argmax())]


def test_resample_44k_stereo_to_16k_mono_keeps_the_frequency(tmp_path):
    sr, secs, f = 44100, 1.0, 1234.0
    t = np.arange(int(sr * secs)) / sr
    left = 0.5 * np.sin(2 * np.pi * f * t)
    right = 0.5 * np.sin(2 * np.pi * f * t) + 0.3 * np.sin(2 * np.pi * 11000.0 * t)  # above the new Nyquist
    sf.write(tmp_path / "a.wav", np.stack([left, right], 1).astype(np.float32), sr)
    y = load_wav(tmp_path / "a.wav")
    assert y.dtype == np.float32 and y.ndim == 1
    assert len(y) == int(np.ceil(len(t) * 160 / 441))  # 44.1k → 16k is ×160/441
    assert abs(peak_hz(y, 16000) - f) <= 1.0
    # channels averaged: the tone keeps amplitude 0.5; the 11 kHz tone (0.15 after averaging) is filtered,
    # not aliased to 16000 - 11000 = 5 kHz
    spec = np.abs(np.fft.rfft(y[1000:-1000] * np.hanning(len(y) - 2000)))
    freqs = np.fft.rfftfreq(len(y) - 2000, 1 / 16000)
    assert spec[np.abs(freqs - 5000) < 20].max() < 1e-3 * spec.max()
    assert np.abs(y[2000:-2000]).max() == pytest.approx(0.5, abs=0.02)


def test_window_indices():
    seq = (np.arange(21, dtype=np.float32) + 1)[:, None] * np.array([[1.0, -1.0]], np.float32)  # value = t + 1
    w = window_features(seq)
    assert w.shape == (11, 16, 2)  # ceil(21 / 2) frames
    for i in range(11):
        idx = np.arange(2 * i - 8, 2 * i + 8)
        want = np.where((idx >= 0) & (idx < 21), idx + 1, 0)
        np.testing.assert_array_equal(w[i, :, 0], want)
        np.testing.assert_array_equal(w[i, :, 1], -want)
    assert window_features(seq, num_frames=3).shape == (3, 16, 2)
    f = AudioFeatures(seq)
    np.testing.assert_array_equal(f[4], w[4])
    nb = f.neighbours(1, 8)  # frames -3..4
    assert nb.shape == (8, 16, 2)
    assert not nb[:3].any()
    np.testing.assert_array_equal(nb[3:], w[0:5])
    with pytest.raises(IndexError):
        f[11]


def test_length_rule_warns_and_pads_or_trims():
    seq = np.ones((20, 3), np.float32)  # 10 frames of audio
    with pytest.warns(LengthMismatchWarning, match="audio covers 10 frames, the clip has 13"):
        f = AudioFeatures(seq, num_frames=13)
    assert len(f) == 13 and f.to_array().shape == (13, 16, 3)
    w12 = f[12]  # 50 Hz rows 16..31: rows 16..19 exist, the rest is zero padding (never a repeat)
    assert w12[:4].all() and not w12[4:].any()
    with pytest.warns(LengthMismatchWarning, match="extra audio is dropped"):
        assert len(AudioFeatures(seq, num_frames=7)) == 7
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        AudioFeatures(seq, num_frames=10)  # exact: silent
    win = np.arange(5 * 16 * 2, dtype=np.float32).reshape(5, 16, 2) + 1
    with pytest.warns(LengthMismatchWarning, match="5 rows for 7 frames"):
        g = AudioFeatures(win, num_frames=7, layout="windows")
    np.testing.assert_array_equal(g.to_array()[:5], win)
    assert not g.to_array()[5:].any()
    with pytest.warns(LengthMismatchWarning, match="trimmed"):
        assert fit_length(win, 3).shape == (3, 16, 2)


def test_stored_feature_readers(tmp_path):
    ds = np.random.default_rng(0).normal(size=(9, 16, 29)).astype(np.float32)
    np.save(tmp_path / "aud_ds.npy", ds)
    np.testing.assert_array_equal(read_aud_ds(tmp_path / "aud_ds.npy"), ds)
    f = read_feature_file(tmp_path / "aud_ds.npy")
    assert (f.name, len(f), f.dim, f.layout) == ("ds", 9, 29, "windows")
    np.testing.assert_array_equal(f[3], ds[3])
    np.save(tmp_path / "bad.npy", np.zeros((9, 16, 30), np.float32))
    with pytest.raises(DatasetError, match=r"bad.npy: DeepSpeech features must have shape \[N,16,29\]"):
        read_aud_ds(tmp_path / "bad.npy")
    np.save(tmp_path / "nan.npy", np.full((2, 16, 29), np.nan, np.float32))
    with pytest.raises(DatasetError, match="nan.npy: contains NaN"):
        read_feature_file(tmp_path / "nan.npy")
    # HuBERT pairs [N,2,C]: row i = 50 Hz features 2i, 2i+1 → the centre of frame i's window
    hu = np.random.default_rng(1).normal(size=(6, 2, 8)).astype(np.float32)
    np.save(tmp_path / "aud_hu.npy", hu)
    assert read_aud_hu(tmp_path / "aud_hu.npy").shape == (6, 2, 8)
    h = read_feature_file(tmp_path / "aud_hu.npy")
    assert len(h) == 6
    for i in range(6):
        np.testing.assert_array_equal(h[i][8:10], hu[i])
    np.testing.assert_array_equal(h[1][6:8], hu[0])


def test_mel_is_deterministic_and_puts_a_tone_in_the_right_band():
    sr = 16000
    t = np.arange(int(0.5 * sr)) / sr
    x = (0.5 * np.sin(2 * np.pi * 1000 * t)).astype(np.float32)
    m = MelExtractor()
    a, b = m(x), m(x.copy())
    assert a.shape == (25, 80) and a.dtype == np.float32
    np.testing.assert_array_equal(a, b)
    from ua3dtalk.data.extractors import mel_filterbank

    fb = mel_filterbank()
    centre_band = int(np.argmax(fb[:, int(round(1000 / (sr / 2) * 512))]))
    assert abs(int(np.argmax(a[12])) - centre_band) <= 1
    assert a[12].max() - np.median(a[12]) > 10  # log scale: far above the other bands


@pytest.fixture
def tone():
    t = np.arange(int(1.3 * 16000)) / 16000
    return (0.3 * np.sin(2 * np.pi * 300 * t) + 0.05 * np.random.default_rng(0).normal(size=t.size)).astype(np.float32)


def test_tiny_wav2vec2_loaded_by_path(tiny_w2v, tone):
    ex = Wav2Vec2Extractor(tiny_w2v)  # logits
    y = ex(tone)
    assert y.shape == (int(np.ceil(len(tone) / 320)), 12) and np.isfinite(y).all()
    assert ex.name == "w2v_tiny-w2v_logits"
    h = Wav2Vec2Extractor(tiny_w2v, layer=-1)
    assert h.name == "w2v_tiny-w2v_h2"
    assert h(tone).shape == (y.shape[0], 32)
    assert Wav2Vec2Extractor(tiny_w2v, layer="1")(tone).shape == (y.shape[0], 32)
    with pytest.raises(ValueError, match="layer 5 out of range"):
        Wav2Vec2Extractor(tiny_w2v, layer=5)


def test_wav2vec2_chunks_are_stitched_in_place(tiny_w2v, tone):
    """With context covering the whole clip every chunk sees the full input: result == one pass."""
    whole = Wav2Vec2Extractor(tiny_w2v, layer=2, chunk_seconds=100)(tone)
    chunked = Wav2Vec2Extractor(tiny_w2v, layer=2, chunk_seconds=0.3, context_seconds=5.0)(tone)
    np.testing.assert_allclose(chunked, whole, rtol=1e-4, atol=1e-5)
    # short context: still one row per 20 ms, finite, close-ish away from chunk borders
    short = Wav2Vec2Extractor(tiny_w2v, layer=2, chunk_seconds=0.5, context_seconds=0.2)(tone)
    assert short.shape == whole.shape and np.isfinite(short).all()


def test_missing_model_errors_name_it_and_say_how(tmp_path, tiny_w2v):
    missing = tmp_path / "no-such-model"
    with pytest.raises(MissingModelError) as e:
        Wav2Vec2Extractor(missing)
    msg = str(e.value)
    assert str(missing) in msg and "save_pretrained" in msg and "--extractor-model PATH" in msg
    with pytest.raises(MissingModelError) as e:
        Wav2Vec2Extractor("nonexistent-org/nonexistent-w2v")
    msg = str(e.value)
    assert "'nonexistent-org/nonexistent-w2v'" in msg and "Hugging Face cache" in msg
    assert "huggingface-cli download nonexistent-org/nonexistent-w2v" in msg and "HF_HOME" in msg
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(MissingModelError, match="no config.json"):
        Wav2Vec2Extractor(empty)


def test_logits_need_a_ctc_head(tmp_path, tiny_w2v):
    from transformers import Wav2Vec2Model

    base = tmp_path / "base-only"
    Wav2Vec2Model.from_pretrained(str(tiny_w2v), local_files_only=True).save_pretrained(str(base))
    with pytest.raises(ValueError, match="no trained CTC head"):
        Wav2Vec2Extractor(base, layer="logits")
    assert Wav2Vec2Extractor(base, layer=1).dim == 32


class Counting:
    """An extractor wrapper that counts calls (to prove the cache is reused)."""

    def __init__(self, inner):
        self.inner, self.calls, self.name = inner, 0, inner.name

    def describe(self):
        return self.inner.describe()

    def __call__(self, wav, progress=None):
        self.calls += 1
        return self.inner(wav, progress)


def test_cache_written_atomically_and_reused(regular):
    ex = Counting(MelExtractor())
    p = extract_features(regular.root, ex)
    assert p == regular.root / "aud_mel.npy" and ex.calls == 1
    mtime = p.stat().st_mtime_ns
    assert not [n for n in os.listdir(regular.root) if n.endswith(".tmp")]
    rec = json.loads(p.with_suffix(".json").read_text())
    assert rec["extractor"]["type"] == "mel" and len(rec["wav"]["sha1"]) == 40
    seq = np.load(p)
    assert seq.shape == (int(np.ceil(11 * 640 / 320)), 80)
    assert extract_features(regular.root, ex) == p and ex.calls == 1 and p.stat().st_mtime_ns == mtime
    extract_features(regular.root, ex, force=True)
    assert ex.calls == 2
    sf.write(str(regular.root / "aud.wav"), np.zeros(11 * 640, np.float32), 16000)  # new audio → recompute
    extract_features(regular.root, ex)
    assert ex.calls == 3 and not np.load(p).max() > np.log(1e-6) + 1e-3
    clip = load_clip(regular.root)  # the cache is a regular feature file of the clip now
    assert "mel" in clip.features
    f = features_for_clip(clip, "mel")
    assert (len(f), f.dim) == (11, 80)


def test_features_for_clip_with_w2v_extractor(regular, tiny_w2v):
    clip = load_clip(regular.root)
    f = features_for_clip(clip, Wav2Vec2Extractor(tiny_w2v))
    assert (len(f), f.dim) == (11, 12) and (regular.root / "aud_w2v_tiny-w2v_logits.npy").exists()
    with pytest.raises(DatasetError, match="no audio feature file 'hu'.*available: ds"):
        features_for_clip(clip, "hu")


def test_features_cli_regular_and_emotional(tmp_path, tiny_w2v, capsys):
    from ua3dtalk.cli.features import main

    spec = make_regular(tmp_path / "s", n=5, ds=False)
    assert main([str(spec.root), "--extractor", "mel", "--no-progress"]) == 0
    assert (spec.root / "aud_mel.npy").exists()
    assert "aud_mel.npy (computed)" in capsys.readouterr().out
    assert main([str(spec.root), "--extractor", "mel", "--no-progress"]) == 0
    assert "cache up to date" in capsys.readouterr().out
    root = tmp_path / "e"
    dirs = make_emotional(root, clips=(("fear", 1), ("angry", 2)), n=4)
    assert main([str(root), "--extractor", "wav2vec2", "--model", str(tiny_w2v), "--layer", "1", "--no-progress"]) == 0
    for d in dirs:
        assert np.load(d / "aud_w2v_tiny-w2v_h1.npy").shape == (8, 32)
    assert main([str(root), "--extractor", "wav2vec2", "--model", str(tmp_path / "nope"), "--no-progress"]) == 1
    assert "nope" in capsys.readouterr().err
