"""How much emotion the prior's style view carries: a linear probe of the emotion label from f_style.

For each ``recon_dims`` option of the prior (``all`` = the paper's L_recon over every expression
coefficient, ``non_emotional`` = without the coefficients the dataset marks emotional, DESIGN §4.3) and each
seed, one ``prior`` stage is trained through ``ua3dtalk-train`` (``scale=tiny``, log-mel context, ``--steps``
steps, batch ``--batch``) on the `tiny` emotional synthetic set generated with ``--clips-per-level`` clips per
emotion × intensity (3: 72 clips of 1.2 s at 64²; per emotion 3 evaluator, 2 test, 1 val, 3 train clips).
Then f_style of every frame is computed with the trained prior in eval mode and a multinomial logistic
regression (standardised features, L2 ``--l2``, L-BFGS) is fitted on the frames of the prior's *training*
clips and scored on the frames of the *held-out* clips (val, test and evaluator roles: never seen by the
prior nor by the probe). Reported per option: frame accuracy, clip accuracy (mean softmax per clip) and the
prior's ``val/prior_mouth_mse`` (the option must not cost the articulation), mean ± std over the seeds;
chance is 1/8. With 3 training clips per emotion the probe is a noisy measure, so the table also gives
``emo_share``: the share of f_style's variance (per standardised channel, averaged) that the emotion label
explains over the held-out frames (:func:`~ua3dtalk.models.prior.losses.emotion_invariance_penalty`; 0 =
no class differences, 1 = the label determines f_style; independent frames would give ≈ 7/1440, but the
frames of a clip share their features, so compare with the untrained prior's row, ≈ 0.16). References: the
same measures on the untrained prior's f_style and on the raw audio context (time mean and std of the 50
context frames).

    python benchmarks/style_emotion_probe.py [--steps 150] [--seeds 0,1,2] [--out /tmp/style_probe]
                                             [--data-dir DIR] [--clips-per-level 3] [--modes all,non_emotional]
                                             [--reuse]

``--reuse`` takes a run's checkpoint from ``<out>`` when it exists instead of training it again.

The dataset is generated on first use under ``--data-dir`` (default ``<out>/data``), with log-mel features.
Prints a table and writes ``<out>/probe.json``.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch


def fit_probe(xtr: torch.Tensor, ytr: torch.Tensor, l2: float = 1e-2, n_classes: int = 8):
    """Multinomial logistic regression on standardised features (L-BFGS, L2 on the weights) → predict_proba."""
    mu, sd = xtr.mean(0), xtr.std(0).clamp_min(1e-6)
    z = ((xtr - mu) / sd).double()
    w = torch.zeros(z.shape[1], n_classes, dtype=torch.float64, requires_grad=True)
    b = torch.zeros(n_classes, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], lr=1, max_iter=500, tolerance_grad=1e-9, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(z @ w + b, ytr) + l2 * w.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    w, b = w.detach(), b.detach()
    return lambda x: torch.softmax(((x - mu) / sd).double() @ w + b, -1)


def probe_scores(feats: dict, l2: float) -> dict:
    """``feats[role] = (x [M,D], y [M], clip [M])`` → frame / clip accuracy on the held-out roles and the
    between-class variance share of the held-out features."""
    from ua3dtalk.models.prior.losses import emotion_invariance_penalty

    xtr, ytr, _ = feats["train"]
    proba = fit_probe(xtr, ytr, l2)
    xs = torch.cat([feats[r][0] for r in feats if r != "train"])
    ys = torch.cat([feats[r][1] for r in feats if r != "train"])
    cs = [c for r in feats if r != "train" for c in feats[r][2]]
    p = proba(xs)
    frame = float((p.argmax(-1) == ys).double().mean())
    clips = sorted(set(cs))
    hits = []
    for c in clips:
        m = torch.tensor([ci == c for ci in cs])
        hits.append(float(p[m].mean(0).argmax() == ys[m][0]))
    return {"frame_acc": frame, "clip_acc": sum(hits) / len(hits), "frames": int(len(ys)), "clips": len(clips),
            "emo_share": float(emotion_invariance_penalty(xs.double(), ys))}


@torch.no_grad()
def features(dm, prior) -> tuple[dict, dict]:
    """Per role: f_style and the raw-context reference features of every frame of its clips."""
    from torch.utils.data import DataLoader

    from ua3dtalk.data.batch import collate_batches
    from ua3dtalk.data.datasets import AudioFrameDataset, all_positions

    style, raw = {}, {}
    for role, clips in dm.split_clips.items():
        if not clips:
            continue
        ds = AudioFrameDataset(clips, all_positions(clips), dm.feature_name, segment_seconds=0.0,
                               context=dm.context, lip=False, context_feature=dm._context_arg())
        xs, rs, ys, cs = [], [], [], []
        for b in DataLoader(ds, batch_size=256, collate_fn=collate_batches):
            xs.append(prior.style(b.context) if prior is not None else b.context.mean(1))
            rs.append(torch.cat([b.context.mean(1), b.context.std(1)], -1))
            ys.append(b.emotion)
            cs += list(b.clip_id)
        y = torch.cat(ys)
        style[role] = (torch.cat(xs).float(), y, cs)
        raw[role] = (torch.cat(rs).float(), y, cs)
    return style, raw


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--modes", default="all,non_emotional")
    ap.add_argument("--l2", type=float, default=1e-2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default="/tmp/style_probe")
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--clips-per-level", type=int, default=3)
    ap.add_argument("--reuse", action="store_true")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    import lightning as L

    from ua3dtalk.callbacks.checkpoint import load_model_checkpoint
    from ua3dtalk.cli.train import build_datamodule, build_model, compose, fill_data_info, run

    out = Path(args.out)
    data_dir = Path(args.data_dir) if args.data_dir else out / "data"
    root = data_dir / f"synth_tiny_emotional_cpl{args.clips_per_level}" / "synth0"
    if not root.exists():
        from ua3dtalk.data.synth.generate import cache_features, generate_emotional

        subject = generate_emotional(root.parent, "tiny", seed=0, clips_per_level=args.clips_per_level)
        cache_features(subject, ["mel"])
    seeds = [int(s) for s in args.seeds.split(",")]
    modes = args.modes.split(",")
    rows: dict[str, list[dict]] = {m: [] for m in ["init", "raw_context", *modes]}
    for seed in seeds:
        for mode in modes:
            ov = ["scale=tiny", "stages=[prior]", f"stage_steps.prior={args.steps}", f"seed={seed}",
                  f"val_every={args.steps}", f"data.audio_batch_size={args.batch}", "data.limit_val_frames=null",
                  f"paths.run_dir={out / f'{mode}_seed{seed}'}", f"model.prior.recon_dims={mode}",
                  f"data.root={root}"]
            cfg = compose(ov)
            prev = out / f"{mode}_seed{seed}" / "metrics.json"
            metrics = json.loads(prev.read_text()) if args.reuse and prev.is_file() else run(cfg)
            dm = build_datamodule(cfg)
            fill_data_info(cfg, dm)
            model = build_model(cfg, "prior")
            if mode == modes[0]:  # references: the untrained prior (this seed's initialisation), the raw context
                L.seed_everything(seed, verbose=False)
                init = build_model(cfg, "prior").prior.eval()
                st, raw = features(dm, init)
                rows["init"].append(probe_scores(st, args.l2))
                if seed == seeds[0]:
                    rows["raw_context"].append(probe_scores(raw, args.l2))
            load_model_checkpoint(model, metrics["checkpoint"])
            prior = model.prior.eval()
            st, _ = features(dm, prior)
            r = probe_scores(st, args.l2)
            r.update(mouth_mse=float(metrics.get("val/prior_mouth_mse", float("nan"))), seed=seed,
                     recon_dims=list(prior.recon_dims), emotional_dims=list(prior.emotional_dims or []))
            rows[mode].append(r)
            print(f"[{mode} seed {seed}] frame acc {r['frame_acc']:.3f}, clip acc {r['clip_acc']:.3f}, "
                  f"emo_share {r['emo_share']:.3f}, "
                  f"val/prior_mouth_mse {r['mouth_mse']:.4f}, L_recon columns {r['recon_dims']}", flush=True)

    def ms(vals):
        return (f"{statistics.mean(vals):.3f} ± {statistics.stdev(vals):.3f}" if len(vals) > 1
                else f"{vals[0]:.3f}")

    print(f"\nlinear probe of the emotion (8 classes, chance 0.125) on held-out clips; prior {args.steps} steps, "
          f"seeds {seeds}")
    print(f"{'features':<34} {'frame acc':>14} {'clip acc':>14} {'emo_share':>14} {'val/prior_mouth_mse':>20}")
    for name, rs in rows.items():
        if not rs:
            continue
        label = {"init": "f_style, untrained prior", "raw_context": "raw context (mean, std)"}.get(
            name, f"f_style, recon_dims={name}")
        mm = ms([r["mouth_mse"] for r in rs]) if "mouth_mse" in rs[0] else "-"
        print(f"{label:<34} {ms([r['frame_acc'] for r in rs]):>14} {ms([r['clip_acc'] for r in rs]):>14} "
              f"{ms([r['emo_share'] for r in rs]):>14} {mm:>20}")
    out.mkdir(parents=True, exist_ok=True)
    (out / "probe.json").write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.path.insert(0, "src")
    raise SystemExit(main())
