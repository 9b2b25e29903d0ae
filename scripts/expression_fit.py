"""Does a trained avatar reproduce the expressions of its video, or one average expression?
(docs/history/2026-12-06-expressive-face.md)

    python scripts/expression_fit.py RUN [val|train] [--every K]
    python scripts/expression_fit.py --video DRIVEN.mp4 [--track expr.npy]

Renders the split's frames (train: every ``--every``-th frame of the first clip, so every expression of the clip is
seen; val: all held-out frames) with the run's best checkpoint, in frame order with their own audio, finds 68
landmarks on every rendered and ground-truth frame with the same detector (dlib, per frame, no smoothing) and
compares the landmark expression coefficients (``metrics.landmarks.landmark_expression``) of the two:

* ``r``: Pearson correlation over frames of the rendered and the ground-truth coefficient (1 = follows every change);
* ``std ratio``: std over frames of the rendered coefficient / std of the ground truth (≈ 0: one average
  expression; ≈ 1: as much variation as the video);
* ``error``: mean |rendered − ground truth| over frames, and the same for the training frames' average expression (from
  the dataset's ``expr.npy``: what one average expression scores; meaningful also when the split holds a single
  expression and ``r`` is not);

for the upper-face and lip-corner coefficients (brows, eyes, corners) and the mouth opening, plus PSNR of the
frame and of the brow box (landmarks 17–26). Frames where a detector finds no face are left out (counted).

``--video``: the same coefficients of a driven mp4 (``ua3dtalk-infer``): their std over the frames (one average
expression: ≈ 0) and, with ``--track`` (the ``expr.npy`` the avatar was driven with, e.g. ``expression=``), their
correlation with it frame by frame.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

COEFFS = ("brow_raise", "brow_furrow", "eye_open", "lip_corner_raise", "mouth_open")


def detect(backend, imgs: torch.Tensor) -> np.ndarray:
    """[n,68,2] landmarks of frames [n,3,H,W] in [0,1] (NaN where no face is found)."""
    out = np.full((imgs.shape[0], 68, 2), np.nan)
    for i, im in enumerate(imgs):
        u8 = (im.permute(1, 2, 0).clamp(0, 1).numpy() * 255 + 0.5).astype(np.uint8)
        faces, _ = backend.find_faces(u8)
        if faces:
            out[i] = max(faces, key=lambda f: f.size).lms
    return out


def video_mode(video: str, track_path) -> None:
    import imageio.v3 as iio

    from ua3dtalk.metrics.landmarks import LANDMARK_EXPR_NAMES, landmark_expression
    from ua3dtalk.preprocess.landmarks import make_backend

    frames = torch.from_numpy(np.stack(list(iio.imiter(video)))).permute(0, 3, 1, 2).float() / 255
    lm = detect(make_backend("dlib"), frames)
    ok = ~np.isnan(lm).any((1, 2))
    e = np.asarray(landmark_expression(lm[ok]))
    track = None
    if track_path:
        from ua3dtalk.data.predict import _loop_index

        t = np.load(track_path)
        track = t[_loop_index(np.arange(len(frames)), len(t), "mirror")][ok]  # as ua3dtalk-infer loops it
    print(f"{video}: {len(frames)} frames ({int((~ok).sum())} without a face left out)")
    for name in COEFFS:
        k = LANDMARK_EXPR_NAMES.index(name)
        line = f"  {name:17s} std {e[:, k].std():.4f}"
        if track is not None:
            line += (f"   r with the track {float(np.corrcoef(e[:, k], track[:, k])[0, 1]):+.2f} "
                     f"(track std {track[:, k].std():.4f})")
        print(line)


def main() -> None:
    from ua3dtalk.callbacks.metrics import ClipSequence, render_sequence, split_sequences
    from ua3dtalk.cli.eval import build_eval_datamodule
    from ua3dtalk.cli.infer import load_model, resolve_checkpoint
    from ua3dtalk.metrics.landmarks import LANDMARK_EXPR_NAMES, landmark_expression
    from ua3dtalk.preprocess.landmarks import make_backend

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run", nargs="?")
    ap.add_argument("--video", help="a driven mp4 instead of a run")
    ap.add_argument("--track", help="with --video: the expr.npy it was driven with")
    ap.add_argument("split", nargs="?", default="val", choices=("val", "train"))
    ap.add_argument("--every", type=int, default=3, help="train: render every K-th frame")
    a = ap.parse_args()
    if a.every < 1:
        ap.error("--every must be ≥ 1")
    if a.video:
        return video_mode(a.video, a.track)
    if not a.run:
        ap.error("give a RUN or --video")
    ckpt = resolve_checkpoint(Path(a.run), "expression_fit")
    model = load_model(ckpt)
    dm = build_eval_datamodule(model, ckpt)
    ds, seqs = split_sequences(dm, a.split, max_clips=1)
    seq = seqs[0]
    if a.split == "train":
        seq = ClipSequence(seq.clip, seq.positions[::a.every], seq.items[::a.every])
    with torch.no_grad():
        pred, gt, _, _ = render_sequence(model, ds, seq)
    train_expr = dm.train_expr()
    if train_expr is None or train_expr.shape[1] != len(LANDMARK_EXPR_NAMES):
        raise SystemExit("expression_fit: the run's dataset has no landmark expr.npy (ua3dtalk-preprocess writes it)")
    train_mean = train_expr.mean(0)
    backend = make_backend("dlib")
    lp, lg = detect(backend, pred), detect(backend, gt)
    ok = ~(np.isnan(lp).any((1, 2)) | np.isnan(lg).any((1, 2)))
    ep = np.asarray(landmark_expression(lp[ok]))
    eg = np.asarray(landmark_expression(lg[ok]))
    mse = ((pred - gt) ** 2).mean((1, 2, 3)).clamp_min(1e-10)
    brow = np.zeros(pred.shape[0])
    for i in range(pred.shape[0]):
        if not ok[i]:
            brow[i] = np.nan
            continue
        p = lg[i, 17:27]
        x0, y0 = np.floor(p.min(0) - 4).astype(int).clip(0)
        x1, y1 = np.ceil(p.max(0) + 4).astype(int)
        e = ((pred[i, :, y0:y1, x0:x1] - gt[i, :, y0:y1, x0:x1]) ** 2).mean().clamp_min(1e-10)
        brow[i] = float(10 * torch.log10(1 / e))
    print(f"{a.split}: {len(seq.items)} frames ({int((~ok).sum())} without a face left out); PSNR dB full "
          f"{float((10 * torch.log10(1 / mse)).mean()):.2f}, brow box {np.nanmean(brow):.2f}")
    for name in COEFFS:
        k = LANDMARK_EXPR_NAMES.index(name)
        r = float(np.corrcoef(ep[:, k], eg[:, k])[0, 1])
        ratio = float(ep[:, k].std() / max(eg[:, k].std(), 1e-12))
        err = float(np.abs(ep[:, k] - eg[:, k]).mean())
        flat = float(np.abs(train_mean[k] - eg[:, k]).mean())
        print(f"  {name:17s} r {r:+.2f}   std ratio {ratio:.2f}   error {err:.4f} (average expression {flat:.4f}; "
              f"ground-truth std {eg[:, k].std():.4f})")


if __name__ == "__main__":
    main()
