"""Is it the head pose and the speech in the expression code that spoils held-out frames? An oracle experiment
(docs/history/2026-12-06-pose-free-code.md).

    python scripts/pose_free_code.py DATASET OUT --seed 0 [--frames 500] [--size 256]
    python scripts/pose_free_code.py DATASET OUT --estimated

DATASET is the ``ua3dtalk-preprocess`` output of an animated clip written by
``ua3dtalk.preprocess.animate.write_animated_video(path, FRAMES, SIZE, seed=SEED, expressive=True)``, whose head pose
(yaw, pitch, roll) and mouth opening are known exactly: the animation is regenerated from the same arguments. OUT (new)
becomes a copy of DATASET in which the columns of ``expr.npy`` that ``model.frame_code=expression`` reads
(``EXPRESSION_CODE``) are replaced by their residual after a least-squares fit on those four known signals, fitted on
the training frames (``transforms_train.json``) only, the columns' training mean kept. The other columns and every other
file are copied unchanged. The landmark expression itself cannot do this: a real video's pose is only estimated, and the
fit uses the animation's ground truth — so the copy answers what a pose- and speech-free code would give, not how to
compute one.

``--estimated``: the same fit on what any preprocessed video has instead of the animation's ground truth — the
preprocessing's per-frame cameras (yaw, pitch and roll of each ``transform_matrix`` rotation; not its translation,
whose depth the landmark fit moves with the expression) and the landmark expression's own ``mouth_open`` and
``jaw_drop`` columns — so the answer is what a residualisation computable on a real video would give.

Prints the share of each code column's variance the fit removes (R² over the training frames).
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import numpy as np


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("dataset", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--seed", type=int, help="seed the clip was animated with (the ground-truth fit)")
    ap.add_argument("--estimated", action="store_true",
                    help="fit on the dataset's own cameras and mouth columns instead of the animation's ground truth")
    ap.add_argument("--frames", type=int, default=500)
    ap.add_argument("--size", type=int, default=256)
    a = ap.parse_args(argv)
    if (a.seed is None) == (not a.estimated):
        ap.error("give --seed (the animation's ground truth) or --estimated (the dataset's cameras), one of them")

    from ua3dtalk.metrics.landmarks import LANDMARK_EXPR_NAMES
    from ua3dtalk.models.talking_head import EXPRESSION_CODE, expression_columns
    from ua3dtalk.preprocess.animate import animate
    from ua3dtalk.utils.io import atomic_directory

    if a.out.exists():
        print(f"pose_free_code: {a.out} exists; give a new directory", file=sys.stderr)
        return 2
    try:
        expr = np.load(a.dataset / "expr.npy").astype(np.float64)
        split = {s: json.loads((a.dataset / f"transforms_{s}.json").read_text())["frames"] for s in ("train", "val")}
        train = [int(f["img_id"]) for f in split["train"]]
        c2w = {int(f["img_id"]): np.asarray(f["transform_matrix"], np.float64)
               for f in split["train"] + split["val"]} if a.estimated else {}
    except (OSError, ValueError, KeyError, TypeError) as e:
        print(f"pose_free_code: {a.dataset} is not a preprocessed dataset with expr.npy ({e})", file=sys.stderr)
        return 2
    if expr.shape != (a.frames, len(LANDMARK_EXPR_NAMES)):
        print(f"pose_free_code: {a.dataset}/expr.npy is {expr.shape}, expected ({a.frames}, "
              f"{len(LANDMARK_EXPR_NAMES)}) for --frames {a.frames}", file=sys.stderr)
        return 2

    if a.estimated:
        if sorted(c2w) != list(range(a.frames)) or any(m.shape != (4, 4) for m in c2w.values()):
            print(f"pose_free_code: {a.dataset}'s transforms do not hold one 4×4 camera for each of its {a.frames} "
                  "frames", file=sys.stderr)
            return 2
        from scipy.spatial.transform import Rotation

        rot = np.stack([c2w[i][:3, :3] for i in range(a.frames)])
        angles = Rotation.from_matrix(rot).as_euler("yxz", degrees=True)  # yaw, pitch, roll
        mouth = [LANDMARK_EXPR_NAMES.index(k) for k in ("mouth_open", "jaw_drop")]
        x = np.concatenate([np.ones((a.frames, 1)), angles, expr[:, mouth]], 1)
    else:
        _, truth = animate(a.frames, a.size, seed=a.seed, expressive=True)
        x = np.stack([np.ones(a.frames), truth.yaw, truth.pitch, truth.roll, truth.mouth_open], 1)
    cols = expression_columns()
    y = expr[np.ix_(train, cols)]  # [M, 6]: the code columns of the training frames
    coef, *_ = np.linalg.lstsq(x[train], y, rcond=None)
    nuisance = x[:, 1:] @ coef[1:]  # [N, 6]: the part the pose and the mouth opening explain (no intercept)
    out = expr.copy()
    out[:, cols] = expr[:, cols] - (nuisance - nuisance[train].mean(0))
    r2 = 1 - ((y - x[train] @ coef) ** 2).sum(0) / ((y - y.mean(0)) ** 2).sum(0)

    with atomic_directory(a.out) as stage:  # OUT appears only once complete
        shutil.copytree(a.dataset, stage, dirs_exist_ok=True)
        np.save(stage / "expr.npy", out.astype(np.float32))
    which = "estimated" if a.estimated else "true"
    print(f"| code column | R² of {which} pose + mouth opening (training frames) |\n|---|--:|")
    for name, r in zip(EXPRESSION_CODE, r2):
        print(f"| {name} | {r:.2f} |")
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
