"""``ua3dtalk-eval``: render a split of the dataset with a trained checkpoint and score it (DESIGN §8).

    ua3dtalk-eval ckpt=RUN|FILE.ckpt [data=DATASET] [evaluators=DIR] [split=test|val]
                  [out=DIR] [metrics=psnr,ssim,...|all] [lpips_random_backbone=true] [syncnet=PATH]
                  [threedmm=PATH] [max_clips=N] [max_frames=N] [backend=auto] [control=true]
                  [emotion=audio|label] [allow_overlap=true]

``ckpt=RUN`` (a run directory) scores the run's best checkpoint by validation (else its last one; the command
says which, :func:`ua3dtalk.cli.infer.resolve_checkpoint`). The model is rebuilt from the configuration stored
in the checkpoint (:func:`ua3dtalk.cli.infer.load_model`,
fuse stage). The data split comes from the run's ``config.yaml`` (next to ``checkpoints/``) when present —
the same clips the run held out — else from the checkpoint's data settings; ``data=`` replaces the dataset
root. Every clip of the split is rendered in frame order (driven by its own audio) and scored with
:class:`~ua3dtalk.metrics.suite.MetricSuite`; ``out/metrics.json`` (default: the run directory, else the
checkpoint's directory) receives ``<split>/<metric>`` keys, the evaluator of each and per-clip values,
written atomically.

Evaluation protocol (DESIGN §5.5): the clips the evaluator directory was trained on (its manifest's
``clips``) must not include any clip of the scored split; an overlap — or an evaluator directory that does
not record its clips — is refused with the clips named, before anything is rendered. ``allow_overlap=true``
scores anyway and the record says so. ``metrics.json`` gets ``eval_protocol``: ``evaluator_clips``,
``train_clips``, ``val_clips``, ``test_clips``, ``overlap``, ``overlap_allowed``, ``disjoint``.

``control=true`` also measures *emotion control* (:func:`emotion_control_scores`): the split's clips are
rendered again with every emotion of the dataset chosen by label (class prototype, intensity 3) instead of
the emotion heard in the audio, and the emotion classifier scores each render against the *requested*
label: ``<split>/acc_emo_label`` (frames) and ``<split>/acc_emo_label_clip`` (clip-mean logits), chance
1/#emotions; ``<split>/emo_shift`` is the mean absolute pixel change (0–255) of those renders against the
neutral-label render, inside the face box of the ground-truth landmarks.

``emotion=label`` drives each clip with its *own* label's prototype at its own intensity (the emotion chosen, as
``ua3dtalk-infer emotion=<name>`` does) instead of the emotion the student hears in the audio (``audio``, the
default and the paper's protocol). The keys are then ``<split>/label/<metric>`` (``test/label/psnr``…), beside
the audio-driven ones: the difference is what the audio emotion recogniser costs. Needs a checkpoint with emotion
control and an emotional dataset.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

KEYS = {"ckpt", "data", "evaluators", "split", "out", "metrics", "lpips_random_backbone", "syncnet", "threedmm",
        "max_clips", "max_frames", "backend", "control", "emotion", "allow_overlap"}
#: where the emotion of the scored renders comes from (``emotion=``)
EMOTION_SOURCES = ("audio", "label")


def parse_kv(argv) -> dict:
    from .infer import parse_key_values

    args = parse_key_values(argv, KEYS)
    if "ckpt" not in args:
        raise ValueError("missing required argument ckpt=PATH")
    if args.get("split", "test") not in ("test", "val", "train"):
        raise ValueError(f"split must be test, val or train, got {args['split']!r}")
    for k in ("max_clips", "max_frames"):
        if k in args and not (args[k].isdigit() and int(args[k]) >= 1):
            raise ValueError(f"{k} must be a whole number ≥ 1, got {args[k]!r}")
    from .infer import check_backend

    check_backend(args.get("backend", "auto"))
    return args


def _bool(v) -> bool:
    s = str(v).lower()
    if s not in ("true", "false", "1", "0", "yes", "no"):
        raise ValueError(f"expected true/false, got {v!r}")
    return s in ("true", "1", "yes")


def run_dir_of(ckpt: Path) -> Optional[Path]:
    """RUN for RUN/checkpoints/<stage>/<file>.ckpt when RUN/config.yaml exists."""
    p = Path(ckpt).resolve()
    for cand in p.parents[:3]:
        if (cand / "config.yaml").is_file() and (cand / "checkpoints").is_dir():
            return cand
    return None


def build_eval_datamodule(model, ckpt: Path, data: Optional[str] = None):
    """The DataModule whose splits the run used (its config.yaml), or one built from the checkpoint's data
    settings; ``data`` overrides the dataset root."""
    from hydra.utils import instantiate

    run_dir = run_dir_of(ckpt)
    if run_dir is not None:
        from omegaconf import OmegaConf

        from .build import DATA_CLI_KEYS, drop_unused_extractor_options

        dcfg = OmegaConf.to_container(OmegaConf.load(run_dir / "config.yaml").data, resolve=False)
        for k in DATA_CLI_KEYS:
            dcfg.pop(k, None)
        drop_unused_extractor_options(dcfg)
        dcfg = {k: v for k, v in dcfg.items() if not (isinstance(v, str) and "${" in v)}
    else:
        from ..data import load_dataset
        from ..data.clip import EmotionalData

        dc = dict(getattr(model, "data_config", None) or {})
        root = data or dc.get("root")
        if not root:
            raise ValueError(f"{ckpt}: the checkpoint stores no dataset root; pass data=DATASET")
        kind = "EmotionalTalkingHeadDataModule" if isinstance(load_dataset(root), EmotionalData) \
            else "TalkingHeadDataModule"
        dcfg = {"_target_": f"ua3dtalk.data.datamodule.{kind}",
                **{k: v for k, v in dc.items() if v is not None}}
    if data is not None:
        dcfg["root"] = str(data)
    if not dcfg.get("root") or not Path(dcfg["root"]).exists():
        raise FileNotFoundError(f"dataset not found: {dcfg.get('root')!r} (pass data=DATASET)")
    dcfg["num_workers"] = 0
    from .infer import check_model_config

    # the run's config.yaml is as untrusted as the checkpoint: only DataModules of this package
    check_model_config(dcfg, str(run_dir / "config.yaml") if run_dir is not None else str(ckpt),
                       prefix="ua3dtalk.data.")
    dm = instantiate(dcfg, _recursive_=False)
    dm.prepare_data()
    dm.setup("fit")
    dm.stage = "fuse"
    return dm


def _face_box(landmarks, hw):
    """[n,H,W] float masks of the landmarks' bounding boxes (landmarks [n,68,2] pixels, x = column)."""
    import torch

    h, w = int(hw[0]), int(hw[1])
    ys, xs = torch.arange(h)[:, None], torch.arange(w)[None, :]
    lo, hi = landmarks.amin(1), landmarks.amax(1)  # [n,2]
    return torch.stack([((xs >= a[0]) & (xs <= b[0]) & (ys >= a[1]) & (ys <= b[1])).float()
                        for a, b in zip(lo, hi)])


def emotion_control_scores(model, dataset, seqs, evaluators, emotions, intensity: int = 3, stride: int = 3,
                           max_frames: int = 40, progress: bool = True) -> dict:
    """Emotion control by label: render ``seqs`` (every ``stride``-th frame, at most ``max_frames`` per clip)
    once per name in ``emotions`` with that label's prototype at ``intensity`` and score the renders with the
    emotion classifier against the *requested* label.

    Returns ``{"acc_emo_label", "acc_emo_label_clip", "emo_shift", "per_emotion": {name: acc}}``;
    ``emo_shift`` = mean |render(e) − render(neutral)| · 255 inside the face box (the bounding box of the
    ground-truth landmarks of each frame; renders share the ground-truth cameras), averaged over the other
    emotions — how much a label changes the face at all.
    Raises ``ValueError`` when the checkpoint has no emotion control or no emotion classifier is loaded."""
    import copy

    import numpy as np
    import torch
    from tqdm.auto import tqdm

    from ..callbacks.metrics import render_sequence
    from ..constants import EMOTIONS
    from ..metrics.suite import MetricSuite
    from .infer import resolve_emotion

    if getattr(evaluators, "emotion", None) is None:
        raise ValueError("control=true needs the emotion classifier (evaluators=DIR with an emotion_classifier)")
    short = []
    for q in seqs:
        q = copy.copy(q)
        q.positions, q.items = q.positions[::stride][:max_frames], q.items[::stride][:max_frames]
        short.append(q)
    renders, per, per_clip, box = {}, {}, [], None
    with torch.no_grad():
        for emo in tqdm(list(emotions), desc="emotion control", unit="emotion", disable=not progress):
            e = resolve_emotion(model, emo, intensity, None)
            suite, out, boxes = MetricSuite(evaluators, ["acc_emo"]), [], []
            for q in short:
                pred, gt, lms, _ = render_sequence(model, dataset, q, emotion=e)
                suite.update(pred, gt, landmarks=lms, emotion=EMOTIONS.index(emo), name=q.name)
                out.append(pred)
                if box is None:
                    boxes.append(_face_box(lms, pred.shape[-2:]))
            v = suite.compute()
            per[emo], renders[emo] = float(v["acc_emo"]), torch.cat(out)
            per_clip.append(float(v["acc_emo_clip"]))
            box = torch.cat(boxes) if box is None else box
    rec = {"acc_emo_label": float(np.mean(list(per.values()))), "acc_emo_label_clip": float(np.mean(per_clip)),
           "per_emotion": per}
    if "neutral" in renders and len(renders) > 1:
        ref, area = renders["neutral"], box.sum().clamp_min(1)
        rec["emo_shift"] = float(np.mean([float(((r - ref).abs().mean(1) * box).sum() / area) * 255
                                          for k, r in renders.items() if k != "neutral"]))
    return rec


def evaluate(ckpt, data=None, evaluators=None, split: str = "test", out=None, metrics="all",
             lpips_random_backbone: bool = False, syncnet=None, threedmm=None, max_clips=None, max_frames=None,
             backend: str = "auto", progress: bool = True, control: bool = False,
             allow_overlap: bool = False, emotion: str = "audio") -> dict:
    """Render and score ``split``; returns what is written to ``out/metrics.json``. ``control``: also the
    emotion-control scores of :func:`emotion_control_scores` (emotional datasets). ``emotion``: ``audio`` (the
    emotion heard in each clip's audio) or ``label`` (each clip's own label and intensity; keys
    ``<split>/label/<metric>``). Refuses evaluators trained on a scored clip
    (:func:`~ua3dtalk.data.splits.eval_protocol`) unless ``allow_overlap``."""
    import torch
    from tqdm.auto import tqdm

    from ..callbacks.metrics import render_sequence, split_sequences, update_metrics_json
    from ..constants import EMOTIONS
    from ..data.splits import eval_protocol, role_clips
    from ..metrics.evaluator_dir import load_evaluators, parse_metrics
    from ..metrics.suite import MetricSuite
    from .infer import load_model, resolve_checkpoint, resolve_emotion

    if emotion not in EMOTION_SOURCES:
        raise ValueError(f"emotion must be {' or '.join(EMOTION_SOURCES)}, got {emotion!r}")
    by_label = emotion == "label"
    ckpt = resolve_checkpoint(ckpt, "ua3dtalk-eval")
    groups = parse_metrics(metrics)
    ev = load_evaluators(evaluators, tuple(groups) + (("acc_emo",) if control else ()),
                         lpips_random_backbone=lpips_random_backbone, syncnet=syncnet, threedmm=threedmm)
    model = load_model(ckpt, backend)
    dm = build_eval_datamodule(model, ckpt, data)
    protocol = eval_protocol(evaluators, role_clips(dm), scored=(split,), allow_overlap=allow_overlap)
    ds, seqs = split_sequences(dm, split, max_clips, max_frames)
    if not seqs:
        raise ValueError(f"split {split!r} of {dm.root} has no frames")
    if by_label:  # refused before any rendering
        if model.emotion_control is None:
            raise ValueError("emotion=label needs a checkpoint with emotion control (an emotion module)")
        unlabelled = [q.name for q in seqs if not 0 <= int(getattr(q.clip, "emotion", -1)) < len(EMOTIONS)]
        if unlabelled:
            raise ValueError(f"emotion=label needs clips with emotion labels: clip {unlabelled[0]} has none")
    emotions = []
    if control:  # refused before any rendering
        emotions = [e for e in EMOTIONS if e in {getattr(c, "emotion_name", None) for c in dm.clips}]
        if model.emotion_control is None or len(emotions) < 2:
            raise ValueError(f"control=true needs a checkpoint with emotion control trained on an emotional dataset "
                             f"({dm.root} has emotions {emotions})")
        if ev.emotion is None:
            raise ValueError(f"control=true needs the emotion classifier: {ev.missing.get('emotion', evaluators)}")
    suite = MetricSuite(ev, groups)
    t0 = time.perf_counter()
    model.attach_health()  # live units and fusion weights on the scored frames (DESIGN §4.5)
    try:
        with torch.no_grad():
            for seq in tqdm(seqs, desc=f"ua3dtalk-eval {split}", unit="clip", disable=not progress):
                e = None
                if by_label:
                    e = resolve_emotion(model, EMOTIONS[int(seq.clip.emotion)], int(seq.clip.intensity) or None,
                                        None)
                pred, gt, lms, label = render_sequence(model, ds, seq, emotion=e)
                suite.update(pred, gt, landmarks=lms, audio=seq.audio() if "sync" in groups else None,
                             emotion=label, au45=seq.au45(), name=seq.name)
    finally:
        health = model.detach_health()
    model.warn_low_health(health)
    values = suite.compute()
    ns = f"{split}/label" if by_label else split  # the namespace of this evaluation's keys
    res = {f"{ns}/{k}": float(v) for k, v in values.items()}
    if not by_label:  # the run's health is that of the frames it is scored on (its own audio's emotion)
        res.update(health)
    ctrl = None
    if control:
        ctrl = emotion_control_scores(model, ds, seqs, ev, emotions, progress=progress)
        res.update({f"{split}/{k}": v for k, v in ctrl.items() if isinstance(v, float)})
    out_dir = Path(out) if out is not None else (run_dir_of(ckpt) or ckpt.parent)
    record = {**res, "eval_protocol": protocol,
              "metrics_evaluators": {f"{ns}/{k}": v for k, v in suite.provenance(list(values)).items()},
              "eval": {ns: {"emotion": emotion, "checkpoint": str(ckpt),
                            "checkpoint_mtime_ns": ckpt.stat().st_mtime_ns, "dataset": str(dm.root), "clips": len(seqs),
                            "frames": int(suite.num_frames), "seconds": round(time.perf_counter() - t0, 2),
                            "skipped": suite.skipped, "per_clip": suite.clips,
                            **({"control_per_emotion": ctrl["per_emotion"]} if ctrl else {})}}}
    update_metrics_json(out_dir / "metrics.json", record)
    record["path"] = str(out_dir / "metrics.json")
    return record


def _errors() -> tuple:
    from ..callbacks.checkpoint import CheckpointError
    from ..data.formats import DatasetError
    from ..metrics.evaluators import EvaluatorError

    return ValueError, FileNotFoundError, DatasetError, EvaluatorError, CheckpointError


def _run(argv: list) -> int:
    a = parse_kv(argv)
    rec = evaluate(a["ckpt"], a.get("data"), a.get("evaluators"), a.get("split", "test"), a.get("out"),
                   a.get("metrics", "all"), _bool(a.get("lpips_random_backbone", "false")), a.get("syncnet"),
                   a.get("threedmm"), int(a["max_clips"]) if "max_clips" in a else None,
                   int(a["max_frames"]) if "max_frames" in a else None, a.get("backend", "auto"),
                   control=_bool(a.get("control", "false")),
                   allow_overlap=_bool(a.get("allow_overlap", "false")), emotion=a.get("emotion", "audio"))
    if rec["eval_protocol"]["overlap_allowed"]:
        print(f"ua3dtalk-eval: warning: allow_overlap=true — the evaluators were trained on "
              f"{len(rec['eval_protocol']['overlap'])} of the scored clips; these metrics are optimistic")
    for k, v in rec.items():
        if isinstance(v, float):
            print(f"{k:>22s} = {v:.5g}    [{rec['metrics_evaluators'].get(k, '')}]")
    print(f"ua3dtalk-eval: wrote {rec['path']}")
    return 0


def main(argv=None) -> int:
    from .args import key_value_main

    return key_value_main(argv, "ua3dtalk-eval", KEYS, __doc__, _run, _errors)


if __name__ == "__main__":
    raise SystemExit(main())
