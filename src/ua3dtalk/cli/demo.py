"""``make demo`` / ``make demo-full``: the main job end to end on synthetic data, with a report.

    python -m ua3dtalk.cli.demo --out outputs/demo [--profile quick|full] [--seeds 0,1,2] [hydra overrides...]

Profiles (:data:`PROFILES`): ``quick`` (``make demo``, the first run: ``experiment=demo_quick``, 48 clips,
about a third of the demo-scale steps, a shorter SyncNet schedule, 3 held-out clips scored, 3 label videos;
≤ 10 min from a fresh clone on 2 idle cores) and ``full`` (``make demo-full``: ``experiment=demo_synth``, the demo
scale whose figures the README quotes).

Steps (each timed, progress shown throughout):

1. data — generate the ``small`` emotional synthetic dataset (first run only; 72 clips of 3 s at 128², 48
   for ``quick``);
2. evaluators — :func:`prepare_evaluators`: the metric evaluators trained on the synthetic ground
   truth's evaluator clips (DESIGN §8), cached;
3. train — every stage of the profile's experiment (``scale/demo.yaml``); resumable, so an
   interrupted demo continues where it stopped;
4. evaluate — :func:`evaluate`: every metric of the held-out clips into metrics.json and the report;
5. render — ground truth vs. render of held-out frames, and clips driven by the audio of a held-out clip
   with label control (intensity 3; every trained emotion, 3 for ``quick``) plus one with the emotion
   taken from the audio;
6. report — ``<out>/report.md`` with timings, metrics, plots (training curves, uncertainty-based fusion
   weights, ablation comparison when ``--ablation-runs`` is given) and the videos.
"""
from __future__ import annotations

import csv
import dataclasses
import json
import time
from pathlib import Path
from typing import Any, Optional

import numpy as np
from .args import Parser, int_in


#: the demo-scale evaluator schedule, as ``test.evaluator_epochs`` / ``test.sync_steps`` of ``scale=demo`` (a test
#: keeps them equal, so the demo and ``ua3dtalk-train … scale=demo`` share one evaluator set)
DEMO_EVAL_EPOCHS, DEMO_SYNC_STEPS = 8, 1000


@dataclasses.dataclass(frozen=True)
class Profile:
    """What a demo profile runs: the experiment, the evaluators' schedule, how many held-out clips are scored
    (None = all; also those of the label control) and how many label-controlled videos are rendered besides
    the audio-driven one (None = every trained emotion)."""

    experiment: str
    eval_epochs: int
    sync_steps: int
    eval_clips: Optional[int]
    emotion_videos: Optional[int]
    eval_threads: int = 2  # the demo runs alone: the evaluators train on both cores (1 = for a shared CPU)


#: ``quick`` — ``make demo``, the first run (≤ 10 min from a fresh clone on 2 idle cores); ``full`` —
#: ``make demo-full``, the demo-scale run (3,000 face steps) whose figures the README quotes
PROFILES = {
    "quick": Profile("demo_quick", eval_epochs=DEMO_EVAL_EPOCHS, sync_steps=100, eval_clips=3, emotion_videos=3),
    "full": Profile("demo_synth", eval_epochs=DEMO_EVAL_EPOCHS, sync_steps=DEMO_SYNC_STEPS, eval_clips=None,
                    emotion_videos=None),
}

NO_EVAL_NOTE = "(no held-out evaluation metrics: see the demo log for what was skipped)"
QUICK_NOTE = ("\n\nThis is the quick first run: about a third of the demo-scale steps on 2 clips per "
              "emotion × intensity, a shorter SyncNet schedule, 3 held-out clips scored. `make demo-full` runs "
              "the demo scale whose figures the README quotes.")


class _Steps:
    """Prints ``[demo k/n] name`` with the elapsed time and records each step's duration."""

    def __init__(self, n: int):
        self.n, self.k, self.t0 = n, 0, time.perf_counter()
        self.times: dict[str, float] = {}
        self._cur: Optional[tuple[str, float]] = None

    def start(self, name: str) -> None:
        self.end()
        self.k += 1
        print(f"[demo {self.k}/{self.n}] {name} (t = {time.perf_counter() - self.t0:.0f} s)", flush=True)
        self._cur = (name, time.perf_counter())

    def end(self) -> None:
        if self._cur is not None:
            name, t = self._cur
            self.times[name] = time.perf_counter() - t
            self._cur = None

    @property
    def total(self) -> float:
        return time.perf_counter() - self.t0


def _sheet(rows: list[list[np.ndarray]]) -> np.ndarray:
    return np.concatenate([np.concatenate(r, 1) for r in rows], 0)


def _png(path: Path, img: np.ndarray) -> None:
    import imageio.v3 as iio

    from ..utils.io import atomic_write_bytes

    atomic_write_bytes(path, iio.imwrite("<bytes>", img, extension=".png"))


# --------------------------------------------------------------------------------------------------
# hooks for the evaluation (DESIGN §8); the metrics package provides the evaluators and metric functions
# --------------------------------------------------------------------------------------------------


def prepare_evaluators(cfg, out: Path, epochs: int = 0, sync_steps: int = 0, threads: int = 1) -> Optional[Any]:
    """Step 2: the metric evaluators (landmark and expression regressors, emotion classifier, SyncNet)
    trained on the *evaluator clips* of ``cfg.data.root`` — clips the avatar never sees (DESIGN §5.5;
    ``ua3dtalk-evaluators train`` with the run's split settings, demo-sized schedule), cached in
    ``<out>/evaluators``: a complete earlier set trained on the same clips is reused
    (:func:`ua3dtalk.cli.run_eval.ensure_evaluators`). Returns that directory (handed to :func:`evaluate`).
    ``epochs`` / ``sync_steps``: 0 = the demo's defaults (:data:`DEMO_EVAL_EPOCHS`, :data:`DEMO_SYNC_STEPS`)."""
    from .run_eval import data_split, ensure_evaluators

    return ensure_evaluators(cfg.data.root, out / "evaluators", data_split(cfg), epochs or DEMO_EVAL_EPOCHS,
                             sync_steps or DEMO_SYNC_STEPS, tag="demo", threads=threads)


def evaluate(cfg, ckpt: Path, evaluators: Optional[Any], out: Path, max_clips: Optional[int] = None) -> dict[str, Any]:
    """Step 4: render every frame of the held-out clips with the checkpoint and score them with the
    evaluators (``ua3dtalk-eval``'s code path, :func:`ua3dtalk.cli.run_eval.evaluate_checkpoint`); returns the
    namespaced metrics (``test/…`` of the held-out clips: ``psnr``, ``ssim``, ``lpips`` when the AlexNet file
    is present, ``lmd``, ``f_lmd``, ``blink_err``, ``efid_*``, ``acc_emo``, ``sync_c``/``sync_d``; on an
    emotional dataset also the emotion control by label, ``acc_emo_label``, ``acc_emo_label_clip``,
    ``emo_shift``), also merged into the run's metrics.json, with ``eval_protocol`` (the evaluator, train, val
    and test clips; evaluators trained on a test clip are refused)."""
    from .run_eval import evaluate_checkpoint

    return evaluate_checkpoint(Path(cfg.paths.run_dir), ckpt, evaluators, max_clips=max_clips, tag="demo")


def _seed_stats(per_seed: dict[int, dict]) -> dict[str, dict]:
    """``{key: {mean, ci95, std, n, values}}`` over the seeds of every ``test/*`` key (95 % Student-t
    interval, :func:`ua3dtalk.reporting.runs.aggregate`)."""
    from ..reporting.runs import aggregate

    keys = sorted({k for m in per_seed.values() for k in m if k.startswith(("test/", "health/", "fusion_weight/"))})
    out = {}
    for k in keys:
        vals = [m.get(k) for m in per_seed.values()]
        c = aggregate(v for v in vals if v is not None and np.isfinite(v))
        out[k] = {"mean": c.mean, "ci95": c.ci95, "std": c.std, "n": c.n, "values": vals}
    return out


def _seeds_md(stats: dict[str, dict]) -> str:
    """The report's table of test metrics over seeds (mean ± 95 % t-interval)."""
    if not stats:
        return ""
    rows = "\n".join(f"| `{k}` | {v['mean']:.4g} ± {v['ci95']:.2g} | {v['n']} | "
                      + ", ".join(f"{x:.4g}" for x in v["values"] if x is not None) + " |"
                      for k, v in stats.items() if v["mean"] is not None and v["ci95"] is not None)
    return ("## Over seeds\n\nHeld-out test metrics over the seeds: mean ± half-width of the 95 % Student-t "
            "interval (n − 1 degrees of freedom).\n\n| metric | mean ± 95 % CI | n | per seed |\n|---|---|---|---|\n"
            f"{rows}\n")


def _evaluator_checks(evaluators: Optional[Path]) -> tuple[dict, dict]:
    """``(emotion_checks, sync_checks)`` of the evaluator manifest: the classifier's held-out and
    neutral-face shortcut accuracy, SyncNet's held-out ground-truth scores."""
    from ..metrics.evaluator_dir import read_manifest

    m = (read_manifest(evaluators) if evaluators is not None else None) or {}
    return dict(m.get("emotion_checks") or {}), dict(m.get("sync_checks") or {})


def _protocol_md(protocol: Optional[dict], checks: dict, sync: Optional[dict] = None) -> str:
    """The report's evaluation-protocol paragraph: clip counts per role, disjointness, classifier checks."""
    if not protocol:
        return "(no held-out evaluation)"
    ev = protocol["evaluator_clips"]
    n_ev = len(ev) if isinstance(ev, list) else "unknown"
    lines = [f"Clips: {n_ev} evaluator, {len(protocol['train_clips'])} train, {len(protocol['val_clips'])} val, "
             f"{len(protocol['test_clips'])} test — "
             + ("pairwise disjoint: the evaluators never saw a scored clip, the avatar never saw a val/test clip."
                if protocol.get("disjoint") else "**not disjoint** (see `eval_protocol` in metrics.json).")]
    if protocol.get("overlap_allowed"):
        lines.append(f"**allow_overlap**: the evaluators were trained on {len(protocol['overlap'])} scored clips.")
    if checks:
        lines.append(f"Emotion classifier on the test clips' ground truth: {checks['heldout_acc']:.3f} "
                     f"(chance {checks['chance']:.3f}, {checks['heldout_frames']} frames).")
        if "shortcut_acc" in checks:
            lines.append(f"Shortcut check (test clips re-rendered with a neutral face, own pose and speech): "
                         f"{checks['shortcut_acc']:.3f} — "
                         + ("at chance (± 0.05)." if checks.get("shortcut_ok") else "**not at chance**."))
    if sync and "heldout_sync_c" in sync:
        lines.append(f"SyncNet on the test clips' ground truth: Sync-C {sync['heldout_sync_c']:.2f} with their own "
                     f"audio (the most a render can score with these evaluators), {sync['mismatched_sync_c']:.2f} "
                     "with another clip's.")
    return "\n\n".join(lines)


# --------------------------------------------------------------------------------------------------
# plots
# --------------------------------------------------------------------------------------------------


def _read_csv(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    with open(path) as f:
        return list(csv.DictReader(f))


def plot_training(run_dir: Path, stages: list[str], path: Path) -> Optional[Path]:
    """train/loss and val/psnr of the rendering stages → PNG (None without matplotlib or logs)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    shown = [s for s in stages if s in ("mouth", "face", "fuse")]
    if not shown:
        return None
    fig, axes = plt.subplots(1, len(shown), figsize=(4 * len(shown), 3), squeeze=False)
    for ax, s in zip(axes[0], shown):
        rows = _read_csv(run_dir / "logs" / s / "metrics.csv")
        tr = [(int(r["step"]), float(r["train/loss"])) for r in rows if r.get("train/loss")]
        va = [(int(r["step"]), float(r["val/psnr"])) for r in rows if r.get("val/psnr")]
        if tr:
            ax.plot(*zip(*tr), lw=0.8, label="train/loss")
        ax.set_title(s, fontsize=9)
        ax.set_xlabel("step")
        if va:
            ax2 = ax.twinx()
            ax2.plot(*zip(*va), "o-", c="tab:red", ms=3, label="val/psnr")
            ax2.set_ylabel("val/psnr (dB)", color="tab:red")
        ax.set_ylabel("train/loss")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_fusion_weights(run_dir: Path, path: Path) -> Optional[Path]:
    """Mean uncertainty-based fusion weight of every view over training (face and fuse stages) → PNG."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    curves = {}
    for s in ("face", "fuse"):
        rows = _read_csv(run_dir / "logs" / s / "metrics.csv")
        for k in (rows[0].keys() if rows else []):
            if k.startswith("train/fusion_face/weight_"):
                pts = [(int(r["step"]), float(r[k])) for r in rows if r.get(k)]
                if pts:
                    curves[(s, k.rsplit("_", 1)[-1])] = pts
    if not curves:
        return None
    stages = sorted({s for s, _ in curves}, key=("face", "fuse").index)
    fig, axes = plt.subplots(1, len(stages), figsize=(4.5 * len(stages), 3), squeeze=False)
    for ax, s in zip(axes[0], stages):
        for (st, view), pts in curves.items():
            if st == s:
                ax.plot(*zip(*pts), label=view)
        ax.set_title(f"{s}: mean fusion weight per view", fontsize=9)
        ax.set_xlabel("step")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_ablation(runs_dir: Path, path: Path, metric: str = "psnr") -> Optional[Path]:
    """Bars of ``metric`` (mean ± std) per ablation row of the runs under ``runs_dir`` → PNG."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    from ..reporting.runs import ABLATION_LABELS, METRICS, TABLES, _order_key, find_runs, metric_value, select_runs

    runs = select_runs(find_runs([runs_dir]), TABLES["ablation"])
    names = sorted({r.experiment for r in runs}, key=lambda n: _order_key(n, TABLES["ablation"].order))
    vals = [[v for r in runs if r.experiment == n and (v := metric_value(r, METRICS[metric])) is not None]
            for n in names]
    if not any(vals):
        return None
    fig, ax = plt.subplots(figsize=(1 + 0.8 * len(names), 3.5))
    ax.bar(range(len(names)), [np.mean(v) if v else np.nan for v in vals],
           yerr=[np.std(v, ddof=1) if len(v) > 1 else 0 for v in vals], capsize=3)
    ax.set_xticks(range(len(names)), [ABLATION_LABELS.get(n, n) for n in names], rotation=60, ha="right",
                  fontsize=8)
    ax.set_ylabel(METRICS[metric].label)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


# --------------------------------------------------------------------------------------------------
# the demo
# --------------------------------------------------------------------------------------------------


def main(argv=None) -> int:
    ap = Parser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="outputs/demo")
    ap.add_argument("--profile", choices=sorted(PROFILES), default="quick",
                    help="quick: the first run, ≤ 10 min (make demo); full: the demo-scale run (make demo-full)")
    ap.add_argument("--experiment", default=None, help="experiment (default: the profile's)")
    ap.add_argument("--ablation-runs", default=None, help="runs directory for the ablation plot (optional)")
    ap.add_argument("--eval-epochs", type=int_in(0), default=0, help="evaluator training epochs (0 = the profile's)")
    ap.add_argument("--sync-steps", type=int_in(0), default=0, help="SyncNet training steps (0 = the profile's)")
    ap.add_argument("--eval-clips", type=int_in(0), default=None,
                    help="held-out clips scored, label control included (0 = all; default: the profile's)")
    ap.add_argument("--seeds", default="",
                    help="comma-separated seeds (e.g. 0,1,2): train and evaluate once per seed; the report and "
                         "metrics.json add mean ± 95 %% t-interval over them (the first seed's run is the one "
                         "rendered; a finished seed is reused)")
    ap.add_argument("overrides", nargs="*", help="extra Hydra overrides")
    a = ap.parse_args(argv)
    try:
        seeds = [int(x) for x in a.seeds.replace(" ", ",").split(",") if x.strip()]
    except ValueError:
        ap.error(f"--seeds: expected comma-separated integers, got {a.seeds!r}")
    if len(set(seeds)) != len(seeds):
        ap.error(f"--seeds: each seed once, got {a.seeds!r}")
    prof = PROFILES[a.profile]
    experiment = a.experiment or prof.experiment
    eval_clips = prof.eval_clips if a.eval_clips is None else (a.eval_clips or None)
    import torch

    from ..data import read_frame
    from ..data.audio import features_for_clip
    from ..constants import EMOTIONS
    from ..utils.io import atomic_write_text
    from .infer import infer, load_model
    from .train import _merge_json, build_datamodule, compose, ensure_dataset, run

    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    steps = _Steps(6)
    base = [f"experiment={experiment}", "resume=true", *a.overrides]
    cfg = compose(base + [f"paths.run_dir={out / 'run'}"] + ([f"seed={seeds[0]}"] if seeds else []))

    steps.start(f"data: {cfg.data.root}")
    ensure_dataset(cfg)

    steps.start("evaluators")
    evaluators = prepare_evaluators(cfg, out, a.eval_epochs or prof.eval_epochs, a.sync_steps or prof.sync_steps,
                                    prof.eval_threads)

    steps.start(f"train: experiment {cfg.name}, stages {list(cfg.stages)}")
    metrics = run(cfg)
    ckpt = Path(metrics["checkpoint"])

    steps.start("evaluate")
    test_metrics = evaluate(cfg, ckpt, evaluators, out, eval_clips)
    protocol = test_metrics.pop("eval_protocol", None)
    checks, sync_checks = _evaluator_checks(evaluators)
    if protocol is not None:
        metrics["eval_protocol"] = protocol
    if checks:
        metrics["evaluator_emotion_checks"] = checks
    if sync_checks:
        metrics["evaluator_sync_checks"] = sync_checks
    if test_metrics:
        metrics.update(test_metrics)
        _merge_json(Path(cfg.paths.run_dir) / "metrics.json", test_metrics)
    per_seed = {int(cfg.seed): test_metrics}
    for seed in seeds[1:]:
        print(f"[demo] seed {seed}: train and evaluate", flush=True)
        cfg_s = compose(base + [f"paths.run_dir={out / f'run_seed{seed}'}", f"seed={seed}"])
        ck = Path(run(cfg_s)["checkpoint"])
        tm = evaluate(cfg_s, ck, evaluators, out, eval_clips)
        tm.pop("eval_protocol", None)
        _merge_json(Path(cfg_s.paths.run_dir) / "metrics.json", tm)
        per_seed[seed] = tm
    seed_stats = _seed_stats(per_seed) if len(per_seed) > 1 else {}
    if seed_stats:
        metrics["seeds"] = {str(k): v for k, v in per_seed.items()}
        metrics["seed_stats"] = seed_stats

    steps.start("render: held-out frames and one clip per emotion")
    dm = build_datamodule(cfg)
    held_out = list(getattr(dm, "split_clips", {}).get("test") or []) or list(dm.clips[-1:])
    clip = held_out[0]
    model = load_model(ckpt)
    feats = features_for_clip(clip, dm.feature_name)
    ctx = None  # data.context_feature (smoke: wav2vec2): the audio context has its own features
    if getattr(dm, "context_feature", None) is not None:
        from ..data.features import audio_context_np, clip_frame_features

        ctx = clip_frame_features(features_for_clip(clip, dm.context_feature_name))
    to8 = lambda t: (t.permute(1, 2, 0).numpy() * 255 + 0.5).clip(0, 255).astype(np.uint8)  # noqa: E731
    gt, pred = [], []
    for j in np.linspace(0, len(clip) - 1, 5).astype(int):
        b = read_frame(clip, int(j), audio=feats, neighbours=8, background="bc+torso")
        if ctx is not None:
            b = dataclasses.replace(b, audio_context=torch.from_numpy(
                audio_context_np(ctx, np.array([clip.img_ids[int(j)]]), dm.context)))
        with torch.no_grad():
            pred.append(to8(model.render_batch(b)[0]))
        gt.append(to8(b.image[0]))
    _png(out / "gt_vs_render.png", _sheet([gt, pred]))
    videos = {}
    trained = {c.emotion_name for c in dm.clips if getattr(c, "emotion_name", None)}
    labels = [e for e in EMOTIONS if e in trained] if model.emotion_control is not None else []
    if prof.emotion_videos is not None:  # quick: a few labels, spread over the trained emotions
        labels = [labels[i] for i in np.linspace(0, len(labels) - 1, min(prof.emotion_videos, len(labels))).astype(int)
                  ] if labels else []
    emotions = ["audio"] + list(dict.fromkeys(labels))
    for emo in emotions:
        videos[emo] = infer(ckpt, clip.root / "aud.wav", out / f"emotion_{emo}.mp4", emotion=emo,
                            intensity=None if emo == "audio" else 3)
    thumbs = []
    if len(emotions) > 1:
        import imageio.v3 as iio

        for emo in emotions:
            frames = iio.imread(out / f"emotion_{emo}.mp4")
            thumbs.append(frames[len(frames) // 2])
        _png(out / "emotions.png", _sheet([thumbs]))

    steps.start("report")
    run_dir = Path(cfg.paths.run_dir)
    plots = {"training curves": plot_training(run_dir, list(metrics["stages"]), out / "training.png"),
             "uncertainty-based fusion weights": plot_fusion_weights(run_dir, out / "uncertainty.png")}
    if a.ablation_runs:
        plots["ablation comparison (val/psnr)"] = plot_ablation(Path(a.ablation_runs), out / "ablation.png")
    steps.end()
    rows = "\n".join(f"| `{k}` | {v:.4g} |" for k, v in sorted(metrics.items())
                     if k.startswith(("val/", "test/")) and isinstance(v, float))
    stage_rows = "\n".join(
        f"| {s} | {m.get('steps', '')} | {m.get('seconds', float('nan')):.0f} | "
        f"{m.get('cpu_seconds', float('nan')):.0f} | "
        + ", ".join(f"`{k}` {v:.4g}" for k, v in m.items() if k.startswith("val/")) + " |"
        for s, m in metrics["stages"].items())
    health_rows = "\n".join(f"| `{k}` | {v:.3f} |" for k, v in sorted(metrics.items())
                            if k.startswith(("health/", "fusion_weight/")) and isinstance(v, float))
    step_rows = "\n".join(f"| {k} | {v:.0f} |" for k, v in steps.times.items())
    vids = "\n".join(f"| `{k}` | [{Path(v['out']).name}]({Path(v['out']).name}) | {v['frames']} | {v['fps']:.1f} |"
                     for k, v in videos.items())
    pics = "\n\n".join(f"### {k}\n\n![{k}]({p.name})" for k, p in plots.items() if p is not None)
    report = f"""# ua3dtalk demo

Profile `{a.profile}`: experiment `{cfg.name}` on `{cfg.data.root}` ({len(dm.clips)} clips,
{dm.image_size[1]}×{dm.image_size[0]}), stages {list(metrics['stages'])}; run directory `{run_dir}`. Total time
{steps.total / 60:.1f} min on this machine.{QUICK_NOTE if a.profile == "quick" else ""}

## Ground truth (top) vs. render (bottom), held-out clip `{clip.clip_id}`

![gt vs render](gt_vs_render.png)

## One clip per emotion, driven by the held-out clip's audio

{'![emotions](emotions.png)' if thumbs else ''}

| emotion | video | frames | render frames/s |
|---|---|---|---|
{vids}

`audio`: emotion from the speech (distilled student); the others: label control at intensity 3.

## Metrics

| metric | value |
|---|---|
{rows}

{'' if test_metrics else NO_EVAL_NOTE}

{_seeds_md(seed_stats)}
## Network health

Live fraction of each deformation network's ReLU units on the held-out frames (`health/live_*`: active on at
least 0.1 % of the Gaussians × frames; below 0.2 the run warns) and each view's mean fusion weight
(`fusion_weight/*`; `mouth_` = the inside-mouth branch). DESIGN §4.5.

| key | value |
|---|---|
{health_rows or '| (no evaluation) | |'}

## Evaluation protocol

{_protocol_md(protocol, checks, sync_checks)}

## Plots

{pics}

## Timing

| step | seconds |
|---|---|
{step_rows}

| stage | steps | seconds | CPU seconds | final validation |
|---|---|---|---|---|
{stage_rows}

Stage metrics: `{run_dir / 'metrics.json'}`; config: `{run_dir / 'config.yaml'}`; environment: `{run_dir / 'env.json'}`.
"""
    atomic_write_text(out / "report.md", report)
    atomic_write_text(out / "metrics.json", json.dumps({**metrics, "demo_seconds": steps.times}, indent=2))
    print(f"demo: wrote {out / 'report.md'} ({steps.total / 60:.1f} min)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
