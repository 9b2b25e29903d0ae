"""ua3dtalk-import-mead on a small fake MEAD tree made of animated real-face clips."""
from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf

from preprocess_helpers import ffmpeg, write_frames_video
from ua3dtalk.cli.import_mead import main
from ua3dtalk.preprocess.animate import animate

CLIPS = (("angry", 1, "001", 0), ("happy", 3, "002", 1))


@pytest.fixture(scope="module")
def mead_root(tmp_path_factory):
    """ROOT/M003/video/front/<emotion>/level_<k>/<NNN>.mp4 (no audio track) + audio/.../<NNN>.m4a."""
    root = tmp_path_factory.mktemp("mead")
    for emo, k, name, seed in CLIPS:
        frames, truth = animate(30, 256, seed=seed, rot_amp=0.5 + seed)
        vdir = root / "M003" / "video" / "front" / emo / f"level_{k}"
        adir = root / "M003" / "audio" / emo / f"level_{k}"
        vdir.mkdir(parents=True)
        adir.mkdir(parents=True)
        write_frames_video(vdir / f"{name}.mp4", frames)
        wav = adir / f"{name}.wav"
        sf.write(str(wav), truth.audio, 16000)
        ffmpeg("-i", str(wav), "-c:a", "aac", str(adir / f"{name}.m4a"))
        wav.unlink()
    return root


def test_import_writes_a_valid_emotional_dataset(mead_root, tmp_path, capsys):
    from ua3dtalk.constants import EMOTIONS
    from ua3dtalk.data.loading import load_emotional

    out = tmp_path / "out"
    argv = [str(mead_root), "--subject", "M003", "--out", str(out), "--size", "256", "--features", "",
            "--min-frames", "20", "--no-progress"]
    rc = main(argv)
    err = capsys.readouterr().err
    assert rc == 0, err
    assert "imported 2 clip(s) of M003" in err and "valid emotional dataset, 2 clips" in err
    data = load_emotional(out)
    labels = sorted((c.clip_id, EMOTIONS[c.emotion], c.intensity) for c in data.clips)
    assert labels == [("M003/angry/level_1/001", "angry", 1), ("M003/happy/level_3/002", "happy", 3)]
    assert data.subjects == ["M003"]
    # one shared camera: same focal length and principal point in every clip, the subject's camera.json
    Ks = {tuple(np.round(c.cameras.K.ravel(), 3)) for c in data.clips}
    assert len(Ks) == 1
    cam = json.loads((out / "M003" / "camera.json").read_text())
    assert cam["focal"] == pytest.approx(float(data.clips[0].cameras.K[0, 0]), rel=1e-5)
    assert np.asarray(cam["template"]).shape == (68, 3) and cam["crop"] is None
    # the audio came from the .m4a files (the videos have no audio track)
    for c in data.clips:
        assert sf.info(str(c.root / "aud.wav")).frames == 30 * 640
    # resumable: a second import does nothing new
    rc = main(argv)
    err = capsys.readouterr().err
    assert rc == 0 and "shared camera" not in err


def test_bad_tree_is_a_clear_error(mead_root, tmp_path, capsys):
    rc = main([str(mead_root), "--subject", "W999", "--out", str(tmp_path / "o"), "--no-progress"])
    assert rc == 1 and "no MEAD subject 'W999'" in capsys.readouterr().err
    bad = tmp_path / "bad" / "M003" / "video" / "front" / "grumpy" / "level_1"
    bad.mkdir(parents=True)
    rc = main([str(tmp_path / "bad"), "--subject", "M003", "--out", str(tmp_path / "o"), "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 1 and "unknown emotion directory 'grumpy'" in err
