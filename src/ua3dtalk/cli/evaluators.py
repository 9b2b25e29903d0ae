"""``ua3dtalk-evaluators``: train the metric evaluators on a dataset's ground truth (DESIGN §8, issue 5).

    ua3dtalk-evaluators train --data DATASET --out data/evaluators/<name>
                              [--only landmark,expression,emotion,syncnet] [--epochs 30]
                              [--sync-steps 400] [--sync-batch 32] [--seed 0] [--threads 1]
                              [--clips evaluator|all] [--evaluator-fraction F --val-fraction F
                               --test-fraction F --split-seed S]

Trains, with progress bars, on the *evaluator clips* of ``DATASET`` (DESIGN §5.5): for an emotional
dataset the clips :func:`~ua3dtalk.data.splits.split_emotional_clips` reserves for the evaluators (the
split fractions default to the synthetic configs', :data:`~ua3dtalk.data.splits.SYNTH_SPLIT`, and must
match the avatar's ``data.*_fraction``), never the avatar's train/val/test clips; ``--clips all`` trains
on every clip (then ``ua3dtalk-eval`` refuses to score any of them). A regular dataset is one clip. The
manifest records the clips (``clips``), which ``ua3dtalk-eval`` and the metrics callback compare with the
clips they score. Evaluators:

* the landmark regressor (``.lms`` targets; LMD, F-LMD, blink error, ``efid_landmark``),
* the expression regressor (``expr.npy`` targets; ``efid_regressor``) — skipped when there is no expr.npy,
* the emotion classifier (``emotion.json`` labels; Acc_emo) — skipped for a dataset without labels,
* SyncNet (:meth:`~ua3dtalk.metrics.syncnet.SyncNetConfig.small`, on video + ``aud.wav``; Sync-C/D),

and writes them into ``--out`` in the layout :func:`ua3dtalk.metrics.evaluator_dir.load_evaluators` reads, with
``manifest.json`` (dataset, clips, settings, held-out reports, seconds). The crop networks hold out whole
evaluator clips for early reports (:func:`~ua3dtalk.metrics.ground_truth.holdout_mask`). The emotion
classifier is also scored on the dataset's *test* clips' ground-truth frames (seen by neither the
evaluators nor the avatar) — ``emotion_checks.heldout_acc`` — and, on synthetic data, on the same clips
re-rendered with a neutral face but their own pose, speech articulation and blinks
(:func:`~ua3dtalk.data.synth.generate.render_neutral_twin`) — ``emotion_checks.shortcut_acc``, which
must be at chance (± 0.05) for the classifier to read the face rather than pose or mouth amplitude.
SyncNet is scored on the same test clips' ground truth with their own audio and with another clip's
(``sync_checks``: the Sync-C a perfect avatar would get, and that of mismatched audio).

    ua3dtalk-evaluators show DIR      print the manifest of an evaluator directory
    ua3dtalk-evaluators check DIR --data DATASET   the held-out checks of DIR, printed (writes nothing)
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Optional

from .args import Parser, int_in

KINDS = ("landmark", "expression", "emotion", "syncnet")


def _parser(split_options: bool = True) -> argparse.ArgumentParser:
    """The parser; ``split_options=False`` leaves out the clip-split options of ``train`` (their defaults,
    :data:`~ua3dtalk.data.splits.SYNTH_SPLIT`, import the data package and torch), which only ``train`` reads."""
    p = Parser(prog="ua3dtalk-evaluators", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train", help="train evaluators on a dataset's ground truth")
    t.add_argument("--data", required=True, help="dataset directory (regular or emotional layout)")
    t.add_argument("--out", required=True, help="output directory, e.g. data/evaluators/synth_small")
    t.add_argument("--only", default=",".join(KINDS), help=f"comma-separated subset of {','.join(KINDS)}")
    t.add_argument("--epochs", type=int_in(1), default=30, help="epochs of the crop networks (default 30)")
    t.add_argument("--batch-size", type=int_in(1), default=64, help="batch size of the crop networks")
    t.add_argument("--sync-steps", type=int_in(1), default=400, help="SyncNet training steps (default 400)")
    t.add_argument("--sync-batch", type=int_in(2), default=32, help="SyncNet batch size (default 32)")
    t.add_argument("--seed", type=int_in(0), default=0)
    t.add_argument("--threads", type=int_in(0, 256), default=1,
                   help="torch threads while training (default 1: fastest for these small nets on a shared CPU)")
    t.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    t.add_argument("--clips", default="evaluator", choices=("evaluator", "all"),
                   help="train on the clips reserved for the evaluators (default) or on every clip")
    for k, v in (_synth_split() if split_options else {}).items():
        t.add_argument(f"--{k.replace('_', '-')}", type=type(v), default=v,
                       help=f"clip split of an emotional dataset (default {v}; as the avatar's data.{k})")
    s = sub.add_parser("show", help="print the manifest of an evaluator directory")
    s.add_argument("dir")
    c = sub.add_parser("check", help="score an evaluator directory's emotion classifier and SyncNet on the "
                                     "dataset's held-out test clips (prints JSON; writes nothing)")
    c.add_argument("dir")
    c.add_argument("--data", required=True, help="the dataset the evaluators were trained on")
    return p


def check_evaluators(directory, data) -> dict:
    """``emotion_checks`` and ``sync_checks`` of an existing evaluator directory on the held-out (test) clips
    of ``data``, split as its manifest records (for directories trained before a check existed)."""
    from ..data.loading import load_dataset
    from ..data.splits import clip_key
    from ..metrics.evaluator_dir import load_evaluators, read_manifest

    manifest = read_manifest(directory)
    if manifest is None:
        raise FileNotFoundError(f"no manifest.json in {directory}")
    data = Path(data)
    if not data.exists():
        raise FileNotFoundError(f"--data: dataset directory not found: {data}")
    train, heldout = evaluator_split(load_dataset(data), manifest.get("clips_role") or "evaluator",
                                     manifest.get("split"))
    if {clip_key(c) for c in train} != set(manifest.get("clips") or []):
        raise ValueError(f"--data: the evaluator clips of {data} are not those {directory} was trained on "
                         "(another dataset or split)")
    ev = load_evaluators(directory, metrics="acc_emo,sync")
    out = {}
    if ev.emotion is not None:
        out["emotion_checks"] = emotion_checks(ev.emotion, heldout)
    if ev.syncnet is not None:
        out["sync_checks"] = sync_checks(ev.syncnet, heldout)
    return out


def _synth_split() -> dict:
    from ..data.splits import SYNTH_SPLIT

    return SYNTH_SPLIT


def evaluator_split(dataset, clips: str = "evaluator", split: Optional[dict] = None):
    """``(train_clips, heldout_clips)`` of a loaded dataset for the evaluators: the ``evaluator`` role of
    :func:`~ua3dtalk.data.splits.split_emotional_clips` (``split``: its fractions and seed, default
    :data:`SYNTH_SPLIT`) and the ``test`` role (scored by neither), or every clip (``clips="all"``; no
    held-out clips). A regular dataset is one clip, trained on whole."""
    from ..data.clip import ClipInfo, iter_clips
    from ..data.splits import split_emotional_clips

    every = iter_clips(dataset)
    if clips not in ("evaluator", "all"):
        raise ValueError(f"--clips must be 'evaluator' or 'all', got {clips!r}")
    if clips == "all" or isinstance(dataset, ClipInfo):
        return every, []
    sp = {**_synth_split(), **(split or {})}
    roles = split_emotional_clips(every, sp["val_fraction"], seed=sp["split_seed"], test_fraction=sp["test_fraction"],
                                  evaluator_fraction=sp["evaluator_fraction"])
    if not roles["evaluator"]:
        raise ValueError(f"no clip of {len(every)} is reserved for the evaluators (evaluator_fraction="
                         f"{sp['evaluator_fraction']}; every emotion needs ≥ 4 clips to spare one for them): "
                         "use a dataset with more clips per emotion, or --clips all (then these clips cannot be "
                         "scored with these evaluators)")
    return [every[i] for i in roles["evaluator"]], [every[i] for i in roles["test"]]


def emotion_checks(classifier, heldout, *, progress: bool = False) -> dict:
    """The emotion classifier on clips neither it nor the avatar saw: accuracy on their ground-truth
    frames (``heldout_acc``) and, for synthetic clips that can be re-rendered with a neutral face but their
    own pose and speech (:func:`~ua3dtalk.data.synth.generate.render_neutral_twin`), on those renders
    against the clips' labels (``shortcut_acc``: chance ± 0.05 means the classifier reads the face, not the
    head pose or the mouth's amplitude). Empty without held-out clips."""
    import torch

    from .. import metrics as ev

    if not heldout:
        return {}
    gt = ev.load_ground_truth(list(heldout), progress=progress)
    box_scale = classifier.config.box_scale
    acc = ev.emotion_accuracy(classifier, gt.images(), gt.boxes(box_scale), gt.emotion, gt.clip)
    labels = sorted(set(gt.emotion.tolist()))
    rec = {"heldout_clips": len(heldout), "heldout_frames": len(gt), "heldout_acc": acc["acc_emo"],
           "heldout_acc_clip": acc["acc_emo_clip"], "chance": 1.0 / max(1, len(labels)),
           "heldout_emotions": [classifier.config.class_names[k] for k in labels]}
    try:
        from ..data.synth.generate import render_neutral_twin
    except ImportError:  # pragma: no cover - the generator ships with the package
        return rec
    frames, lms, lab, cl = [], [], [], []
    for i, c in enumerate(heldout):
        if not (c.root / "synth.json").is_file():
            continue
        try:
            f, lm = render_neutral_twin(c.root)
        except (FileNotFoundError, ValueError, KeyError) as e:
            rec["shortcut_skipped"] = f"{c.clip_id}: {e}"
            return rec
        frames.append(torch.from_numpy(f).permute(0, 3, 1, 2).float() / 255.0)
        lms.append(torch.from_numpy(lm).float())
        lab += [int(c.emotion)] * len(f)
        cl += [i] * len(f)
    if frames:
        boxes = ev.face_boxes(torch.cat(lms), scale=box_scale)
        sc = ev.emotion_accuracy(classifier, torch.cat(frames), boxes, torch.tensor(lab), torch.tensor(cl))
        rec.update(shortcut_acc=sc["acc_emo"], shortcut_acc_clip=sc["acc_emo_clip"],
                   shortcut_ok=bool(abs(sc["acc_emo"] - rec["chance"]) <= 0.05))
    return rec


def sync_checks(syncnet, heldout) -> dict:
    """SyncNet on clips neither it nor the avatar saw, through the metric suite (the scoring every run's
    Sync-C/D gets): their ground-truth frames with their own audio — ``heldout_sync_c``, ``heldout_sync_d``,
    ``heldout_offset_ok`` (fraction of clips whose offset is within ±1 frame) — what a perfect avatar would
    score with these evaluators; and with the audio of another held-out clip (each clip with the next one's)
    — ``mismatched_sync_c``, ``mismatched_sync_d``: a SyncNet that tells sync apart gives the mismatched
    pairs a lower Sync-C. Empty with fewer than two held-out clips."""
    import torch

    from ..metrics.evaluator_dir import Evaluators
    from ..metrics.suite import MetricSuite
    from ..metrics.syncnet_training import clips_from_dataset

    from ..data.formats import DatasetError

    clips, skipped = [], {}
    for c in heldout or []:  # a clip SyncNet cannot read (no aud.wav, frames with gaps) is left out, named
        try:
            clips += clips_from_dataset([c])
        except DatasetError as e:
            skipped[str(getattr(c, "clip_id", c))] = str(e).splitlines()[-1].strip()
    if len(clips) < 2:
        return {"skipped_clips": skipped} if skipped else {}

    def frames(c):
        return c.frames if isinstance(c.frames, torch.Tensor) else torch.stack([c.frames(i) for i in
                                                                                 range(c.num_frames)])

    def score(pairs) -> list[dict]:
        suite = MetricSuite(Evaluators(syncnet=syncnet), metrics="sync", warn=False)
        out = []
        for c, audio, sr in pairs:
            f = frames(c)
            out.append(suite.update(f, f, landmarks=c.landmarks, audio=audio, sr=sr, name=c.name))
        return out

    own = score((c, c.audio, c.sr) for c in clips)
    other = score((c, clips[(i + 1) % len(clips)].audio, clips[(i + 1) % len(clips)].sr)
                  for i, c in enumerate(clips))
    mean = lambda rs, k: float(sum(r[k] for r in rs) / len(rs))  # noqa: E731
    return {"heldout_clips": len(clips), "heldout_sync_c": mean(own, "sync_c"), "heldout_sync_d": mean(own, "sync_d"),
            "heldout_offset_ok": float(sum(abs(r["sync_offset"]) <= 1 for r in own) / len(own)),
            "mismatched_sync_c": mean(other, "sync_c"), "mismatched_sync_d": mean(other, "sync_d"),
            **({"skipped_clips": skipped} if skipped else {})}


def train_evaluators(data, out, *, only=KINDS, epochs: int = 30, batch_size: int = 64, sync_steps: int = 400,
                     sync_batch: int = 32, seed: int = 0, threads: int = 1, progress: bool = True,
                     clips: str = "evaluator", split: Optional[dict] = None) -> dict:
    """Train the evaluators ``only`` on the evaluator clips of ``data`` (:func:`evaluator_split`) into
    ``out``; returns the manifest (also written to ``out/manifest.json`` atomically, after every evaluator
    so a partial run is documented)."""
    import torch

    from ..data.loading import load_dataset
    from ..data.splits import clip_key
    from .. import metrics as ev
    from ..metrics.evaluator_dir import EVALUATOR_DIRS, MANIFEST_FILE, SYNCNET_FILES
    from ..utils.io import atomic_write_json, check_output_dir

    only = tuple(only)
    bad = sorted(set(only) - set(KINDS))
    if bad or not only:
        raise ValueError(f"--only: unknown evaluator(s) {bad}; expected a subset of {', '.join(KINDS)}")
    data = Path(data)
    if not data.exists():
        raise FileNotFoundError(f"--data: dataset directory not found: {data}")
    out = check_output_dir(out, "--out", {"--data": data}, own=lambda d: (d / MANIFEST_FILE).is_file(),
                           what="evaluator directory")
    dataset = load_dataset(data)
    out.mkdir(parents=True, exist_ok=True)
    train_clips, heldout = evaluator_split(dataset, clips, split)
    manifest = {"dataset": str(data), "created": time.strftime("%Y-%m-%dT%H:%M:%S"), "seed": int(seed),
                "clips_role": clips, "split": None if clips == "all" else {**_synth_split(), **(split or {})},
                "clips": [clip_key(c) for c in train_clips], "heldout_clips": [clip_key(c) for c in heldout],
                "evaluators": {}, "skipped": {}}
    old_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(int(threads))
    try:
        gt = None
        if any(k in only for k in ("landmark", "expression", "emotion")):
            gt = ev.load_ground_truth(train_clips, progress=progress)
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
            if kind == "emotion":
                checks = emotion_checks(model, heldout, progress=progress)
                if checks:
                    manifest["emotion_checks"] = checks
                    print("ua3dtalk-evaluators: emotion classifier on held-out test clips: accuracy "
                          f"{checks['heldout_acc']:.3f} (chance {checks['chance']:.3f})"
                          + (f"; neutral-face shortcut check {checks['shortcut_acc']:.3f}"
                             if "shortcut_acc" in checks else ""))
            atomic_write_json(out / MANIFEST_FILE, manifest)
            print(f"ua3dtalk-evaluators: {kind}: wrote {path} "
                  + ", ".join(f"{k}={v:.4g}" for k, v in report.items() if isinstance(v, float)))
        if "syncnet" in only:
            from ..metrics.syncnet import SyncNetConfig
            from ..metrics.syncnet_training import clips_from_dataset, train_syncnet

            t0 = time.time()
            model = train_syncnet(clips_from_dataset(train_clips), SyncNetConfig.small(), steps=int(sync_steps),
                                  batch_size=int(sync_batch), out=out / SYNCNET_FILES[0], seed=int(seed),
                                  progress=progress)
            info = dict(model.training_info)
            info.pop("clips", None)
            manifest["evaluators"]["syncnet"] = {"path": SYNCNET_FILES[0], "config": model.config.to_dict(),
                                                 "report": info, "seconds": round(time.time() - t0, 1)}
            checks = sync_checks(model, heldout)
            if checks:
                manifest["sync_checks"] = checks
            atomic_write_json(out / MANIFEST_FILE, manifest)
            print(f"ua3dtalk-evaluators: syncnet: wrote {out / SYNCNET_FILES[0]} (final in-batch accuracy "
                  f"{info['final_acc']:.2f}, loss {info['final_loss']:.3f})"
                  + (f"; held-out ground truth: Sync-C {checks['heldout_sync_c']:.2f} with its own audio, "
                     f"{checks['mismatched_sync_c']:.2f} with another clip's" if "heldout_sync_c" in checks else "")
                  + (f"; held-out clips left out of the check: {checks['skipped_clips']}"
                     if checks.get("skipped_clips") else ""))
    finally:
        torch.set_num_threads(old_threads)
    atomic_write_json(out / MANIFEST_FILE, manifest)
    return manifest


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _parser(split_options="train" in argv).parse_args(argv)
    try:
        if args.cmd == "show":
            from ..metrics.evaluator_dir import read_manifest

            m = read_manifest(args.dir)
            if m is None:
                raise FileNotFoundError(f"no manifest.json in {args.dir}")
            print(json.dumps(m, indent=2))
            return 0
        if args.cmd == "check":
            print(json.dumps(check_evaluators(args.dir, args.data), indent=2))
            return 0
        only = tuple(k.strip() for k in args.only.split(",") if k.strip())
        m = train_evaluators(args.data, args.out, only=only, epochs=args.epochs, batch_size=args.batch_size,
                             sync_steps=args.sync_steps, sync_batch=args.sync_batch, seed=args.seed,
                             threads=args.threads, progress=not args.no_progress, clips=args.clips,
                             split={k: getattr(args, k) for k in _synth_split()})
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
