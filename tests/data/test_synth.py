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
from ua3dtalk.data.formats import PALETTE
from ua3dtalk.data.loading import load_emotional

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


# ------------------------------------------------------------------------------------------------------
# Expressions (FACS prototypes), dynamics, independence of pose and articulation, neutral twin
# ------------------------------------------------------------------------------------------------------

def _apex_displacement(head, emotion: str, intensity: int, size: int = 128, base=None) -> float:
    """Mean landmark displacement (px at ``size``²) of the emotion's apex against the same face without
    it, through the generator's own projection (frontal pose)."""
    from ua3dtalk.data.synth.camera import head_viewmat, intrinsics
    from ua3dtalk.data.synth.generate import project_landmarks
    from ua3dtalk.data.synth.head import NEUTRAL_EXPR
    from ua3dtalk.data.synth.speech import emotion_prototype

    base = NEUTRAL_EXPR if base is None else base
    K, vm = intrinsics(size), head_viewmat()
    a = project_landmarks(head, base + emotion_prototype(emotion, intensity), vm, K)
    b = project_landmarks(head, base, vm, K)
    return float(np.linalg.norm(a - b, axis=1).mean())


def test_emotions_move_the_landmarks_by_2px_at_128():
    """Intensity 3 at the apex moves the 68 landmarks by ≥ 2 px on average at 128² (mean over the 7
    non-neutral emotions, for several identities); intensities 1 and 2 proportionally less."""
    from ua3dtalk.data.synth.head import ProceduralHead
    from ua3dtalk.data.synth.speech import EMOTIONS

    emotions = [e for e in EMOTIONS if e != "neutral"]
    for seed in (0, 1, 2):
        head = ProceduralHead(seed, 600)  # the landmarks do not depend on the Gaussian count
        d = {k: np.array([_apex_displacement(head, e, k) for e in emotions]) for k in (1, 2, 3)}
        print(f"identity {seed}: intensity 3 " + ", ".join(f"{e} {v:.2f}" for e, v in zip(emotions, d[3]))
              + f"; mean {d[3].mean():.2f} px (intensity 1 {d[1].mean():.2f}, 2 {d[2].mean():.2f})")
        assert d[3].mean() >= 2.0
        assert (d[3] > 0.4).all()  # every emotion visibly moves the face
        # proportional up to the lips parting as soon as the jaw opens (a 2 mm step at small openings)
        assert np.all((d[1] / d[3] > 0.3) & (d[1] / d[3] < 0.45)) and abs(d[1].mean() / d[3].mean() - 1 / 3) < 0.05
        assert np.all((d[2] / d[3] > 0.63) & (d[2] / d[3] < 0.75)) and abs(d[2].mean() / d[3].mean() - 2 / 3) < 0.05
        assert _apex_displacement(head, "neutral", 3) == 0.0


def test_emotion_displacement_in_clips_with_pose_and_speech():
    """The same figure against the clip's own neutral twin (``expr - expr_emotion``: same pose, speech and
    blinks) at the apex frames of generated tracks (no rendering): still ≥ 2 px on average at 128²."""
    from ua3dtalk.data.synth.camera import head_viewmat, intrinsics
    from ua3dtalk.data.synth.generate import project_landmarks
    from ua3dtalk.data.synth.head import ProceduralHead
    from ua3dtalk.data.synth.speech import EMOTIONS, expression_track, head_pose_track, synth_speech

    K, head = intrinsics(128), ProceduralHead(0, 600)
    per = {}
    for e in EMOTIONS[1:]:
        d = []
        for s in range(6):
            r_speech, r_expr, r_pose = (np.random.default_rng(100 * s + k) for k in range(3))
            expr, emo = expression_track(synth_speech(3.0, r_speech, emotion=e, intensity=3), 75, r_expr, e, 3,
                                         parts=True)
            pose = head_pose_track(75, r_pose).astype(np.float32)
            w = np.abs(emo).sum(1)
            for i in np.nonzero(w >= 0.999 * w.max())[0]:
                vm = head_viewmat(*pose[i, :3], shift=pose[i, 3:])
                a, b = (project_landmarks(head, x, vm, K) for x in (expr[i], expr[i] - emo[i]))
                d.append(np.linalg.norm(a - b, axis=1).mean())
        per[e] = float(np.mean(d))
    print("apex displacement in clips (px at 128²):", {e: round(v, 2) for e, v in per.items()},
          f"mean {np.mean(list(per.values())):.2f}")
    assert np.mean(list(per.values())) >= 2.0


def test_emotion_has_onset_apex_and_partial_release():
    from ua3dtalk.data.synth.speech import FPS, emotion_envelope, emotion_prototype, expression_track, synth_speech

    onsets = set()
    for s in range(8):
        env = emotion_envelope(75, np.random.default_rng(s))
        apex = int(np.argmax(env >= 0.999))
        assert env[0] == 0.0 and env.max() == pytest.approx(1.0) and env.min() >= 0.0
        assert 0.3 <= apex / FPS <= 1.2  # a ramp of 0.3–0.8 s after an onset within 0.3 s
        assert np.all(np.diff(env[:apex + 1]) >= 0)  # rises monotonically to the apex
        assert 0.3 < env[-1] < 0.75  # partial release at the end
        onsets.add(apex)
    assert len(onsets) > 3  # timings differ between clips
    # in a clip: the emotion part of the expression follows the envelope times the prototype
    rng = np.random.default_rng(5)
    utt = synth_speech(3.0, rng, emotion="happy", intensity=3)
    expr, emo = expression_track(utt, 75, rng, "happy", 3, parts=True)
    w = emo @ emotion_prototype("happy", 3) / np.sum(emotion_prototype("happy", 3) ** 2)
    assert abs(w[0]) < 1e-6 and w.max() > 0.95 and np.argmax(w > 0.95) > 5


def test_pose_blinks_and_onsets_do_not_depend_on_the_emotion(tmp_path):
    """write_clip with the same generator state: the same head pose (and camera track), blinks and idle
    motion for every emotion; only the expression's emotion part (and the audio prosody) differ."""
    from dataclasses import replace

    from ua3dtalk.data.synth.generate import PRESETS, write_clip
    from ua3dtalk.data.synth.head import EXPR, ProceduralHead

    p = replace(PRESETS["tiny"], resolution=24, gaussians=600)
    head = ProceduralHead(0, p.gaussians)
    out = {}
    with single_thread():
        for e in ("neutral", "sad", "surprised", "angry"):
            out[e] = write_clip(tmp_path / e, head, p, 1.2, np.random.default_rng(7), 150.0, emotion=e, intensity=3,
                                backend="cpu", progress=False)
    pose = {e: np.load(d / "pose.npy") for e, d in out.items()}
    for e in out:
        np.testing.assert_array_equal(pose[e], pose["neutral"])
        assert (out[e] / "transforms_train.json").read_text() == (out["neutral"] / "transforms_train.json").read_text()
        neutral = np.load(out[e] / "expr.npy") - np.load(out[e] / "expr_emotion.npy")
        eye = EXPR["eye_open"]
        np.testing.assert_array_equal(neutral[:, eye], np.load(out["neutral"] / "expr.npy")[:, eye])  # blinks
    assert not np.load(out["neutral"] / "expr_emotion.npy").any()
    assert np.abs(np.load(out["surprised"] / "expr_emotion.npy")).max() > 0.5


def test_head_pose_track_has_no_emotion_argument():
    import inspect

    from ua3dtalk.data.synth.speech import head_pose_track

    assert list(inspect.signature(head_pose_track).parameters) == ["n_frames", "rng"]


def test_articulation_amplitude_does_not_depend_on_the_emotion():
    """The mouth articulation (jaw_open, lip rounding/spreading) carries no emotion: for one utterance the
    articulation part of the expression is identical for every emotion, and the utterances of one
    generator state have the same syllables and per-vowel articulation peaks whatever the emotion's
    energy and tempo (only the waveform's prosody and timing change)."""
    from ua3dtalk.data.synth.head import EXPR
    from ua3dtalk.data.synth.speech import EMOTIONS, articulation_track, expression_track, synth_speech

    cols = [EXPR[k] for k in ("jaw_open", "lip_round", "lip_spread")]
    utt = synth_speech(3.0, np.random.default_rng(1))
    ref = None
    for e in EMOTIONS:
        for k in (1, 3):
            expr, emo = expression_track(utt, 75, np.random.default_rng(2), e, k, parts=True)
            art = (expr - emo)[:, cols]
            if ref is None:
                ref = art
            np.testing.assert_allclose(art, ref, atol=1e-6, err_msg=f"{e} {k}")
    top = {}
    for e in EMOTIONS:
        peaks, q = [], []
        for s in range(6):
            u = synth_speech(3.0, np.random.default_rng(100 + s), emotion=e, intensity=3)
            jaw = articulation_track(u, 75)[:, EXPR["jaw_open"]]
            t = (np.arange(75) + 0.5) / 25
            for v in (v for v in u.vowels if v.start < 2.9):  # vowels not cut by the end of the clip
                win = (t > v.start - 0.05) & (t < max(v.end, v.start + 0.075) + 0.05)
                # every vowel reaches its peak opening, whatever the tempo
                assert jaw[win].max() >= v.openness * (0.3 + 0.7 * v.openness) * v.stress - 1e-9
            peaks.append([(v.openness, v.rounding, v.spreading, v.stress) for v in u.vowels[:4]])
            q.append(np.sort(jaw)[-10:].mean())
        top[e] = float(np.mean(q))
        if e == "neutral":
            ref_peaks = peaks
        assert peaks == ref_peaks, e  # the same syllables and stresses for every emotion
    print("mean of the 10 widest jaw openings per clip:", {e: round(v, 3) for e, v in top.items()})
    for e, v in top.items():
        assert abs(v / top["neutral"] - 1) < 0.15, e  # old generator: angry ×1.9, sad ×0.55


def _lms(d: Path, n: int) -> np.ndarray:
    return np.stack([np.loadtxt(d / "ori_imgs" / f"{i}.lms") for i in range(n)])


def test_neutral_twin(tmp_path):
    """render_neutral_twin: the clip re-rendered without its emotion — identical to the clip for a neutral
    clip (up to the JPEG encoding of the files), different where the expression is otherwise."""
    from ua3dtalk.data.synth.generate import PRESETS, _jpg, generate_emotional, render_clip, render_neutral_twin

    with single_thread():
        subject = generate_emotional(tmp_path, "tiny", seed=4, resolution=48, backend="cpu", progress=False,
                                     emotions=("neutral", "surprised"), intensities=(3,))
    neutral, surprised = subject / "neutral" / "level_3" / "001", subject / "surprised" / "level_3" / "001"
    n = len(np.load(neutral / "expr.npy"))
    frames, lms = render_neutral_twin(neutral)
    assert frames.dtype == np.uint8 and frames.shape == (n, 48, 48, 3)
    assert lms.dtype == np.float32 and lms.shape == (n, 68, 2)
    own, own_lms = render_clip(neutral)
    np.testing.assert_array_equal(frames, own)
    np.testing.assert_array_equal(lms, own_lms)
    np.testing.assert_allclose(lms, _lms(neutral, n), atol=1e-3)  # the .lms files (4 decimals)
    for i in range(n):  # the JPEGs on disk are these frames, encoded
        assert _jpg(frames[i], PRESETS["tiny"].quality) == (neutral / "gt_imgs" / f"{i}.jpg").read_bytes()
    # deterministic
    again, again_lms = render_neutral_twin(neutral)
    np.testing.assert_array_equal(again, frames)
    np.testing.assert_array_equal(again_lms, lms)

    # an emotional clip: the twin keeps pose, camera, background, speech and blinks, not the expression
    twin, twin_lms = render_neutral_twin(surprised)
    clip, clip_lms = render_clip(surprised)
    np.testing.assert_allclose(clip_lms, _lms(surprised, n), atol=1e-3)
    emo = np.load(surprised / "expr_emotion.npy")
    apex = np.abs(emo).sum(1) > 0.9 * np.abs(emo).sum(1).max()
    d = np.linalg.norm(clip_lms - twin_lms, axis=-1)  # [N,68]
    assert d[apex][:, 17:27].mean() > 1.0 and d[apex][:, 48:68].mean() > 1.0  # brows, mouth (48² px)
    assert d[:, 27:31].max() < 1e-4  # the nose bridge does not move in surprise
    assert d[0].max() < 1e-4  # the emotion starts from neutral
    diff = np.abs(clip.astype(int) - twin).max(-1)[apex]  # [A,H,W]
    lo = np.floor(np.minimum(clip_lms, twin_lms)[apex].min((0, 1))).astype(int) - 3
    hi = np.ceil(np.maximum(clip_lms, twin_lms)[apex].max((0, 1))).astype(int) + 3
    outside = np.ones(diff.shape[1:], bool)
    outside[max(lo[1], 0):hi[1], max(lo[0], 0):hi[0]] = False
    # changes on the face (forehead-line shading and the stretched chin reach a little beyond the landmarks)
    assert diff[:, outside].max() <= 4 and diff.max() > 60
    with pytest.raises(FileNotFoundError):
        (surprised / "expr_emotion.npy").unlink()
        render_neutral_twin(surprised)


def test_clips_per_level_defaults():
    import inspect

    from ua3dtalk.data.synth.generate import PRESETS, generate_emotional

    assert PRESETS["small"].clips_per_level >= 3 and PRESETS["tiny"].clips_per_level == 1
    assert inspect.signature(generate_emotional).parameters["clips_per_level"].default is None


def test_worker_processes_give_the_same_dataset(tmp_path):
    from ua3dtalk.data.synth.generate import generate_emotional

    kw = dict(preset="tiny", seed=2, resolution=24, backend="cpu", progress=False, emotions=("happy", "sad"),
              intensities=(1,))
    with single_thread():
        one = generate_emotional(tmp_path / "one", workers=1, **kw)
    two = generate_emotional(tmp_path / "two", workers=2, **kw)
    files = sorted(p.relative_to(one) for p in one.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(two) for p in two.rglob("*") if p.is_file()) and len(files) > 100
    for f in files:
        assert (one / f).read_bytes() == (two / f).read_bytes(), f
    with pytest.raises(ValueError, match="workers"):
        generate_emotional(tmp_path / "bad", workers=0, **kw)
