"""How well can *any* audio-driven avatar score on the synthetic set's held-out clips? The part of each test frame
that its conditioning cannot predict, measured in the units of ``test/psnr`` and ``test/lmd``.

A clip of the synthetic emotional set (:mod:`ua3dtalk.data.synth`) is ``expr = clip(articulation + idle) +
emotion part``. The articulation follows the speech (the audio) and the blinks are given to the model; the pose
is the camera. Two parts depend on the clip's *expression* random stream only, which nothing the model sees
carries:
- the idle wander of the brows, cheeks and smile (:func:`~ua3dtalk.data.synth.speech.idle_track`);
- the emotion's onset, hold and release, with a random final level
  (:func:`~ua3dtalk.data.synth.speech.emotion_envelope`).

For each held-out clip the script draws ``--samples`` fresh idle wanders and envelopes. It keeps the clip's own
articulation, blinks, pose, background and label (knowing the label makes the ceiling *generous*: the model
reads the emotion from the audio). It renders every draw with the generator's own renderer and scores, against
the stored ground-truth frames (JPEG, as the evaluation reads them):

- ``posterior mean image``: the pixel-wise mean of the draws, the minimum-MSE prediction given what the model
  sees. Its PSNR, corrected for the finite number of draws, estimates the best expected PSNR of any predictor.
- ``mean expression``: one render of the draws' mean coefficients, the best *sharp* (deterministic-geometry)
  prediction; its LMD is the landmark error left by the unpredictable parts.
- ``exact expression``: the clip's own coefficients, re-rendered (only the JPEG coding of the ground truth
  differs): the ceiling of a perfect model.

``--emotion unknown`` draws the emotion and intensity as well (uniformly over the set's 24 cells): the ceiling of
a model that hears no emotion in the audio. Between the two lies a model that hears some of it.

    python scripts/heldout_ceiling.py --run outputs/runs/demo/paper_mead/synth0/seed0 \
        --evaluators outputs/evaluators/demo/synth0 [--samples 16] [--clips 4]

``--run`` gives the dataset and the clip split (its ``config.yaml``); ``--data DIR`` instead uses the default
split (:data:`ua3dtalk.data.splits.SYNTH_SPLIT`). Without ``--evaluators`` only PSNR is scored.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np

#: idle coefficients that wander at random (eye_open, also idle, carries the blinks: the model is given them)
WANDER = ("brow_inner_up", "brow_outer_up", "cheek_raise", "smile")


def draw_expressions(clip_dir: Path, samples: int, rng: np.random.Generator, label: bool = True) -> np.ndarray:
    """``[samples, N, K]`` expression tracks of a generated clip with idle wanders and emotion envelopes drawn
    from ``rng`` (articulation, blinks, emotion and intensity of the clip; the generator's clipping to the
    coefficient bounds). Given the clip's own expression stream, the first draw is the clip's ``expr.npy``.
    ``label=False``: the emotion and intensity are not known either; draw ``s`` takes cell ``s mod 24`` of the
    set's 8 emotions × 3 intensities (its uniform distribution, stratified)."""
    from ua3dtalk.constants import EMOTIONS
    from ua3dtalk.data.synth.head import EXPR_NAMES
    from ua3dtalk.data.synth.speech import EXPR_MAX, EXPR_MIN, emotion_envelope, emotion_prototype, idle_track

    meta = json.loads((clip_dir / "synth.json").read_text())
    expr = np.load(clip_dir / "expr.npy").astype(np.float64)
    emo_path = clip_dir / "expr_emotion.npy"
    neutral = expr - (np.load(emo_path) if emo_path.is_file() else 0.0)  # clip(articulation + idle)
    n = len(expr)
    emotion, intensity = meta.get("emotion", "neutral"), int(meta.get("intensity", 1))
    cells = [(e, k) for e in EMOTIONS for k in (1, 2, 3)]
    cols = [EXPR_NAMES.index(k) for k in WANDER]
    out = np.empty((samples, n, len(EXPR_NAMES)), np.float32)
    for s in range(samples):
        if not label:
            emotion, intensity = cells[s % len(cells)]
        proto = emotion_prototype(emotion, intensity)  # zeros for neutral
        idle = idle_track(n, rng)  # the generator's draw order: idle wander, then the envelope
        env = emotion_envelope(n, rng)
        base = neutral.copy()
        base[:, cols] = np.clip(idle[:, cols], EXPR_MIN[cols], EXPR_MAX[cols])  # no articulation on these
        e = base + env[:, None] * proto[None]
        out[s] = np.clip(e, EXPR_MIN, EXPR_MAX) if proto.any() else base
    return out


def _psnr(mse: np.ndarray) -> np.ndarray:
    return -10.0 * np.log10(np.maximum(mse, 1e-12))


def clip_ceiling(clip, samples: int, seed: int = 0, label: bool = True) -> dict:
    """The three predictions of one clip (``ClipInfo`` of a generated clip): float frames ``[N,3,H,W]`` in
    [0,1] in the clip's frame order, and the per-frame PSNR of the posterior mean corrected for the finite
    number of draws."""
    import torch

    from ua3dtalk.data.formats import read_image_array
    from ua3dtalk.data.synth.generate import render_clip

    d = Path(clip.root)
    ids = np.asarray(clip.img_ids)
    gt = np.stack([read_image_array(clip.image_path(j), "RGB") for j in range(len(clip))]).astype(np.float64) / 255
    draws = draw_expressions(d, samples, np.random.default_rng(seed), label)
    acc = acc2 = None
    for ex in draws:
        f = render_clip(d, ex)[0][ids].astype(np.float64) / 255
        acc = f if acc is None else acc + f
        acc2 = f * f if acc2 is None else acc2 + f * f
    mean = acc / samples
    var = np.maximum(acc2 / samples - mean * mean, 0.0) * samples / max(samples - 1, 1)  # unbiased, per pixel
    mse = ((gt - mean) ** 2).mean((1, 2, 3))
    # E‖gt − mean_K‖² = E‖gt − E[img]‖² + E‖mean_K − E[img]‖²: remove the second term (variance of the mean)
    corrected = np.maximum(mse - var.mean((1, 2, 3)) / samples, 1e-12)
    sharp = render_clip(d, draws.mean(0))[0][ids].astype(np.float64) / 255
    exact = render_clip(d)[0][ids].astype(np.float64) / 255

    def t(a):
        return torch.from_numpy(np.ascontiguousarray(a.transpose(0, 3, 1, 2))).float()

    return {"gt": t(gt), "mean": t(mean), "sharp": t(sharp), "exact": t(exact),
            "psnr_mean_corrected": _psnr(corrected), "spread_px": float(np.sqrt(var.mean()) * 255)}


def _clips(a):
    from ua3dtalk.cli.evaluators import evaluator_split
    from ua3dtalk.data.loading import load_dataset
    from ua3dtalk.data.splits import SYNTH_SPLIT

    split = dict(SYNTH_SPLIT)
    data = a.data
    if a.run is not None:
        from omegaconf import OmegaConf

        cfg_path = a.run / "config.yaml"
        if not cfg_path.is_file():
            raise FileNotFoundError(f"--run {a.run}: no config.yaml (not a training run directory)")
        cfg = OmegaConf.load(cfg_path)
        split = {k: type(v)(cfg.data.get(k, v)) for k, v in SYNTH_SPLIT.items()}
        if data is None:
            data = Path(str(cfg.data.root))
    if data is None or not Path(data).is_dir():
        raise FileNotFoundError(f"dataset {data}: no such directory (give --data DIR or a --run whose data exists)")
    test = evaluator_split(load_dataset(data), "evaluator", split)[1]
    return test[: a.clips] if a.clips else test


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", type=Path, help="a training run directory (its dataset and clip split)")
    ap.add_argument("--data", type=Path, help="the synthetic subject directory (…/synth0); default split")
    ap.add_argument("--evaluators", type=Path, help="evaluator directory (LMD); without it only PSNR")
    ap.add_argument("--samples", type=int, default=16, help="draws per clip (default 16, ≥ 2)")
    ap.add_argument("--clips", type=int, default=0, help="only the first N test clips (default all)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--emotion", choices=("label", "unknown"), default="label",
                    help="label (default): each clip's own emotion and intensity are known; unknown: drawn from the "
                         "set's 24 cells as well (a model that hears no emotion in the audio)")
    a = ap.parse_args(argv)
    if a.run is None and a.data is None:
        ap.error("give --run RUN or --data DIR")
    if a.samples < 2:
        ap.error("--samples must be ≥ 2")
    try:
        clips = _clips(a)
        if not clips:
            raise ValueError("the split has no test clip")
        missing = [c.clip_id for c in clips if not (Path(c.root) / "synth.json").is_file()]
        if missing:
            raise ValueError(f"{missing[0]}: not a generated synthetic clip (no synth.json)")
    except (OSError, ValueError) as e:
        print(f"heldout_ceiling: {e}", file=sys.stderr)
        return 2

    import torch

    from ua3dtalk.metrics.image import psnr_per_frame
    from ua3dtalk.metrics.suite import MetricSuite

    suites = {}
    if a.evaluators is not None:
        from ua3dtalk.metrics.evaluator_dir import load_evaluators

        ev = load_evaluators(a.evaluators, "lmd")
        suites = {k: MetricSuite(ev, "lmd", warn=False) for k in ("mean", "sharp", "exact")}
    psnr = {k: [] for k in ("mean", "mean_corrected", "sharp", "exact")}
    spread = []
    print(f"{len(clips)} test clips, {a.samples} draws each, emotion {a.emotion}", flush=True)
    for i, c in enumerate(clips):
        r = clip_ceiling(c, a.samples, a.seed + i, a.emotion == "label")
        lms = torch.from_numpy(np.stack([c.landmarks(j) for j in range(len(c))])).float()
        for k in ("mean", "sharp", "exact"):
            psnr[k].append(psnr_per_frame(r[k], r["gt"]).numpy())
            if suites:
                suites[k].update(r[k], r["gt"], landmarks=lms, name=c.clip_id)
        psnr["mean_corrected"].append(r["psnr_mean_corrected"])
        spread.append(r["spread_px"])
        print(f"  {c.clip_id}: posterior mean {psnr['mean_corrected'][-1].mean():.2f} dB, mean expression "
              f"{psnr['sharp'][-1].mean():.2f}, exact {psnr['exact'][-1].mean():.2f} "
              f"(draws' pixel spread {spread[-1]:.2f}/255)", flush=True)
    lmd = {k: s.compute().get("lmd", math.nan) for k, s in suites.items()}
    rows = [("posterior mean image (corrected for the draws)", "mean_corrected", "mean"),
            ("mean expression (sharp)", "sharp", "sharp"), ("exact expression (JPEG only)", "exact", "exact")]
    print("\n| prediction | PSNR, dB | LMD, px |\n|---|--:|--:|")
    for name, pk, lk in rows:
        p = float(np.concatenate(psnr[pk]).mean())
        print(f"| {name} | {p:.2f} | {lmd.get(lk, math.nan):.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
