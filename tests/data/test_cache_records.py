"""Caches that prove themselves (issue 18 item 3): a feature cache is used only when its record matches the
array (so its shape and dtype) and the clip's current ``aud.wav``; otherwise reading it fails naming the file,
and ``extract_features`` recomputes it."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from ua3dtalk.data.audio import extract_features, read_feature_file
from ua3dtalk.data.extractors import make_extractor
from ua3dtalk.data.formats import DatasetError


@pytest.fixture
def clip_dir(synth_emotional_small, tmp_path):
    src = next(p.parent for p in sorted(synth_emotional_small.rglob("aud.wav")))
    d = tmp_path / "clip"
    shutil.copytree(src, d)
    assert (d / "aud_mel.npy").is_file() and (d / "aud_mel.json").is_file()
    return d


def test_record_names_shape_dtype_and_a_good_cache_reads(clip_dir):
    out = extract_features(clip_dir, make_extractor("mel"), force=True)
    rec = json.loads(out.with_suffix(".json").read_text())
    assert rec["shape"] == list(np.load(out).shape) and rec["dtype"] == "float32" and rec["wav"]["sha1"]
    assert read_feature_file(out).dim == 80


def test_a_cut_cache_contradicting_its_record_is_refused_then_recomputed(clip_dir):
    npy = clip_dir / "aud_mel.npy"
    a = np.load(npy)
    np.save(npy, np.ascontiguousarray(a[:, :40]))  # 40 of 80 bins
    with pytest.raises(DatasetError, match=r"aud_mel\.npy.*not the one its record"):
        read_feature_file(npy)
    out = extract_features(clip_dir, make_extractor("mel"))
    assert np.load(out).shape == a.shape and read_feature_file(out).dim == 80


def test_a_replaced_wav_makes_the_cache_stale(clip_dir):
    import soundfile as sf

    wav = clip_dir / "aud.wav"
    x, sr = sf.read(wav)
    sf.write(wav, np.ascontiguousarray(x[::-1]), sr)  # same length, other audio
    with pytest.raises(DatasetError, match=r"stale: aud\.wav changed"):
        read_feature_file(clip_dir / "aud_mel.npy")
    before = np.load(clip_dir / "aud_mel.npy")
    out = extract_features(clip_dir, make_extractor("mel"))  # recomputed from the new audio
    assert not np.array_equal(np.load(out), before)
    read_feature_file(out)


def test_unreadable_record_names_the_file(clip_dir):
    (clip_dir / "aud_mel.json").write_text("{not json")
    with pytest.raises(DatasetError, match=r"aud_mel\.json.*not readable JSON"):
        read_feature_file(clip_dir / "aud_mel.npy")
