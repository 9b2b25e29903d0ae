"""The synthetic talking-head generator (DESIGN §6): determinism, identities, the audio–mouth link,
validity of the written datasets."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from PIL import Image

from synth_helpers import SYNTH_EMOTIONS, single_thread
from ua3dtalk.data.formats import PALETTE, load_emotional

MOUTH = np.array(PALETTE["mouth"], np.uint8)


def _gen(out: Path, seed: int) -> Path:
    from ua3dtalk.data.synth import generate_subject

    with single_thread():
        return generate_subject(out, "tiny", seed=seed, resolution=32, backend="cpu", progress=False)


def _images(d: Path, kind: str = "gt_imgs", suffix: str = ".jpg") -> np.ndarray:
    n = len(list((d / kind).glob(f"*{suffix}")))
    return np.stack([np.asarray(Image.open(d / kind / f"{i}{suffix}").convert("RGB")) for i in range(n)])


def rms_envelope(wav_path: Path, n_frames: int) -> np.ndarray:
    """RMS of the 16 kHz wav over each 40 ms frame (frame i = samples [640 i, 640 (i+1)))."""
    w, sr = sf.read(str(wav_path), dtype="float64")
    assert sr == 16000 and w.ndim == 1
    w = np.pad(w, (0, max(0, n_frames * 640 - len(w))))[: n_frames * 640].reshape(n_frames, 640)
    return np.sqrt((w ** 2).mean(1))


def mouth_area(d: Path, n_frames: int) -> np.ndarray:
    """Inside-mouth pixels of each parsing map on disk."""
    return np.array([(np.asarray(Image.open(d / "parsing" / f"{i}.png").convert("RGB")) == MOUTH).all(-1).sum()
                     for i in range(n_frames)], dtype=np.float64)


def _clips(synth_regular: Path, synth_emotional: Path) -> list[Path]:
    return [synth_regular] + sorted(p.parent for p in synth_emotional.rglob("emotion.json"))


def test_deterministic_for_a_seed_and_seeds_differ(tmp_path):
    a, b, c = _gen(tmp_path / "a", 0), _gen(tmp_path / "b", 0), _gen(tmp_path / "c", 1)
    for name in ("expr.npy", "aud.wav", "pose.npy", "au.csv", "transforms_train.json", "transforms_val.json"):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    for kind, suf in (("gt_imgs", ".jpg"), ("parsing", ".png"), ("torso_imgs", ".png")):
        np.testing.assert_array_equal(_images(a, kind, suf), _images(b, kind, suf), err_msg=kind)
    # another seed: other speech, other identity (face colour, background)
    assert (a / "aud.wav").read_bytes() != (c / "aud.wav").read_bytes()
    assert not np.allclose(np.load(a / "expr.npy")[:, 0], np.load(c / "expr.npy")[:, 0])
    wa, _ = sf.read(str(a / "aud.wav"))
    wc, _ = sf.read(str(c / "aud.wav"))
    n = min(len(wa), len(wc))
    assert abs(np.corrcoef(wa[:n], wc[:n])[0, 1]) < 0.5

    def part_colours(d):
        imgs, par = _images(d).astype(np.float64), _images(d, "parsing", ".png")
        return [imgs[(par == np.array(PALETTE[p], np.uint8)).all(-1)].mean(0) for p in ("face", "hair")]

    # skin or hair colour differs by > 20/255 in some channel, and the frames as a whole clearly differ
    assert max(np.abs(x - y).max() for x, y in zip(part_colours(a), part_colours(c))) > 20.0
    assert np.abs(_images(a).astype(np.float64) - _images(c)).mean() > 15.0
    bca = np.asarray(Image.open(a / "bc.jpg"), np.float64)
    bcc = np.asarray(Image.open(c / "bc.jpg"), np.float64)
    assert np.abs(bca - bcc).mean() > 8.0


def test_mouth_open_coefficient_follows_audio_envelope(synth_regular, synth_emotional):
    """expr jaw_open vs the wav's per-frame RMS: on the regular subject and on the pooled emotional clips."""
    names = json.loads((synth_regular / "synth.json").read_text())["expr_names"]
    jaw = names.index("jaw_open")
    e = np.load(synth_regular / "expr.npy")
    assert np.corrcoef(e[:, jaw], rms_envelope(synth_regular / "aud.wav", len(e)))[0, 1] > 0.5
    xs, ys = [], []
    for d in _clips(synth_regular, synth_emotional)[1:]:
        e = np.load(d / "expr.npy")
        xs.append(e[:, jaw])
        ys.append(rms_envelope(d / "aud.wav", len(e)))
    assert np.corrcoef(np.concatenate(xs), np.concatenate(ys))[0, 1] > 0.5


def test_mouth_area_follows_mouth_open_coefficient(synth_regular, synth_emotional):
    """The parsing maps on disk show the mouth the coefficients ask for."""
    for d in _clips(synth_regular, synth_emotional)[:4]:
        e = np.load(d / "expr.npy")
        assert np.corrcoef(mouth_area(d, len(e)), e[:, 0])[0, 1] > 0.5, d


def test_mouth_area_follows_audio_envelope(synth_regular):
    e = np.load(synth_regular / "expr.npy")
    area = mouth_area(synth_regular, len(e))
    assert np.corrcoef(area, rms_envelope(synth_regular / "aud.wav", len(e)))[0, 1] > 0.5


def test_validate_passes_on_generated_data(synth_regular, synth_emotional, capsys):
    from ua3dtalk.cli.validate import main

    assert main([str(synth_regular), "--no-progress"]) == 0
    assert main([str(synth_emotional), "--no-progress"]) == 0


def test_emotional_layout_and_labels(synth_emotional):
    data = load_emotional(synth_emotional)
    assert len(data) == len(SYNTH_EMOTIONS) * 3
    seen = set()
    for c in data:
        rel = c.root.relative_to(synth_emotional).parts  # <emotion>/level_<k>/<clip>
        assert c.emotion_name == rel[0] and rel[1] == f"level_{c.intensity}"
        assert json.loads((c.root / "emotion.json").read_text()) == {"emotion": rel[0], "intensity": c.intensity}
        seen.add((c.emotion_name, c.intensity))
    assert seen == {(e, k) for e in SYNTH_EMOTIONS for k in (1, 2, 3)}


def test_several_clips_per_level_are_different_utterances(tmp_path):
    import soundfile as sf

    from ua3dtalk.data.synth.generate import generate_emotional

    subject = generate_emotional(tmp_path, "tiny", seed=3, resolution=24, backend="cpu", progress=False,
                                 emotions=("happy",), intensities=(2,), clips_per_level=2)
    clips = sorted((subject / "happy" / "level_2").iterdir())
    assert [c.name for c in clips] == ["001", "002"]
    a, b = (sf.read(c / "aud.wav")[0] for c in clips)
    n = min(len(a), len(b))
    assert abs(float(np.corrcoef(a[:n], b[:n])[0, 1])) < 0.5  # not the same utterance
    for c in clips:
        assert json.loads((c / "emotion.json").read_text()) == {"emotion": "happy", "intensity": 2}
    # clip 001 is the clip of the one-clip layout (datasets generated before stay identical)
    one = generate_emotional(tmp_path / "one", "tiny", seed=3, resolution=24, backend="cpu", progress=False,
                             emotions=("happy",), intensities=(2,))
    assert np.array_equal(sf.read(one / "happy" / "level_2" / "001" / "aud.wav")[0], a)
    with pytest.raises(ValueError, match="clips_per_level"):
        generate_emotional(tmp_path / "bad", "tiny", emotions=("happy",), intensities=(2,), clips_per_level=0)
