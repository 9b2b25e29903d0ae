"""``ua3dtalk-score``: score a generated video against its ground-truth video (any method, DESIGN §8).

    ua3dtalk-score pred.mp4 gt.mp4 [--gt-dir DATASET_CLIP_DIR] [--evaluators DIR] [--audio speech.wav]
                   [--metrics psnr,ssim,lpips,efid,lmd,blink,acc_emo,sync] [--lpips-random-backbone]
                   [--syncnet syncnet_v2.model] [--threedmm model.pt] [--json OUT.json]

Both videos are decoded with imageio-ffmpeg (RGB, same frame count and size required; 25 fps assumed
for Sync-C/D). The audio comes from the ground-truth mp4 (or ``--audio``), resampled to 16 kHz mono.
``--gt-dir`` is the dataset clip directory of the ground truth (DESIGN §5): its ``.lms`` landmarks give
the face boxes (LPIPS face crop, E-FID, LMD, blink, Acc_emo, SyncNet crops), ``au.csv`` the AU45 of the
blink error and ``emotion.json`` the Acc_emo label. The same :class:`~ua3dtalk.metrics.suite.MetricSuite`
as training and ``ua3dtalk-eval`` computes the numbers, so baselines are scored by the same code.
Prints the metrics (and which evaluator produced each) and writes them as JSON with ``--json``.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Optional

import numpy as np

SAMPLE_RATE = 16000


def read_video(path) -> tuple[np.ndarray, float]:
    """Decode an mp4 → (uint8 [N,H,W,3] RGB, fps). Raises FileNotFoundError / ValueError naming the file."""
    import imageio_ffmpeg

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"video not found: {path}")
    try:
        gen = imageio_ffmpeg.read_frames(str(path), pix_fmt="rgb24")
        meta = next(gen)
        w, h = meta["size"]
        frames = [np.frombuffer(f, np.uint8).reshape(h, w, 3) for f in gen]
    except (RuntimeError, OSError, StopIteration, KeyError) as e:
        raise ValueError(f"{path}: cannot decode the video ({e})") from None
    if not frames:
        raise ValueError(f"{path}: the video has no frames")
    return np.stack(frames), float(meta.get("fps") or 25.0)


def read_audio(path, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """The audio track of a video (or an audio file) → mono float32 [L] at ``sample_rate`` (ffmpeg)."""
    import imageio_ffmpeg

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"audio source not found: {path}")
    proc = subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-i", str(path), "-vn", "-ac", "1",
                           "-ar", str(sample_rate), "-f", "s16le", "-"], capture_output=True)
    if proc.returncode != 0 or not proc.stdout:
        msg = proc.stderr.decode(errors="replace").strip().splitlines()
        raise ValueError(f"{path}: no readable audio track ({msg[-1] if msg else 'empty output'}); pass --audio WAV")
    return np.frombuffer(proc.stdout, np.int16).astype(np.float32) / 32768.0


def gt_clip_inputs(gt_dir, num_frames: int) -> dict:
    """Landmarks [N,68,2], AU45 [N] (or None) and emotion label of a dataset clip directory."""
    from ..data.formats import load_clip

    clip = load_clip(gt_dir)
    if len(clip) != num_frames:
        raise ValueError(f"--gt-dir {gt_dir}: the clip has {len(clip)} frames but the videos have {num_frames}; "
                         "they must show the same frames")
    lms = np.stack([clip.landmarks(j) for j in range(len(clip))]).astype(np.float32)[..., :2]
    a = clip.au()
    col = a.get("AU45_r") if a is not None else None
    au45 = None
    if col is not None and int(np.max(clip.img_ids)) < len(col):
        au45 = np.asarray(col, np.float32)[np.asarray(clip.img_ids)]
    return {"landmarks": lms, "au45": au45, "emotion": int(clip.emotion) if clip.emotion >= 0 else None}


def score_videos(pred, gt, *, gt_dir=None, evaluators=None, audio=None, metrics=None, lpips_random_backbone=False,
                 syncnet=None, threedmm=None) -> dict:
    """Score ``pred`` against ``gt`` (mp4 paths) → {"metrics": {...}, "evaluators": {...}, "skipped": {...},
    "frames": N, ...}."""
    import torch

    from ..metrics.suite import MetricSuite, load_evaluators, parse_metrics

    groups = parse_metrics(metrics)
    pv, pfps = read_video(pred)
    gv, gfps = read_video(gt)
    if pv.shape[0] != gv.shape[0]:
        raise ValueError(f"frame counts differ: {pred} has {pv.shape[0]} frames, {gt} has {gv.shape[0]}")
    if pv.shape[1:] != gv.shape[1:]:
        raise ValueError(f"frame sizes differ: {pred} is {pv.shape[2]}×{pv.shape[1]}, "
                         f"{gt} is {gv.shape[2]}×{gv.shape[1]}")
    for p, f in ((pred, pfps), (gt, gfps)):
        if abs(f - 25.0) > 0.01:
            warnings.warn(f"{p}: {f} fps; Sync-C/D assume 25 fps video", stacklevel=2)
    extra = gt_clip_inputs(gt_dir, pv.shape[0]) if gt_dir is not None else {}
    wav = None
    if "sync" in groups:
        wav = read_audio(audio if audio is not None else gt)
    ev = load_evaluators(evaluators, groups, lpips_random_backbone=lpips_random_backbone, syncnet=syncnet,
                         threedmm=threedmm)
    suite = MetricSuite(ev, groups)
    to_t = lambda v: torch.from_numpy(np.ascontiguousarray(v)).permute(0, 3, 1, 2)  # noqa: E731
    suite.update(to_t(pv), to_t(gv), landmarks=extra.get("landmarks"), audio=wav, sr=SAMPLE_RATE,
                 emotion=extra.get("emotion"), au45=extra.get("au45"), name=Path(pred).name)
    values = suite.compute()
    return {"pred": str(pred), "gt": str(gt), "gt_dir": None if gt_dir is None else str(gt_dir),
            "frames": int(pv.shape[0]), "metrics": values, "evaluators": suite.provenance(list(values)),
            "skipped": suite.skipped}


def _parser():
    p = argparse.ArgumentParser(prog="ua3dtalk-score", description=__doc__.split("\n\n")[0])
    p.add_argument("pred", help="generated video (mp4)")
    p.add_argument("gt", help="ground-truth video (mp4, with the audio track unless --audio)")
    p.add_argument("--gt-dir", help="dataset clip directory of the ground truth (landmarks, au.csv, emotion.json)")
    p.add_argument("--evaluators", help="evaluator directory (ua3dtalk-evaluators train --out DIR)")
    p.add_argument("--audio", help="audio file instead of the GT video's audio track")
    p.add_argument("--metrics", default="all", help="comma-separated metric groups (default all)")
    p.add_argument("--lpips-random-backbone", action="store_true",
                   help="LPIPS with a random AlexNet (key lpips_randbackbone; smoke tests only)")
    p.add_argument("--syncnet", help="SyncNet weights (syncnet_v2.model or a project .safetensors)")
    p.add_argument("--threedmm", help="TorchScript 3DMM/expression regressor (efid_3dmm)")
    p.add_argument("--json", help="write the result here (atomically)")
    return p


def main(argv: Optional[list] = None) -> int:
    args = _parser().parse_args(sys.argv[1:] if argv is None else argv)
    from ..data.formats import DatasetError
    from ..metrics.evaluators import EvaluatorError
    from ..utils.io import atomic_write_json

    try:
        res = score_videos(args.pred, args.gt, gt_dir=args.gt_dir, evaluators=args.evaluators, audio=args.audio,
                           metrics=args.metrics, lpips_random_backbone=args.lpips_random_backbone,
                           syncnet=args.syncnet, threedmm=args.threedmm)
    except (ValueError, FileNotFoundError, DatasetError, EvaluatorError) as e:
        print(f"ua3dtalk-score: error: {e}", file=sys.stderr)
        return 2
    for k, v in res["metrics"].items():
        print(f"{k:>16s} = {v:.5g}    [{res['evaluators'].get(k, '')}]")
    for g, why in res["skipped"].items():
        print(f"{'skipped ' + g:>16s}: missing {why}")
    if args.json:
        atomic_write_json(args.json, res)
        print(f"ua3dtalk-score: wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
