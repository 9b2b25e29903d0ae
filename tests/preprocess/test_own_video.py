"""Your own video, end to end (issue: preprocess → train → drive): a real face — scikit-image's astronaut photo
animated into a talking clip with a speech track — is preprocessed, trained with `experiment=own_video` at a
test-sized schedule, scored on its held-out frames and driven by new speech. Without emotion labels or a
teacher, the emotion stage is left out with one line and emotion labels are refused at inference."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.slow

# a test-sized own_video: the real code path, small model and schedule (the experiment's sizes are CPU-sized)
TEST_SCALE = ["stage_steps={prior: 10, emotion: 10, mouth: 30, face: 120, fuse: 30}", "val_every=30",
              "model.face.num_points=800", "model.mouth.num_points=100", "model.static_warmup=40",
              "model.deformation.field_resolution=16", "model.mouth_deformation.field_resolution=8",
              "model.deformation.ensemble_switch=60", "model.mouth_deformation.ensemble_switch=20",
              "model.face_density={start: 40, interval: 40, stop: 120, reset_interval: 0}",
              "model.mouth_density={start: 10, interval: 10, stop: 30, reset_interval: 0}"]
# the expression code needs more face steps than the test scale's 120 before the brows answer it
EXPRESSIVE_SCALE = ["stage_steps={prior: 10, emotion: 10, mouth: 30, face: 400, fuse: 10}",
                    "model.face_density={start: 40, interval: 60, stop: 300, reset_interval: 0}", "val_every=200"]
PSNR_FLOOR = 24.0  # held-out frames of the 256² astronaut clip (measured 26.8 dB after 250 render steps, 2026-12-06)


def _env(tmp_path: Path) -> dict:
    from ua3dtalk.cli.train import config_dir

    return {**os.environ, "WANDB_MODE": "offline", "HF_HUB_OFFLINE": "1", "UA3DTALK_CONFIG_DIR": str(config_dir()),
            "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")}  # 1 under pytest-xdist (tests/conftest.py)


def _run_dir(tmp: Path) -> Path:
    """The run: outputs/runs/cpu/own_video<variant: the test-sized schedule>/astronaut/seed0 (the subject level
    is the name of data.root)."""
    runs = sorted((tmp / "outputs" / "runs" / "cpu").glob("own_video*/astronaut/seed0"))
    assert len(runs) == 1, sorted(str(p) for p in (tmp / "outputs").rglob("run.json"))
    return runs[0]


@pytest.fixture(scope="module")
def own_run(astro_out, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("own_video")
    data = tmp / "data" / "astronaut"
    shutil.copytree(astro_out[0], data)
    r = subprocess.run([sys.executable, "-m", "ua3dtalk.cli.train", "experiment=own_video", f"data.root={data}",
                        f"paths.root={tmp}", *TEST_SCALE], cwd=tmp, env=_env(tmp), capture_output=True, text=True,
                       timeout=1800)
    assert r.returncode == 0, r.stderr[-3000:] + r.stdout[-3000:]
    return tmp, data, r


def test_own_video_trains_without_labels_and_says_so(own_run):
    tmp, data, r = own_run
    run = _run_dir(tmp)
    assert (run / "metrics.json").is_file()
    skipped = [ln for ln in r.stdout.splitlines() if "stage emotion skipped" in ln]
    assert len(skipped) == 1 and "teacher_path" in skipped[0] and "emotion labels" in skipped[0], r.stdout[-3000:]
    assert "nan" not in r.stdout.lower().replace("nonan", ""), "a NaN reached the log"
    m = json.loads((run / "metrics.json").read_text())
    assert m["components"]["emotion"] == "none"
    assert "emotion" not in m.get("stages", {}), m.get("stages")
    psnr = m.get("best", {}).get("val/psnr", m.get("val/psnr"))
    assert psnr is not None and psnr >= PSNR_FLOOR, f"held-out PSNR {psnr} < {PSNR_FLOOR}"


def test_own_video_drives_with_new_speech_and_refuses_labels(own_run, tmp_path):
    import soundfile as sf

    from ua3dtalk.preprocess.video import probe

    tmp, _, _ = own_run
    run = _run_dir(tmp)
    sr, seconds = 16000, 1.6
    t = np.arange(int(sr * seconds)) / sr
    speech = (0.3 * np.sin(2 * np.pi * 180 * t) * (0.5 + 0.5 * np.sin(2 * np.pi * 3 * t))).astype(np.float32)
    wav = tmp_path / "speech.wav"
    sf.write(str(wav), speech, sr)
    out = tmp_path / "me.mp4"
    r = subprocess.run([sys.executable, "-m", "ua3dtalk.cli.infer", f"ckpt={run}", f"audio={wav}", f"out={out}"],
                       env=_env(tmp_path), capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    info = probe(out)
    assert info.has_audio and abs(info.expected_frames - round(seconds * 25)) <= 1, info
    r = subprocess.run([sys.executable, "-m", "ua3dtalk.cli.infer", f"ckpt={run}", f"audio={wav}",
                        f"out={tmp_path / 'happy.mp4'}", "emotion=happy"],
                       env=_env(tmp_path), capture_output=True, text=True, timeout=900)
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert r.returncode == 2 and len(lines) == 1 and "emotion" in lines[0], r.stderr[-2000:]
    assert not (tmp_path / "happy.mp4").exists()


def test_own_video_report(own_run, tmp_path):
    """The report of the chain: held-out frames beside renders (a picture of 2 rows), the held-out metrics with
    their evaluator, the held-out clip and the driven mp4; refused into a foreign directory."""
    import imageio.v3 as iio

    from ua3dtalk.reporting.video_report import main

    tmp, _, _ = own_run
    run = _run_dir(tmp)
    driven = tmp_path / "driven.mp4"
    from ua3dtalk.utils.io import write_video

    write_video(driven, [np.zeros((32, 32, 3), np.uint8)] * 5)  # stands for ua3dtalk-infer's output
    out = tmp_path / "report"
    assert main([str(run), "--driven", str(driven), "--out", str(out), "--frames", "3"]) == 0
    text = (out / "report.md").read_text()
    assert "heldout.png" in text and "driven.mp4" in text and "`val/psnr`" in text
    img = iio.imread(out / "heldout.png")
    h, w = img.shape[:2]
    assert h == 2 * 256 and w == 3 * 256  # ground truth above render, 3 held-out frames
    assert (out / "heldout.mp4").stat().st_size > 0 and (out / "driven.mp4").is_file()
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    assert main([str(run), "--out", str(foreign)]) == 2
    assert sorted(p.name for p in foreign.iterdir()) == ["notes.txt"]



def test_a_hand_over_the_face_preprocesses_and_trains(tmp_path):
    """A real face with a hand over its cheek, jaw and mouth corner for 30 of 60 frames (the animated astronaut with
    ``hand=(15, 45)``): ua3dtalk-preprocess makes a valid dataset (a face found in every frame, cameras within a few
    pixels) and own_video trains on it without error, to a finite held-out PSNR above a floor."""
    from ua3dtalk.data.loading import load_clip
    from ua3dtalk.preprocess.animate import write_animated_video

    video = tmp_path / "hand.mp4"
    truth = write_animated_video(video, 60, 256, hand=(15, 45))
    assert float(truth.hand.max()) == 1.0 and int((truth.hand > 0).sum()) == 30
    data = tmp_path / "data" / "hand"
    r = subprocess.run([sys.executable, "-m", "ua3dtalk.cli.preprocess", str(video), "--out", str(data),
                        "--size", "256"], env=_env(tmp_path), capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:] + r.stdout[-3000:]
    err = re.search(r"reprojection error mean ([0-9.]+) px", r.stdout + r.stderr)
    assert err is not None and float(err.group(1)) < 5.0, (r.stdout + r.stderr)[-2000:]
    clip = load_clip(data)
    assert clip.num_frames == 60 and np.isfinite(np.stack([clip.landmarks(i) for i in range(60)])).all()
    r = subprocess.run([sys.executable, "-m", "ua3dtalk.cli.train", "experiment=own_video", f"data.root={data}",
                        f"paths.root={tmp_path}", *TEST_SCALE], cwd=tmp_path, env=_env(tmp_path),
                       capture_output=True, text=True, timeout=1800)
    assert r.returncode == 0, r.stderr[-3000:] + r.stdout[-3000:]
    run, = sorted((tmp_path / "outputs" / "runs" / "cpu").glob("own_video*/hand/seed0"))
    m = json.loads((run / "metrics.json").read_text())
    psnr = m.get("best", {}).get("val/psnr", m.get("val/psnr"))
    assert psnr is not None and np.isfinite(psnr) and psnr >= PSNR_FLOOR - 3.0, psnr


def test_an_expressive_face_follows_the_expression_it_is_driven_with(tmp_path):
    """An expressive real face (the animated astronaut with ``expressive=True``: brows and lip corners change
    independently of the speech) trained with ``model.frame_code=expression`` and driven by new speech follows the
    expression track it is given: driven with the clip's highest-brow frame, the detected brows sit higher than
    driven with its lowest-brow frame (an avatar that ignored the code would render the same frames). Without the
    code the same training cannot be steered at all (docs/history/2026-12-06-expressive-face.md)."""
    import soundfile as sf

    from ua3dtalk.metrics.landmarks import LANDMARK_EXPR_NAMES, landmark_expression
    from ua3dtalk.preprocess.animate import synth_audio, speech_envelope, write_animated_video
    from ua3dtalk.preprocess.landmarks import make_backend

    video = tmp_path / "expr.mp4"
    truth = write_animated_video(video, 100, 256, expressive=True, seed=0)
    assert len(set(truth.expression_names)) >= 2
    data = tmp_path / "data" / "expressive"
    r = subprocess.run([sys.executable, "-m", "ua3dtalk.cli.preprocess", str(video), "--out", str(data),
                        "--size", "256"], env=_env(tmp_path), capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:] + r.stdout[-3000:]
    r = subprocess.run([sys.executable, "-m", "ua3dtalk.cli.train", "experiment=own_video", f"data.root={data}",
                        f"paths.root={tmp_path}", *TEST_SCALE, "model.frame_code=expression",
                        "model.deformation.blink_dim=6", *EXPRESSIVE_SCALE], cwd=tmp_path, env=_env(tmp_path),
                       capture_output=True, text=True, timeout=1800)
    assert r.returncode == 0, r.stderr[-3000:] + r.stdout[-3000:]
    run, = sorted((tmp_path / "outputs" / "runs" / "cpu").glob("own_video*/expressive/seed0"))
    expr = np.load(data / "expr.npy")
    k = LANDMARK_EXPR_NAMES.index("brow_raise")
    wav = tmp_path / "speech.wav"
    sf.write(str(wav), synth_audio(speech_envelope(25, seed=7), seed=7), 16000)
    brows = {}
    backend = make_backend("dlib")
    for name, row in (("high", expr[np.argmax(expr[:, k])]), ("low", expr[np.argmin(expr[:, k])])):
        track = tmp_path / f"{name}.npy"
        np.save(track, np.repeat(row[None], 5, 0))
        out = tmp_path / f"{name}.mp4"
        r = subprocess.run([sys.executable, "-m", "ua3dtalk.cli.infer", f"ckpt={run}", f"audio={wav}", f"out={out}",
                            f"expression={track}"], env=_env(tmp_path), capture_output=True, text=True, timeout=900)
        assert r.returncode == 0, r.stderr[-3000:]
        import imageio.v3 as iio

        lms = []
        for f in iio.imiter(out):
            faces, _ = backend.find_faces(np.ascontiguousarray(f))
            assert faces, f"{name}: no face in a driven frame"
            lms.append(max(faces, key=lambda x: x.size).lms)
        brows[name] = float(np.asarray(landmark_expression(np.stack(lms)))[:, k].mean())
    spread = float(expr[:, k].max() - expr[:, k].min())
    # the driven brows move by a good part of the video's own range (measured 2026-12-06: 0.068 of a range of 0.138,
    # i.e. 0.49 of it; after 120 face steps the code was not learned yet: −0.008)
    assert brows["high"] - brows["low"] > 0.25 * spread, (brows, spread)
