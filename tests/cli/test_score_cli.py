"""``ua3dtalk-score pred.mp4 gt.mp4`` (issue 5 item 8): videos made from ground-truth frames of the tiny
synthetic set. Identical videos → PSNR = inf; a degraded copy → finite, lower PSNR; a video whose audio
is delayed by k frames → Sync offset −k (± 1) with the project-trained SyncNet (offset convention of
:mod:`ua3dtalk.metrics.syncnet`: audio delayed by k frames gives −k); bad input → clear errors."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from ua3dtalk.cli.score import main, score_videos


@pytest.fixture(scope="module")
def videos(synth_emotional_small, tmp_path_factory):
    """gt.mp4 (frames + aud.wav of the first clip), same.mp4 (same frames), noisy.mp4, the clip dir."""
    import soundfile as sf

    from ua3dtalk.data.formats import load_dataset
    from ua3dtalk.metrics.syncnet import SAMPLES_PER_FRAME, clips_from_dataset
    from ua3dtalk.utils.io import write_video

    d = tmp_path_factory.mktemp("score")
    info = load_dataset(synth_emotional_small).clips[0]
    clip = [c for c in clips_from_dataset(synth_emotional_small) if c.name == info.clip_id][0]
    frames = (clip.load_frames().permute(0, 2, 3, 1).numpy() * 255 + 0.5).clip(0, 255).astype(np.uint8)
    sf.write(d / "aud.wav", clip.audio, 16000)
    write_video(d / "gt.mp4", list(frames), audio_path=d / "aud.wav")
    write_video(d / "same.mp4", list(frames))
    rng = np.random.default_rng(0)
    noisy = (frames.astype(np.float32) + rng.normal(0, 12, frames.shape)).clip(0, 255).astype(np.uint8)
    write_video(d / "noisy.mp4", list(noisy))
    write_video(d / "short.mp4", list(frames[:-3]))
    for k in (-3, 3):
        sf.write(d / f"shift{k}.wav", np.roll(clip.audio, k * SAMPLES_PER_FRAME), 16000)
    return d, info.root


def test_psnr_identical_is_inf_and_degraded_is_lower(videos, tmp_path, capsys):
    d, clip_dir = videos
    out = tmp_path / "res.json"
    assert main([str(d / "same.mp4"), str(d / "gt.mp4"), "--metrics", "psnr,ssim", "--json", str(out)]) == 0
    same = json.loads(out.read_text())["metrics"]
    assert same["psnr"] == float("inf") and same["ssim"] == pytest.approx(1.0, abs=1e-6)
    noisy = score_videos(d / "noisy.mp4", d / "gt.mp4", metrics="psnr,ssim,lpips", lpips_random_backbone=True,
                         gt_dir=clip_dir)
    m = noisy["metrics"]
    assert 15 < m["psnr"] < 40 and m["ssim"] < 0.99
    assert m["lpips_randbackbone"] > 0 and "lpips" not in m and "lpips_face_randbackbone" in m
    assert "psnr" in capsys.readouterr().out


@pytest.mark.slow
def test_sync_offset_of_shifted_audio(videos, synth_emotional_small, tmp_path_factory):
    from test_evaluators_cli import shared_evaluators

    ev_dir = shared_evaluators(tmp_path_factory, synth_emotional_small)
    d, clip_dir = videos
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        res = {k: score_videos(d / "same.mp4", d / "gt.mp4", gt_dir=clip_dir, evaluators=ev_dir, metrics="sync",
                               audio=None if k == 0 else d / f"shift{k}.wav")["metrics"] for k in (0, -3, 3)}
        full = score_videos(d / "noisy.mp4", d / "gt.mp4", gt_dir=clip_dir, evaluators=ev_dir,
                            lpips_random_backbone=True)
    finally:
        torch.set_num_threads(n)
    print("\n" + "\n".join(f"audio delayed {k:+d}: {v}" for k, v in res.items()))
    for k, v in res.items():
        assert abs(v["sync_offset"] - (-k)) <= 1, (k, v)
    assert res[0]["sync_c"] > 0
    assert {"psnr", "ssim", "lpips_randbackbone", "efid_landmark", "efid_regressor", "lmd", "f_lmd", "blink_err",
            "acc_emo", "sync_c", "sync_d", "sync_offset"} <= set(full["metrics"])
    assert full["skipped"] == {}
    assert "SyncNet" in full["evaluators"]["sync_c"]


def test_bad_input_is_named(videos, tmp_path, capsys):
    d, clip_dir = videos
    assert main([str(tmp_path / "missing.mp4"), str(d / "gt.mp4")]) == 2
    assert "missing.mp4" in capsys.readouterr().err
    assert main([str(d / "short.mp4"), str(d / "gt.mp4"), "--metrics", "psnr"]) == 2
    err = capsys.readouterr().err
    assert "frame counts differ" in err and "short.mp4" in err
    (tmp_path / "junk.mp4").write_bytes(b"not a video")
    assert main([str(tmp_path / "junk.mp4"), str(d / "gt.mp4"), "--metrics", "psnr"]) == 2
    assert "junk.mp4" in capsys.readouterr().err
    assert main([str(d / "same.mp4"), str(d / "gt.mp4"), "--metrics", "psnr,fid"]) == 2
    assert "fid" in capsys.readouterr().err
    assert main([str(d / "same.mp4"), str(d / "same.mp4"), "--metrics", "sync"]) == 2  # no audio track
    assert "audio" in capsys.readouterr().err
