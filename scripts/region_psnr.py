"""Held-out PSNR by region of a trained run: full frame, face box, mouth box (boxes from the ground-truth
landmarks) — where an avatar loses its PSNR (docs/history/2026-12-04-own-video-astronaut.md).

    python scripts/region_psnr.py RUN [val|train|test] [--frames N] [--clips N]

Renders the first clip of the split (``--clips N``: N clips, 0 = all; a train clip is cut to its first ``--frames``
frames) with the run's best checkpoint, in frame order with its own audio, and prints one line of PSNRs (means over
frames, pooled over the clips). The mouth box is also split into the ground-truth inner mouth (``mouth_mask``;
frames with an open mouth only) and the rest of the box (lips and skin).
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch


def boxes(lm: torch.Tensor, idx: list[int], pad: float, h: int, w: int) -> torch.Tensor:
    """[n,H,W] bool: the bounding box of landmarks ``idx`` of every frame, grown by ``pad`` of its size."""
    m = torch.zeros(lm.shape[0], h, w, dtype=torch.bool)
    for i in range(lm.shape[0]):
        p = lm[i, idx]
        (x0, y0), (x1, y1) = p.min(0).values.tolist(), p.max(0).values.tolist()
        dx, dy = pad * (x1 - x0), pad * (y1 - y0)
        m[i, max(0, int(y0 - dy)):min(h, int(y1 + dy)), max(0, int(x0 - dx)):min(w, int(x1 + dx))] = True
    return m


def region_psnr(pred: torch.Tensor, gt: torch.Tensor, mask: torch.Tensor) -> float:
    """Mean over frames of 10·log10(1/MSE) inside ``mask`` ([n,3,H,W] images in [0,1], [n,H,W] mask)."""
    err = ((pred - gt) ** 2).mean(1)
    keep = [i for i in range(len(err)) if bool(mask[i].any())]  # frames where the region is empty do not count
    if not keep:
        return float("nan")
    mse = torch.stack([err[i][mask[i]].mean() for i in keep]).clamp_min(1e-10)
    return float((10 * torch.log10(1 / mse)).mean())


def main() -> None:
    from ua3dtalk.callbacks.metrics import render_sequence, split_sequences
    from ua3dtalk.cli.eval import build_eval_datamodule
    from ua3dtalk.cli.infer import load_model, resolve_checkpoint

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run")
    ap.add_argument("split", nargs="?", default="val", choices=("val", "train", "test"))
    ap.add_argument("--frames", type=int, default=45, help="frames of a train split")
    ap.add_argument("--clips", type=int, default=1, help="clips of the split (0 = all; frames pooled)")
    a = ap.parse_args()
    if a.clips < 0 or a.frames < 1:
        ap.error("--clips must be ≥ 0 and --frames ≥ 1")
    ckpt = resolve_checkpoint(Path(a.run), "region_psnr")
    model = load_model(ckpt)
    dm = build_eval_datamodule(model, ckpt)
    ds, seqs = split_sequences(dm, a.split, max_clips=a.clips or None,
                               max_frames=None if a.split != "train" else a.frames)
    rows = {"full": [], "face box": [], "face without mouth": [], "mouth box": [], "lips (mouth box without the inner "
            "mouth)": [], "inner mouth (open frames)": [], "outside the face": []}
    mouth_share = []  # (frames, fraction of the frame) per clip
    for seq in seqs:
        with torch.no_grad():
            pred, gt, lm, _ = render_sequence(model, ds, seq)
        n, _, h, w = gt.shape
        mouth = boxes(lm, list(range(48, 68)), 0.15, h, w)
        face = boxes(lm, list(range(68)), 0.1, h, w)
        inner = torch.stack([ds[int(j)].mouth_mask.reshape(h, w).bool() for j in seq.items])  # ground-truth inner mouth
        masks = {"full": torch.ones(n, h, w, dtype=torch.bool), "face box": face, "face without mouth": face & ~mouth,
                 "mouth box": mouth, "lips (mouth box without the inner mouth)": mouth & ~inner,
                 "inner mouth (open frames)": inner, "outside the face": ~face}
        for k, m in masks.items():
            n_k = int(m.flatten(1).any(1).sum())
            if n_k:
                rows[k].append((n_k, region_psnr(pred, gt, m)))
        mouth_share.append((n, float(mouth.float().mean())))

    def pooled(v):  # mean over frames (each clip's value is its mean over its frames where the region is not empty)
        return sum(n * x for n, x in v) / sum(n for n, _ in v) if v else float("nan")

    print(f"{a.split}: {len(seqs)} clip(s), {sum(n for n, _ in mouth_share)} frames; PSNR dB — "
          + ", ".join(f"{k} {pooled(v):.2f}" for k, v in rows.items())
          + f"; mouth box = {100 * pooled(mouth_share):.2f} % of the frame")


if __name__ == "__main__":
    main()
