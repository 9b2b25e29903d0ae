"""Bad input: a clear message naming the file, a non-zero exit, completed steps kept, nothing
half-written that looks valid (ua3dtalk-preprocess, in process)."""
from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf

from preprocess_helpers import ffmpeg, noise_frames, tone, two_face_frames, write_frames_video
from ua3dtalk.cli.preprocess import main
from ua3dtalk.preprocess.animate import animate

FAST = ["--features", "", "--no-progress", "--min-frames", "20"]


@pytest.fixture(scope="module")
def short_astro(tmp_path_factory):
    """30 frames (1.2 s) of the animated astronaut, 256², with and without audio."""
    d = tmp_path_factory.mktemp("short")
    frames, truth = animate(30, 256)
    frames = list(frames)
    return {"frames": frames, "truth": truth, "with_audio": write_frames_video(d / "a.mp4", frames, audio=truth.audio),
            "no_audio": write_frames_video(d / "silent.mp4", frames), "dir": d}


def _run(capsys, *argv):
    rc = main([str(a) for a in argv])
    return rc, capsys.readouterr().err


def _not_a_dataset(out):
    from ua3dtalk.data.validate import errors, inspect_clip

    return bool(errors(inspect_clip(out)[1]))


def test_no_face(tmp_path, capsys):
    v = write_frames_video(tmp_path / "noise.mp4", noise_frames(40), audio=tone(1.6))
    out = tmp_path / "out"
    rc, err = _run(capsys, v, "--out", out, "--size", 128, *FAST)
    assert rc == 1 and "no face found in any of the 40 frames" in err and "(step landmarks)" in err
    assert "kept the outputs of the completed steps: decode" in err
    assert (out / "ori_imgs" / "39.jpg").is_file() and (out / "aud.wav").is_file()
    assert not (out / "transforms_train.json").exists() and _not_a_dataset(out)


def test_no_audio_track_then_separate_audio(short_astro, tmp_path, capsys):
    out = tmp_path / "out"
    rc, err = _run(capsys, short_astro["no_audio"], "--out", out, "--size", 256, *FAST)
    assert rc == 1 and "no audio track" in err and "--audio" in err and str(short_astro["no_audio"]) in err
    assert not (out / "ori_imgs").exists()  # failed before decoding anything
    wav = tmp_path / "speech.wav"
    sf.write(str(wav), tone(0.5, 44100), 44100)  # shorter and at another rate: resampled, padded
    rc, err = _run(capsys, short_astro["no_audio"], "--out", out, "--size", 256, "--audio", wav, "--steps", "decode",
                   *FAST)
    assert rc == 0, err
    info = sf.info(str(out / "aud.wav"))
    assert info.samplerate == 16000 and info.channels == 1 and info.frames == 30 * 640
    assert "padded" in err


@pytest.mark.parametrize("kind", ["garbage", "truncated", "empty", "missing"])
def test_corrupt_truncated_empty_missing(kind, short_astro, tmp_path, capsys):
    v = tmp_path / f"{kind}.mp4"
    if kind == "garbage":
        v.write_bytes(np.random.default_rng(0).integers(0, 256, 20000, dtype=np.uint8).tobytes())
    elif kind == "truncated":
        data = short_astro["with_audio"].read_bytes()
        v.write_bytes(data[: len(data) // 2])
    elif kind == "empty":
        v.write_bytes(b"")
    rc, err = _run(capsys, v, "--out", tmp_path / "out", "--size", 256, *FAST)
    assert rc == 1 and str(v) in err
    expect = {"garbage": "not a readable video", "truncated": "video", "empty": "empty file",
              "missing": "does not exist"}[kind]
    assert expect in err
    if kind == "truncated":
        assert "truncated" in err or "not a readable" in err
    assert not (tmp_path / "out" / "transforms_train.json").exists()


def test_very_short_clip(short_astro, tmp_path, capsys):
    audio = short_astro["truth"].audio[: 8 * 640]
    v = write_frames_video(tmp_path / "short.mp4", short_astro["frames"][:8], audio=audio)
    rc, err = _run(capsys, v, "--out", tmp_path / "out", "--size", 256, *FAST)
    assert rc == 1 and "too short" in err and "8 frames" in err


def test_non_ascii_paths(short_astro, tmp_path, capsys):
    d = tmp_path / "vidéos テスト"
    d.mkdir()
    v = d / "clip ü.mp4"
    v.write_bytes(short_astro["with_audio"].read_bytes())
    out = tmp_path / "sortie_ü" / "sujet"
    rc, err = _run(capsys, v, "--out", out, "--size", 256, *FAST)
    assert rc == 0, err
    assert "valid regular dataset, 30 frames" in err


def test_variable_frame_rate_is_resampled_to_25_fps(short_astro, tmp_path, capsys):
    """Frames with irregular timestamps (VFR, ≈ 18 fps on average) come out at a constant 25 fps
    whose count matches the duration and the audio."""
    src = short_astro["with_audio"]
    vfr = tmp_path / "vfr.mp4"
    # keep 2 of every 3 frames and stretch time by 1.5: irregular gaps, duration 1.2 s → 1.8 s
    ffmpeg("-i", str(src), "-vf", "select='not(eq(mod(n\\,3)\\,2))',setpts=1.5*PTS", "-af", "atempo=0.6667",
           "-fps_mode", "vfr", "-c:v", "libx264", "-pix_fmt", "yuv420p", "-c:a", "aac", str(vfr))
    out = tmp_path / "out"
    rc, err = _run(capsys, vfr, "--out", out, "--size", 256, "--steps", "decode", *FAST)
    assert rc == 0, err
    from ua3dtalk.preprocess.video import probe

    n = len(list((out / "ori_imgs").glob("*.jpg")))
    assert abs(n - probe(vfr).duration * 25) <= 2
    assert sf.info(str(out / "aud.wav")).frames == n * 640
    assert "resampled" in err


def test_several_faces_follow_the_largest(tmp_path, capsys):
    frames, truth = two_face_frames(30)
    v = write_frames_video(tmp_path / "two.mp4", frames, audio=truth.audio)
    out = tmp_path / "out"
    rc, err = _run(capsys, v, "--out", out, "--size", 512, "--steps", "decode,landmarks", *FAST)
    assert rc == 0, err
    assert "several faces" in err and "largest" in err
    from ua3dtalk.data.formats import read_landmarks

    lms = read_landmarks(out / "ori_imgs" / "10.lms")
    eyes = np.stack([lms[36:42].mean(0), lms[42:48].mean(0)]) - np.array([0, 128])
    assert np.linalg.norm(eyes - truth.eyes[10], axis=1).max() < 5.0


def test_usage_errors(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main([str(tmp_path / "x.mp4"), "--out", str(tmp_path / "o"), "--steps", "decode,bogus"])
    assert e.value.code == 2 and "unknown step" in capsys.readouterr().err


def _tree(root):
    import hashlib

    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_existing_dataset_is_refused_then_replaced_only_after_success(tmp_path, capsys):
    """Issue 18: preprocess pointed at a directory holding another dataset: refused without --force (nothing
    changed); with --force and a video that fails (no face), the old dataset is left exactly as it was."""
    out = tmp_path / "dataset"
    (out / "gt_imgs").mkdir(parents=True)
    for i in range(5):
        (out / "gt_imgs" / f"{i}.jpg").write_bytes(b"old frame %d" % i)
    (out / "transforms_train.json").write_text("{}")
    before = _tree(out)
    v = write_frames_video(tmp_path / "noise.mp4", noise_frames(30), audio=tone(1.2))
    rc, err = _run(capsys, v, "--out", out, "--size", 128, *FAST)
    assert rc == 2 and "--out" in err and "--force" in err and "Traceback" not in err
    assert _tree(out) == before
    rc, err = _run(capsys, v, "--out", out, "--size", 128, "--force", *FAST)
    assert rc == 1 and "no face found" in err and "left unchanged" in err
    assert _tree(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dataset", "noise.mp4"]  # no staging left behind


def test_out_containing_the_video_or_being_a_file_is_refused(tmp_path, capsys):
    out = tmp_path / "d"
    out.mkdir()
    v = write_frames_video(out / "me.mp4", noise_frames(25), audio=tone(1.0))
    rc, err = _run(capsys, v, "--out", out, "--force", *FAST)
    assert rc == 2 and "contains the input video" in err and v.is_file()
    f = tmp_path / "file"
    f.write_text("x")
    rc, err = _run(capsys, v, "--out", f, *FAST)
    assert rc == 2 and "is a file" in err and f.read_text() == "x"


def test_own_output_resumes_without_force(short_astro, tmp_path, capsys):
    out = tmp_path / "o"
    rc, _ = _run(capsys, short_astro["with_audio"], "--out", out, "--size", 128, "--steps", "decode", *FAST)
    assert rc == 0
    rc, err = _run(capsys, short_astro["with_audio"], "--out", out, "--size", 128, "--steps", "decode", *FAST)
    assert rc == 0 and "skipped (already done) decode" in err  # its own earlier output: no --force needed
