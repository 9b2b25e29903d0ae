"""``ua3dtalk-score pred.mp4 gt.mp4`` (issue 5 item 8): videos made from ground-truth frames of the tiny
synthetic set. Identical videos → PSNR = inf; a degraded copy → finite, lower PSNR; a video whose audio
is delayed by k frames → Sync offset −k (± 1) with the project-trained SyncNet (offset convention of
:mod:`ua3dtalk.metrics.syncnet`: audio delayed by k frames gives −k); bad input → clear errors.

Streaming (issue 8 item 5): the videos are decoded and scored in chunks; every metric equals the
whole-clip computation (with random-initialised evaluators, frame-stacking ones included, and a
random SyncNet: the numbers mean nothing but must agree), and peak traced memory of a long video stays
far below one decoded video."""
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

    from ua3dtalk.data.loading import load_dataset
    from ua3dtalk.metrics.syncnet import SAMPLES_PER_FRAME
    from ua3dtalk.metrics.syncnet_training import clips_from_dataset
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
    assert main([str(d / "same.mp4"), str(d / "gt.mp4"), "--metrics", "psnr,ssim", "--json", str(out),
                 "--chunk", "8"]) == 0
    cap = capsys.readouterr()
    assert "psnr" in cap.out and "30/30" in cap.err  # the progress bar counts frames
    same = json.loads(out.read_text())["metrics"]
    assert same["psnr"] == float("inf") and same["ssim"] == pytest.approx(1.0, abs=1e-6)
    noisy = score_videos(d / "noisy.mp4", d / "gt.mp4", metrics="psnr,ssim,lpips", lpips_random_backbone=True,
                         gt_dir=clip_dir)
    m = noisy["metrics"]
    assert 15 < m["psnr"] < 40 and m["ssim"] < 0.99
    assert m["lpips_randbackbone"] > 0 and "lpips" not in m and "lpips_face_randbackbone" in m


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


# --------------------------------------------------------------------------------------------------
# streaming (issue 8 item 5)
# --------------------------------------------------------------------------------------------------

ALL_KEYS = {"psnr", "ssim", "lpips_randbackbone", "lpips_face_randbackbone", "efid_landmark", "efid_regressor", "lmd",
            "f_lmd", "blink_err", "acc_emo", "acc_emo_clip", "sync_c", "sync_d", "sync_offset"}


@pytest.fixture(scope="module")
def random_evaluators(videos, tmp_path_factory):
    """Random-initialised evaluators saved as ``ua3dtalk-evaluators train`` saves them: a landmark regressor,
    an expression regressor stacking 5 frames (2 neighbours each side), an emotion classifier stacking 2
    (1 on the right) and a small SyncNet. The BatchNorm statistics of the crop networks are set on the
    clip's crops, so that their outputs vary from frame to frame (a fresh random one is nearly constant)."""
    from ua3dtalk.cli.score import gt_clip_inputs
    from ua3dtalk.metrics import evaluators as E
    from ua3dtalk.metrics.evaluator_dir import EVALUATOR_DIRS
    from ua3dtalk.metrics.syncnet import SyncNet, SyncNetConfig, save_syncnet

    d = tmp_path_factory.mktemp("random_evaluators")
    frames = _frames(videos[0] / "noisy.mp4")
    lms = gt_clip_inputs(videos[1])["landmarks"]
    torch.manual_seed(0)
    small = dict(crop_size=32, width=4)
    for name, model in (("landmark", E.LandmarkRegressor(E.LandmarkRegressorConfig(**small))),
                        ("expression", E.ExpressionRegressor(E.ExpressionRegressorConfig(**small, in_frames=5,
                                                                                          out_dim=6))),
                        ("emotion", E.EmotionClassifier(E.EmotionClassifierConfig(**small, in_frames=2)))):
        for m in model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.momentum = None  # running statistics = those of the one batch below
        model.train()
        with torch.no_grad():
            model(model.make_inputs(frames, E.face_boxes(lms, scale=model.config.box_scale)))
        model.eval().save(d / EVALUATOR_DIRS[name])
    save_syncnet(SyncNet(SyncNetConfig.small()), d / "syncnet.safetensors")
    return d


def _frames(path) -> torch.Tensor:
    from ua3dtalk.cli.score import read_video

    return torch.from_numpy(read_video(path)[0]).permute(0, 3, 1, 2).float() / 255.0


@pytest.mark.filterwarnings("ignore:SyncNet. audio")
def test_streamed_scores_equal_the_whole_clip(videos, random_evaluators, one_thread):
    """Chunks of 7 frames (borders inside every 5-frame SyncNet window and every frame stack) give the
    numbers of one chunk, and those of the metric functions applied to all frames at once."""
    from ua3dtalk.cli.score import gt_clip_inputs, read_audio
    from ua3dtalk.metrics.evaluators import emotion_accuracy, face_boxes
    from ua3dtalk.metrics.frechet import frechet_distance
    from ua3dtalk.metrics.image import psnr_per_frame, ssim
    from ua3dtalk.metrics.landmarks import lmd
    from ua3dtalk.metrics.evaluator_dir import load_evaluators
    from ua3dtalk.metrics.syncnet_scoring import crop_for_sync, sync_scores

    d, clip_dir = videos
    kw = dict(gt_dir=clip_dir, evaluators=random_evaluators, lpips_random_backbone=True, progress=False)
    streamed = score_videos(d / "noisy.mp4", d / "gt.mp4", chunk=7, **kw)
    whole = score_videos(d / "noisy.mp4", d / "gt.mp4", chunk=1000, **kw)
    assert streamed["skipped"] == {} and streamed["frames"] == whole["frames"] == 30
    m, w = streamed["metrics"], whole["metrics"]
    assert set(m) == set(w) == ALL_KEYS
    for k in ALL_KEYS:
        assert m[k] == pytest.approx(w[k], rel=1e-5, abs=1e-6), k
    assert streamed["evaluators"] == whole["evaluators"]

    # the metric functions on every frame at once (what MetricSuite.update did before streaming)
    pred, gt = _frames(d / "noisy.mp4"), _frames(d / "gt.mp4")
    c = gt_clip_inputs(clip_dir)
    lms = torch.from_numpy(c["landmarks"])
    ev = load_evaluators(random_evaluators, lpips_random_backbone=True)
    assert m["psnr"] == pytest.approx(float(psnr_per_frame(pred, gt).mean()), rel=1e-6)
    assert m["ssim"] == pytest.approx(ssim(pred, gt), rel=1e-6)
    assert m["lpips_randbackbone"] == pytest.approx(ev.lpips(pred, gt), rel=1e-5)
    boxes = face_boxes(lms, scale=ev.landmark.config.box_scale)
    pl, gl = ev.landmark.predict(pred, boxes), ev.landmark.predict(gt, boxes)
    assert m["lmd"] == pytest.approx(lmd(pl, gl), rel=1e-5)
    ex = ev.expression
    b = face_boxes(lms, scale=ex.config.box_scale)
    ref = frechet_distance(ex.extract(pred, b).double().numpy(), ex.extract(gt, b).double().numpy())
    assert m["efid_regressor"] == pytest.approx(ref, rel=1e-4)
    acc = emotion_accuracy(ev.emotion, pred, face_boxes(lms, scale=ev.emotion.config.box_scale), c["emotion"])
    assert m["acc_emo"] == pytest.approx(acc["acc_emo"]) and m["acc_emo_clip"] == acc["acc_emo_clip"]
    net = ev.syncnet
    r = sync_scores(net, crop_for_sync(pred, lms, size=net.config.lip_size), read_audio(d / "gt.mp4"), 16000)
    assert m["sync_offset"] == r.offset
    assert m["sync_d"] == pytest.approx(r.dist, rel=1e-5) and m["sync_c"] == pytest.approx(r.conf, rel=1e-4, abs=1e-5)


@pytest.mark.filterwarnings("ignore:SyncNet. audio")
def test_suite_stream_with_uneven_chunks_equals_update(videos, random_evaluators, one_thread):
    """:meth:`MetricSuite.stream` fed chunks of 1, 4, 2, 9 and 14 frames = :meth:`MetricSuite.update` with
    the 30 frames: every metric, the pooled E-FID features frame by frame, the per-clip record."""
    from ua3dtalk.cli.score import gt_clip_inputs, read_audio
    from ua3dtalk.metrics.evaluator_dir import load_evaluators
    from ua3dtalk.metrics.suite import MetricSuite

    d, clip_dir = videos
    pred, gt = _frames(d / "noisy.mp4"), _frames(d / "gt.mp4")
    c = gt_clip_inputs(clip_dir)
    kw = dict(landmarks=c["landmarks"], audio=read_audio(d / "gt.mp4"), emotion=c["emotion"], au45=c["au45"],
              name="clip")
    ev = load_evaluators(random_evaluators, lpips_random_backbone=True)
    one, streamed = MetricSuite(ev), MetricSuite(ev)
    rec = one.update(pred, gt, **kw)
    s = streamed.stream(**kw)
    i = 0
    for k in (1, 4, 2, 9, 14):
        s.add(pred[i:i + k], gt[i:i + k])
        i += k
    assert s.seen == 30 and s._done < 30  # the last frames wait for their right-hand neighbours
    srec = s.close()
    assert set(srec) == set(rec) == ALL_KEYS - {"efid_landmark", "efid_regressor"}
    for k in rec:
        assert srec[k] == pytest.approx(rec[k], rel=1e-5, abs=1e-6), k
    assert set(streamed._feats) == set(one._feats) == {"efid_landmark", "efid_regressor"}
    for key, (a, b) in one._feats.items():
        sa, sb = streamed._feats[key]
        np.testing.assert_allclose(np.concatenate(sa), np.concatenate(a), rtol=1e-4, atol=1e-5, err_msg=key)
        np.testing.assert_allclose(np.concatenate(sb), np.concatenate(b), rtol=1e-4, atol=1e-5, err_msg=key)
    res, sres = one.compute(), streamed.compute()
    assert set(sres) == set(res) and all(sres[k] == pytest.approx(res[k], rel=1e-4, abs=1e-6) for k in res)
    assert streamed.clips["clip"]["frames"] == 30 and streamed.num_frames == 30
    with pytest.raises(RuntimeError, match="after close"):
        s.add(pred[:1], gt[:1])
    short = MetricSuite(ev).stream(**kw)
    short.add(pred[:10], gt[:10])
    with pytest.raises(ValueError, match="10 frames were added.*N=30"):
        short.close()
    over = MetricSuite(ev, "psnr").stream(num_frames=5, name="c5")
    with pytest.raises(ValueError, match="c5: more frames than the N=5"):
        over.add(pred[:6], gt[:6])


def _moving(n: int, size: int, shift: int = 0):
    """n smooth frames [size,size,3] uint8 (a gradient and a moving square), lazily."""
    yy, xx = np.mgrid[:size, :size]
    for i in range(n):
        f = np.stack([(xx * 2 + i) % 256, (yy * 2) % 256, np.full_like(xx, 120)], -1).astype(np.uint8)
        x0 = (3 * i + shift) % (size - 24)
        f[40:64, x0:x0 + 24] = (230, 40, 40)
        yield f


def test_score_videos_streams_a_long_video_in_bounded_memory(tmp_path, one_thread):
    """300 frames of 128² (14.7 MB decoded per video): peak traced memory of score_videos stays below a
    quarter of ONE decoded video, and PSNR / SSIM equal those of all frames at once."""
    import tracemalloc

    from ua3dtalk.metrics.image import psnr_per_frame, ssim
    from ua3dtalk.utils.io import write_video

    n, size = 300, 128
    write_video(tmp_path / "gt.mp4", _moving(n, size))
    write_video(tmp_path / "pred.mp4", _moving(n, size, shift=2))
    score_videos(tmp_path / "pred.mp4", tmp_path / "gt.mp4", metrics="psnr,ssim", chunk=16, progress=False)  # imports
    tracemalloc.start()
    try:
        res = score_videos(tmp_path / "pred.mp4", tmp_path / "gt.mp4", metrics="psnr,ssim", chunk=16, progress=False)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    one_video = n * size * size * 3
    assert peak < one_video / 4, f"peak {peak / 1e6:.2f} MB; one decoded video is {one_video / 1e6:.1f} MB"
    assert res["frames"] == n
    pred, gt = _frames(tmp_path / "pred.mp4"), _frames(tmp_path / "gt.mp4")
    assert res["metrics"]["psnr"] == pytest.approx(float(psnr_per_frame(pred, gt).mean()), rel=1e-6)
    assert res["metrics"]["ssim"] == pytest.approx(ssim(pred, gt), rel=1e-6)
    assert 10 < res["metrics"]["psnr"] < 60


def test_mismatched_videos_name_both_files(videos, tmp_path):
    """Size and frame-count mismatches (either video the longer, found when one stream ends) and a
    --gt-dir of another length raise ValueError naming the files and both counts."""
    from ua3dtalk.utils.io import write_video

    d, clip_dir = videos
    write_video(tmp_path / "small.mp4", [np.zeros((32, 32, 3), np.uint8)] * 30)
    with pytest.raises(ValueError, match=r"frame sizes differ: .*small\.mp4 is 32×32, .*gt\.mp4 is 64×64"):
        score_videos(tmp_path / "small.mp4", d / "gt.mp4", metrics="psnr", progress=False)
    frames = [f for f in _frames(d / "gt.mp4").permute(0, 2, 3, 1).mul(255).round().byte().numpy()]
    write_video(tmp_path / "long.mp4", frames + frames[:5])
    for a, b, na, nb in ((d / "short.mp4", d / "gt.mp4", 27, 30), (d / "gt.mp4", tmp_path / "long.mp4", 30, 35)):
        for chunk in (4, 64):
            with pytest.raises(ValueError, match=rf"frame counts differ: .*{a.name} has {na} frames, "
                                                 rf".*{b.name} has {nb}"):
                score_videos(a, b, metrics="psnr", chunk=chunk, progress=False)
    for v, n in ((d / "short.mp4", 27), (tmp_path / "long.mp4", 35)):
        with pytest.raises(ValueError, match=rf"--gt-dir .*: the clip has 30 frames but the videos have {n}"):
            score_videos(v, v, metrics="psnr", gt_dir=clip_dir, chunk=4, progress=False)
    with pytest.raises(ValueError, match="--chunk must be"):
        score_videos(d / "gt.mp4", d / "gt.mp4", metrics="psnr", chunk=0, progress=False)
