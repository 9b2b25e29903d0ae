"""``ua3dtalk-evaluators``: train the metric evaluators on a dataset's ground truth (DESIGN §8, issue 5).

    ua3dtalk-evaluators train --data DATASET --out data/evaluators/<name>
                              [--only landmark,expression,emotion,syncnet] [--epochs 30]
                              [--sync-steps 400] [--sync-batch 32] [--seed 0] [--threads 1]

Trains, with progress bars, on every clip of ``DATASET`` (regular or emotional layout, DESIGN §5):

* the landmark regressor (``.lms`` targets; LMD, F-LMD, blink error, ``efid_landmark``),
* the expression regressor (``expr.npy`` targets; ``efid_regressor``) — skipped when there is no expr.npy,
* the emotion classifier (``emotion.json`` labels; Acc_emo) — skipped for a dataset without labels,
* SyncNet (:meth:`~ua3dtalk.metrics.syncnet.SyncNetConfig.small`, on video + ``aud.wav``; Sync-C/D),

and writes them into ``--out`` in the layout :func:`ua3dtalk.metrics.suite.load_evaluators` reads, with
``manifest.json`` (dataset, settings, held-out reports, seconds). The crop networks hold out whole clips
(:func:`~ua3dtalk.metrics.evaluators.holdout_mask`); their reports give the held-out errors.

    ua3dtalk-evaluators show DIR      print the manifest of an evaluator directory
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

KINDS = ("landmark", "expression", "emotion", "syncnet")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ua3dtalk-evaluators", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train", help="train evaluators on a dataset's ground truth")
    t.add_argument("--data", required=True, help="dataset directory (regular or emotional layout)")
    t.add_argument("--out", required=True, help="output directory, e.g. data/evaluators/synth_small")
    t.add_argument("--only", default=",".join(KINDS), help=f"comma-separated subset of {','.join(KINDS)}")
    t.add_argument("--epochs", type=int, default=30, help="epochs of the crop networks (default 30)")
    t.add_argument("--batch-size", type=int, default=64, help="batch size of the crop networks")
    t.add_argument("--sync-steps", type=int, default=400, help="SyncNet training steps (default 400)")
    t.add_argument("--sync-batch", type=int, default=32, help="SyncNet batch size (default 32)")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--threads", type=int, default=1,
                   help="torch threads while training (default 1: fastest for these small nets on a shared CPU)")
    t.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    s = sub.add_parser("show", help="print the manifest of an evaluator directory")
    s.add_argument("dir")
    return p


def train_evaluators(data, out, *, only=KINDS, epochs: int = 30, batch_size: int = 64, sync_steps: int = 400,
                     sync_batch: int = 32, seed: int = 0, threads: int = 1, progress: bool = True) -> dict:
    """Train the evaluators ``only`` on ``data`` into ``out``; returns the manifest (also written to
    ``out/manifest.json`` atomically, after every evaluator so a partial run is documented)."""
    import torch

    from ..data.formats import load_dataset
    from ..metrics import evaluators as ev
    from ..metrics.suite import EVALUATOR_DIRS, MANIFEST_FILE, SYNCNET_FILES
    from ..utils.io import atomic_write_json

    only = tuple(only)
    bad = sorted(set(only) - set(KINDS))
    if bad or not only:
        raise ValueError(f"--only: unknown evaluator(s) {bad}; expected a subset of {', '.join(KINDS)}")
    data = Path(data)
    if not data.exists():
        raise FileNotFoundError(f"--data: dataset directory not found: {data}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    dataset = load_dataset(data)
    manifest = {"dataset": str(data), "created": time.strftime("%Y-%m-%dT%H:%M:%S"), "seed": int(seed),
                "evaluators": {}, "skipped": {}}
    old_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(int(threads))
    try:
        gt = None
        if any(k in only for k in ("landmark", "expression", "emotion")):
            gt = ev.load_ground_truth(dataset, progress=progress)
        tc = ev.TrainConfig(epochs=int(epochs), batch_size=int(batch_size), seed=int(seed), progress=progress,
                            num_threads=int(threads) if threads else None)
        fits = {"landmark": ev.fit_landmark_regressor, "expression": ev.fit_expression_regressor,
                "emotion": ev.fit_emotion_classifier}
        for kind in ("landmark", "expression", "emotion"):
            if kind not in only:
                continue
            if kind == "expression" and gt.expr is None:
                manifest["skipped"][kind] = "the dataset has no expr.npy (expression targets)"
                print(f"ua3dtalk-evaluators: skipping the expression regressor: {manifest['skipped'][kind]}")
                continue
            if kind == "emotion" and (bool((gt.emotion < 0).any()) or len(set(gt.emotion.tolist())) < 2):
                manifest["skipped"][kind] = "needs an emotional dataset with ≥ 2 emotion labels (emotion.json)"
                print(f"ua3dtalk-evaluators: skipping the emotion classifier: {manifest['skipped'][kind]}")
                continue
            t0 = time.time()
            model, report = fits[kind](gt, train=tc)
            path = model.save(out / EVALUATOR_DIRS[kind])
            manifest["evaluators"][kind] = {"path": EVALUATOR_DIRS[kind], "kind": model.kind, "epochs": int(epochs),
                                            "report": report, "seconds": round(time.time() - t0, 1)}
            atomic_write_json(out / MANIFEST_FILE, manifest)
            print(f"ua3dtalk-evaluators: {kind}: wrote {path} "
                  + ", ".join(f"{k}={v:.4g}" for k, v in report.items() if isinstance(v, float)))
        if "syncnet" in only:
            from ..metrics.syncnet import SyncNetConfig, clips_from_dataset, train_syncnet

            t0 = time.time()
            clips = clips_from_dataset(dataset)
            model = train_syncnet(clips, SyncNetConfig.small(), steps=int(sync_steps), batch_size=int(sync_batch),
                                  out=out / SYNCNET_FILES[0], seed=int(seed), progress=progress)
            info = dict(model.training_info)
            info.pop("clips", None)
            manifest["evaluators"]["syncnet"] = {"path": SYNCNET_FILES[0], "config": model.config.to_dict(),
                                                 "report": info, "seconds": round(time.time() - t0, 1)}
            atomic_write_json(out / MANIFEST_FILE, manifest)
            print(f"ua3dtalk-evaluators: syncnet: wrote {out / SYNCNET_FILES[0]} (final in-batch accuracy "
                  f"{info['final_acc']:.2f}, loss {info['final_loss']:.3f})")
    finally:
        torch.set_num_threads(old_threads)
    atomic_write_json(out / MANIFEST_FILE, manifest)
    return manifest


def main(argv=None) -> int:
    args = _parser().parse_args(sys.argv[1:] if argv is None else argv)
    try:
        if args.cmd == "show":
            p = Path(args.dir) / "manifest.json"
            if not p.is_file():
                raise FileNotFoundError(f"no manifest.json in {args.dir}")
            print(json.dumps(json.loads(p.read_text()), indent=2))
            return 0
        only = tuple(k.strip() for k in args.only.split(",") if k.strip())
        m = train_evaluators(args.data, args.out, only=only, epochs=args.epochs, batch_size=args.batch_size,
                             sync_steps=args.sync_steps, sync_batch=args.sync_batch, seed=args.seed,
                             threads=args.threads, progress=not args.no_progress)
        print(f"ua3dtalk-evaluators: wrote {Path(args.out) / 'manifest.json'} "
              f"({', '.join(m['evaluators']) or 'nothing'} trained)")
    except Exception as e:  # noqa: BLE001 - CLI: one clear line, exit code 2
        from ..data.formats import DatasetError
        from ..metrics.evaluators import EvaluatorError

        if isinstance(e, (ValueError, FileNotFoundError, DatasetError, EvaluatorError)):
            print(f"ua3dtalk-evaluators: error: {e}", file=sys.stderr)
            return 2
        raise
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
