"""Every run evaluates (DESIGN §9.2): after its last stage, ``ua3dtalk-train`` scores the run's best
checkpoint on the held-out *test* clips with ``ua3dtalk-eval``'s code path, so every table column (PSNR,
SSIM, LPIPS, LMD, Sync-C/D, E-FID, Acc_emo, and the emotion control by label) is filled from the run itself.

Configured by the ``test`` block of ``train.yaml``::

    test:
      enabled: true             # the paper, ablation and baseline experiments
      evaluators: DIR | auto    # the one key for the evaluator directory (ua3dtalk-evaluators train --out DIR)
      ...

``evaluators: auto`` (synthetic data at tiny / demo scale) trains the evaluators on the dataset's *evaluator
clips* — clips the avatar never sees — once per dataset and split, in ``test.evaluator_dir``, built in a
staging directory and swapped in on success, so concurrent sweep jobs share one set.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any, Optional

EVAL_KEY_PREFIXES = ("test/", "health/", "fusion_weight/")


def data_split(cfg) -> dict:
    """The clip-split settings of ``cfg.data`` (:data:`~ua3dtalk.data.splits.SYNTH_SPLIT` keys)."""
    from ..data.splits import SYNTH_SPLIT

    return {k: type(v)(cfg.data.get(k, 0)) for k, v in SYNTH_SPLIT.items()}


def _complete(d: Path, want: list[str], epochs: Optional[int] = None, sync_steps: Optional[int] = None) -> bool:
    """A complete evaluator set (every kind) trained on the clips ``want`` — and, when given, with ``epochs``
    epochs and ``sync_steps`` SyncNet steps (another schedule gives other figures: such a set is retrained, not
    reused); a damaged manifest is not one."""
    from ..metrics.evaluator_dir import read_manifest
    from .evaluators import KINDS

    try:
        m = read_manifest(d)
    except (OSError, ValueError):
        return False
    if not (isinstance(m, dict) and isinstance(m.get("evaluators"), dict)):
        return False
    evs = m["evaluators"]
    if not (all(k in evs for k in KINDS) and m.get("clips") == want):
        return False
    if epochs is not None and any(isinstance(evs[k], dict) and evs[k].get("epochs") != int(epochs)
                                  for k in KINDS if k != "syncnet"):
        return False
    if sync_steps is not None:
        report = evs["syncnet"].get("report") if isinstance(evs["syncnet"], dict) else None
        if not (isinstance(report, dict) and report.get("steps") == int(sync_steps)):
            return False
    return True


def ensure_evaluators(data_root, out_dir, split: dict, epochs: int, sync_steps: int, tag: str = "ua3dtalk",
                      threads: int = 1) -> Path:
    """The evaluators of ``data_root``'s evaluator clips in ``out_dir``: reused when a complete set trained on
    the same clips with the same schedule (``epochs``, ``sync_steps``) is there, else trained in
    ``<out_dir>.staging-<pid>`` (on ``threads`` torch threads: 1 on a shared CPU, more when the caller has the
    machine to itself) and moved into place on success (a set that another job finished meanwhile wins; an
    incomplete old set is replaced only after success)."""
    from ..data.loading import load_dataset
    from ..data.splits import clip_key
    from .evaluators import evaluator_split, train_evaluators

    out_dir = Path(out_dir)
    want = [clip_key(c) for c in evaluator_split(load_dataset(data_root), "evaluator", split)[0]]
    if _complete(out_dir, want, epochs, sync_steps):
        print(f"[{tag}] evaluators: reusing {out_dir}", flush=True)
        return out_dir
    staging = out_dir.with_name(f"{out_dir.name}.staging-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    print(f"[{tag}] evaluators: training on the evaluator clips of {data_root} → {out_dir}", flush=True)
    try:
        train_evaluators(str(data_root), str(staging), epochs=epochs, sync_steps=sync_steps, threads=threads,
                         split=split)
        if _complete(out_dir, want, epochs, sync_steps):  # another job finished first: keep its set
            return out_dir
        old = out_dir.with_name(f"{out_dir.name}.old-{os.getpid()}")
        if out_dir.exists():
            out_dir.rename(old)
        staging.rename(out_dir)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out_dir


def resolve_test_evaluators(cfg) -> Optional[Path]:
    """The evaluator directory of ``cfg.test`` (``auto``: trained / reused for the synthetic dataset)."""
    t = cfg.test
    ev = t.get("evaluators")
    if ev in (None, "", "none"):
        return None
    if str(ev) != "auto":
        p = Path(str(ev))
        if not p.is_dir():
            raise FileNotFoundError(f"test.evaluators={ev}: no such evaluator directory (train one with "
                                    "`ua3dtalk-evaluators train --data DATASET --out DIR`, or test.evaluators=auto on "
                                    "synthetic data)")
        return p
    if cfg.data.get("synth") is None:
        raise ValueError("test.evaluators=auto trains evaluators on a synthetic dataset's evaluator clips only; give "
                         "test.evaluators=DIR (ua3dtalk-evaluators train) for this dataset")
    return ensure_evaluators(cfg.data.root, t.evaluator_dir, data_split(cfg), int(t.evaluator_epochs),
                             int(t.sync_steps), tag="ua3dtalk-train")


def evaluate_checkpoint(run_dir: Path, ckpt: Path, evaluators: Optional[Path], *, metrics: Any = "all",
                        lpips_random_backbone: bool = False, max_clips: Optional[int] = None,
                        max_frames: Optional[int] = None, control: Optional[bool] = None,
                        tag: str = "ua3dtalk") -> dict[str, Any]:
    """Score ``ckpt`` on the run's test clips into ``<run_dir>/metrics.json`` (``ua3dtalk-eval``'s path) and
    return the namespaced metrics and ``eval_protocol``. ``control=None``: the emotion control by label when
    the run is emotional, has an emotion module trained in its emotion stage, and evaluators are given. An
    evaluation of the same checkpoint file (path and mtime) with the same evaluators is reused. A metric whose
    evaluator is missing is skipped with a warning, never replaced by a made-up number."""
    from .eval import evaluate as eval_ckpt

    ckpt = Path(ckpt)
    mf = Path(run_dir) / "metrics.json"
    run_meta = json.loads(mf.read_text()) if mf.is_file() else {}
    if control is None:  # label control needs the prototypes of a trained emotion stage
        control = (evaluators is not None and run_meta.get("data_kind") == "emotional"
                   and run_meta.get("components", {}).get("emotion") not in (None, "none")
                   and "emotion" in (run_meta.get("stages") or {}))
    prev = run_meta.get("eval", {}).get("test", {})
    if (prev.get("checkpoint") == str(ckpt) and prev.get("checkpoint_mtime_ns") == ckpt.stat().st_mtime_ns
            and run_meta.get("eval_protocol", {}).get("evaluator_dir") == (None if evaluators is None
                                                                           else str(evaluators))
            and (not control or "test/acc_emo_label" in run_meta)):
        print(f"[{tag}] evaluate: reusing the evaluation of {ckpt} in {mf}", flush=True)
        rec = run_meta
    else:
        rec = eval_ckpt(ckpt, evaluators=str(evaluators) if evaluators is not None else None, split="test",
                        out=Path(run_dir), metrics=metrics, lpips_random_backbone=lpips_random_backbone,
                        max_clips=max_clips, max_frames=max_frames, control=bool(control))
    skipped = rec.get("eval", {}).get("test", {}).get("skipped")
    if skipped:
        print(f"[{tag}] evaluate: skipped {skipped}", flush=True)
    return {**{k: v for k, v in rec.items() if k.startswith(EVAL_KEY_PREFIXES) and isinstance(v, float)},
            "eval_protocol": rec["eval_protocol"]}


def evaluate_run(cfg, run_dir: Path, metrics: dict) -> dict[str, Any]:
    """``cfg.test``: score the run's best checkpoint (else its last) on the test clips; returns the test keys."""
    t = cfg.test
    best = (metrics.get("best_checkpoint") or {}).get("path")
    ckpt = Path(best) if best and Path(best).is_file() else Path(str(metrics.get("checkpoint")))
    if not ckpt.is_file():
        raise FileNotFoundError(f"test: no checkpoint to evaluate in {run_dir}")
    evaluators = resolve_test_evaluators(cfg)
    print(f"[ua3dtalk-train] test: scoring {ckpt} on the test clips"
          + (f" with the evaluators in {evaluators}" if evaluators else " (no evaluators: image metrics only)"),
          flush=True)
    lp = t.get("lpips_random_backbone")
    if str(lp) == "auto":  # the real LPIPS when the AlexNet weights are on the machine, else the labelled stand-in
        from ..metrics.image import alexnet_cache_path

        lp = not alexnet_cache_path().is_file()
    mc = t.get("max_clips")
    mfr = t.get("max_frames")
    out = evaluate_checkpoint(run_dir, ckpt, evaluators, metrics=t.get("metrics") or "all",
                               lpips_random_backbone=bool(lp),
                               max_clips=None if mc is None else int(mc), max_frames=None if mfr is None else int(mfr),
                               control=None if str(t.get("control")) == "auto" else bool(t.get("control")),
                               tag="ua3dtalk-train")
    out["test_clip"] = str(write_test_clip(run_dir, ckpt, max_frames=None if mfr is None else int(mfr)) or "") or None
    return out


def write_test_clip(run_dir: Path, ckpt: Path, max_frames: Optional[int] = None) -> Optional[Path]:
    """``<run_dir>/test_clip.mp4``: the first test clip rendered with ``ckpt`` beside its ground truth, with its
    own audio (for the report and the wandb run)."""
    from ..callbacks.media import write_clip_video
    from .eval import build_eval_datamodule
    from .infer import load_model

    out = Path(run_dir) / "test_clip.mp4"
    if out.is_file() and out.stat().st_mtime_ns > Path(ckpt).stat().st_mtime_ns:  # a resumed, finished run
        return out
    model = load_model(ckpt)
    dm = build_eval_datamodule(model, ckpt)
    path = write_clip_video(model, dm, "test", out, max_frames=max_frames)
    if path is not None:
        print(f"[ua3dtalk-train] test: wrote {path}", flush=True)
    return path
