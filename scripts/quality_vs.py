"""Held-out quality of this tree against an earlier commit's, on that commit's data and clips, same scorer.

Issue 15's quality floor (``test/psnr`` ≥ 33.5 dB, ``test/lmd`` ≤ 1.0 px, ``test/sync_c`` ≥ 3.0: "no loss of
quality") is the demo figure of ``d689937`` (2026-11-24). That figure came from the synthetic set of its day (faint
emotions, test = val clips) and from evaluators that had seen half of the scored clips. The
set and the protocol have changed since, so a figure of today's set cannot be held against it. This script puts
both models on the same footing, in ``WORK``:

1. ``base/``: ``--rev`` exported with ``git archive``;
2. ``data/synth0``: ``--rev``'s ``small`` emotional set made by ``--rev``'s own generator (the clips it trained and
   was scored on); ``data_ev/synth0``: two more clips of every emotion × intensity from the same generator (other
   utterances and streams, never scored) for the evaluators;
3. ``evaluators/``: this tree's evaluators trained on ``data_ev`` only (``--clips all``);
4. per seed S: ``base_runs/seedS`` (``--rev``'s ``demo_synth``, its own split with split seed S; ``d689937``'s
   demo always used split seed 0) and its test clips rendered by ``--rev``'s code into ``pred/seedS/*.npz``;
   ``runs/seedS``: this tree's ``--experiment`` at ``scale=demo`` on the same data with the same split
   (``val_fraction`` of ``--rev``'s data config, no test or evaluator roles, so test = val, split seed S). Each seed
   thus scores both models on the same 8 clips, and the seeds together on more of the set;
5. both scored by this tree's :class:`~ua3dtalk.metrics.suite.MetricSuite` with the same evaluators on the same
   frames (each prediction file is checked against the ground truth frame for frame); ``WORK/quality_vs.json``
   and a table: each model's mean ± 95 % t-interval over the seeds and the paired difference.

Every step is skipped when its output is complete, so a killed comparison resumes; trainings resume from their
checkpoints. ``--jobs N`` trains N runs at a time (threads shared). Hours of CPU at demo scale (three seeds:
about 1.5 h on 2 cores); nothing here is timed.

    python scripts/quality_vs.py WORK [--rev d689937] [--seeds 0,1,2] [--jobs 3] [--experiment paper_mead]
           [ARGS…: extra Hydra overrides of this tree's runs]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import textwrap
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Optional, Sequence

ROOT = Path(__file__).resolve().parents[1]
#: the commit whose demo figures became issue 15's quality floor (2026-11-24, "version 6")
BASELINE = "d689937"
#: scored metric groups (ua3dtalk.metrics.suite.METRIC_GROUPS)
GROUPS = "psnr,ssim,lmd,sync,acc_emo"
#: rows of the table: (key, label, higher is better)
ROWS = (("psnr", "PSNR, dB", True), ("ssim", "SSIM", True), ("lmd", "LMD, px", False), ("f_lmd", "F-LMD, px", False),
        ("sync_c", "Sync-C", True), ("sync_d", "Sync-D", False), ("acc_emo", "Acc_emo (from the audio)", True))

#: run by the baseline's Python path: render a run's test clips, save predictions and ground truth per clip
#: (the helpers it imports exist with these signatures in d689937 and in this tree)
DUMP = textwrap.dedent("""
    import json, sys
    from pathlib import Path
    import numpy as np, torch
    from ua3dtalk.cli.infer import load_model
    from ua3dtalk.cli.eval import build_eval_datamodule
    from ua3dtalk.callbacks.metrics import split_sequences, render_sequence
    run, out = Path(sys.argv[1]), Path(sys.argv[2])
    stage = out.with_name(out.name + '.partial')
    stage.mkdir(parents=True, exist_ok=True)
    ckpt = Path(json.loads((run / 'metrics.json').read_text())['checkpoint'])
    model = load_model(ckpt)
    model.eval()
    dm = build_eval_datamodule(model, ckpt, None)
    ds, seqs = split_sequences(dm, 'test')
    clips = []
    with torch.no_grad():
        for seq in seqs:
            pred, gt, _, label = render_sequence(model, ds, seq)
            key = str(seq.clip.clip_id)
            np.savez(stage / (key.replace('/', '_') + '.npz'), pred=pred.half().numpy(), gt=gt.half().numpy(),
                     label=label)
            clips.append(key)
            print('rendered', key, len(pred), flush=True)
    (stage / 'clips.json').write_text(json.dumps({'checkpoint': str(ckpt), 'clips': clips}))
    stage.rename(out)
""")

#: run by the baseline's Python path: the clips 2 and 3 of every emotion × intensity (the generator's own seeds)
GEN_EV = textwrap.dedent("""
    import sys
    from pathlib import Path
    import numpy as np
    from ua3dtalk.data.synth import generate as g
    from ua3dtalk.utils.io import atomic_write_json
    out, preset, seed = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
    p = g._preset(preset, None)
    head, f0, bg = g._identity(seed, p)
    stage = out.with_name(out.name + '.partial')
    for e in g.EMOTIONS:
        for k in (1, 2, 3):
            for c in (2, 3):
                clip = stage / e / f'level_{k}' / f'{c:03d}'
                if (clip / 'emotion.json').is_file():
                    continue
                rng = np.random.default_rng(g._seed('emotional', seed, e, k, c))
                g.write_clip(clip, head, p, p.clip_seconds, rng, f0, emotion=e, intensity=k, bg=bg,
                             progress=False, extra_meta={'subject': out.name})
                atomic_write_json(clip / 'emotion.json', {'emotion': e, 'intensity': k})
                print('clip', e, k, c, flush=True)
    stage.rename(out)
""")

GEN = textwrap.dedent("""
    import sys
    from ua3dtalk.data.synth.generate import generate_emotional
    generate_emotional(sys.argv[1], sys.argv[2], int(sys.argv[3]), progress=False)
""")


def _env(base: Optional[Path], work: Path, threads: int) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "WANDB_MODE": "offline", "HF_HUB_OFFLINE": "1"}
    if base is not None:  # the baseline's package first on the path; its compiled kernels kept apart
        env["PYTHONPATH"] = str(base / "src")
        env["TORCH_EXTENSIONS_DIR"] = str(work / "base_ext")
    return env


def _sh(cmd: Sequence[str], log: Path, env: dict, cwd: Path) -> None:
    log.parent.mkdir(parents=True, exist_ok=True)
    print(f"[quality_vs] {' '.join(map(str, cmd))[:200]} (log: {log})", flush=True)
    with open(log, "a") as f:
        rc = subprocess.call([str(c) for c in cmd], stdout=f, stderr=subprocess.STDOUT, env=env, cwd=str(cwd))
    if rc:
        tail = log.read_text(errors="replace").splitlines()[-15:]
        raise RuntimeError(f"exit {rc}: {' '.join(map(str, cmd))[:200]}\n  " + "\n  ".join(tail))


def baseline_split(base: Path) -> float:
    """The ``val_fraction`` of the baseline's emotional data config (0.34 in d689937)."""
    from omegaconf import OmegaConf

    cfg = OmegaConf.load(base / "experiments" / "data" / "synth_tiny_emotional.yaml")
    return float(cfg.get("val_fraction", 0.34))


def _done(run: Path) -> bool:
    try:
        final_checkpoint(run)
    except FileNotFoundError:
        return False
    return True


def prepare(work: Path, rev: str, preset: str = "small", seed: int = 0, threads: int = 2) -> Path:
    """Steps 1–3: the baseline tree, its data, the evaluators' clips and this tree's evaluators."""
    base = work / "base"
    if not (base / "src").is_dir():
        tmp = work / "base.partial"
        tmp.mkdir(parents=True, exist_ok=True)
        arch = subprocess.run(["git", "-C", str(ROOT), "archive", "--format=tar", rev], capture_output=True)
        if arch.returncode:
            raise ValueError(f"--rev {rev}: {arch.stderr.decode(errors='replace').strip()}")
        subprocess.run(["tar", "-x", "-C", str(tmp)], input=arch.stdout, check=True)
        tmp.rename(base)
    env = _env(base, work, threads)
    py = sys.executable
    if not (work / "data" / f"synth{seed}").is_dir():
        _sh([py, "-c", GEN, work / "data", preset, seed], work / "logs" / "data.log", env, work)
    if not (work / "data_ev" / f"synth{seed}").is_dir():
        _sh([py, "-c", GEN_EV, work / "data_ev" / f"synth{seed}", preset, seed], work / "logs" / "data_ev.log", env,
            work)
    ev = work / "evaluators"
    if not (ev / "manifest.json").is_file():
        from ua3dtalk.cli.evaluators import train_evaluators
        from ua3dtalk.utils.io import atomic_directory

        with atomic_directory(ev) as stage:
            # the demo's schedule (scale=demo: 8 epochs, SyncNet 1000 steps) on clips no scored clip shares
            train_evaluators(str(work / "data_ev" / f"synth{seed}"), str(stage), epochs=8, sync_steps=1000,
                             threads=threads, clips="all")
    return base


def train_pair(work: Path, base: Path, seed: int, experiment: str, args: Sequence[str], threads: int,
               subject: str = "synth0") -> None:
    """Step 4 for one seed: the baseline's run and predictions, then this tree's run on the same data and split."""
    data = work / "data" / subject
    brun = work / "base_runs" / f"seed{seed}"
    if not _done(brun):
        _sh([sys.executable, "-m", "ua3dtalk.cli.train", "experiment=demo_synth", f"seed={seed}", f"data.root={data}",
             f"++data.split_seed={seed}", f"paths.run_dir={brun}", "logger=csv", "resume=true"],
            work / "logs" / f"base_seed{seed}.log",
            _env(base, work, threads), base)
    pred = work / "pred" / f"seed{seed}"
    if not (pred / "clips.json").is_file():
        _sh([sys.executable, "-c", DUMP, brun, pred], work / "logs" / f"pred_seed{seed}.log",
            _env(base, work, threads), base)
    run = work / "runs" / f"seed{seed}"
    if not _done(run):
        vf = baseline_split(base)
        _sh([sys.executable, "-m", "ua3dtalk.cli.train", f"experiment={experiment}", "scale=demo", f"seed={seed}",
             f"data.root={data}", "data.evaluator_fraction=0", "data.test_fraction=0", f"data.val_fraction={vf}",
             f"data.split_seed={seed}", "test.evaluators=null", f"paths.run_dir={run}", "resume=true", *args],
            work / "logs" / f"seed{seed}.log", _env(None, work, threads), ROOT)


def final_checkpoint(run: Path) -> Path:
    """The checkpoint a run ended with (``metrics.json`` → ``checkpoint``: the last stage's ``last.ckpt``). Both
    trees are scored on their final checkpoints: with test = val clips, one chosen by ``val/psnr`` would favour its
    side (``d689937``'s demo scored its final checkpoint too)."""
    try:
        ck = json.loads((Path(run) / "metrics.json").read_text()).get("checkpoint")
    except (OSError, ValueError) as e:
        raise FileNotFoundError(f"{run}: no finished run (metrics.json: {e})") from None
    if not ck or not Path(ck).is_file():
        raise FileNotFoundError(f"{run}: metrics.json names no checkpoint that exists ({ck!r})")
    return Path(ck)


def score(run: Path, evaluators: Optional[str], pred_dir: Optional[Path] = None, groups: str = GROUPS,
          max_frames: Optional[int] = None) -> dict:
    """Score the test clips of this tree's ``run``: rendered by its final checkpoint, or (``pred_dir``) read from
    the predictions another tree rendered for the same clips. The two must agree on the clips, their frame counts
    and the ground truth (to float16 precision), or the comparison is refused."""
    import numpy as np
    import torch

    from ua3dtalk.callbacks.metrics import render_sequence, split_sequences
    from ua3dtalk.cli.eval import build_eval_datamodule
    from ua3dtalk.cli.infer import load_model
    from ua3dtalk.data.batch import collate_batches
    from ua3dtalk.metrics.evaluator_dir import load_evaluators, parse_metrics
    from ua3dtalk.metrics.suite import MetricSuite

    g = parse_metrics(groups)
    ev = load_evaluators(evaluators, g)
    ckpt = final_checkpoint(run)
    model = load_model(ckpt)
    model.eval()
    dm = build_eval_datamodule(model, ckpt, None)
    ds, seqs = split_sequences(dm, "test", max_frames=max_frames)
    if pred_dir is not None:
        theirs = json.loads((Path(pred_dir) / "clips.json").read_text())["clips"]
        ours = [str(q.clip.clip_id) for q in seqs]
        if sorted(theirs) != sorted(ours):
            raise ValueError(f"{pred_dir} holds the clips {sorted(theirs)}, the run's test clips are {sorted(ours)}")
    suite = MetricSuite(ev, g)
    with torch.no_grad():
        for seq in seqs:
            if pred_dir is None:
                pred, gt, lms, label = render_sequence(model, ds, seq)
            else:
                b = collate_batches([ds[int(j)] for j in seq.items])
                gt, label = b.image.float(), int(b.emotion[0])
                lms = None if b.landmarks is None else b.landmarks.float()
                z = np.load(Path(pred_dir) / (str(seq.clip.clip_id).replace("/", "_") + ".npz"))
                pred = torch.from_numpy(z["pred"]).float()[:len(seq.items)]
                their_gt = torch.from_numpy(z["gt"]).float()[:len(seq.items)]
                if pred.shape != gt.shape or their_gt.shape != gt.shape:
                    raise ValueError(f"{pred_dir}: clip {seq.clip.clip_id} has frames {tuple(pred.shape)}, the "
                                     f"run's ground truth {tuple(gt.shape)}")
                if float((their_gt - gt).abs().max()) > 2e-3:  # float16 storage of the same jpg frames
                    raise ValueError(f"{pred_dir}: clip {seq.clip.clip_id} was rendered against other ground truth")
            suite.update(pred, gt, landmarks=lms, audio=seq.audio() if "sync" in g else None, emotion=label,
                         au45=seq.au45(), name=seq.name)
    return {"checkpoint": str(ckpt), "clips": [str(q.clip.clip_id) for q in seqs], "frames": int(suite.num_frames),
            "metrics": {k: float(v) for k, v in suite.compute().items()}}


def summarise(base: dict, ours: dict) -> list[dict]:
    """Per metric: each side's mean ± 95 % t-interval over seeds and the paired (same seed) difference ours − base."""
    from ua3dtalk.reporting.runs import aggregate

    seeds = sorted(set(base) & set(ours))
    rows = []
    for key, label, higher in ROWS:
        b = [base[s]["metrics"].get(key) for s in seeds]
        o = [ours[s]["metrics"].get(key) for s in seeds]
        if all(v is None for v in b + o):
            continue
        d = [None if x is None or y is None else y - x for x, y in zip(b, o)]
        rows.append({"metric": key, "label": label, "higher_is_better": higher, "seeds": seeds, "base": b,
                     "ours": o, "base_cell": aggregate(b).__dict__, "ours_cell": aggregate(o).__dict__,
                     "diff_cell": aggregate(d).__dict__})
    return rows


def _fmt(c: dict, digits: int) -> str:
    if c["mean"] is None:
        return "—"
    s = f"{c['mean']:.{digits}f}"
    return s + (f" ± {c['ci95']:.{digits}f}" if c.get("ci95") is not None else "") + f" (n={c['n']})"


def table(rows: list[dict], rev: str) -> str:
    out = [f"| held-out metric (test = val clips of {rev}'s set) | {rev} | this tree | this tree − {rev} (paired) |",
           "|---|--:|--:|--:|"]
    for r in rows:
        dg = 2 if r["metric"] in ("psnr", "sync_c", "sync_d") else 3
        out.append(f"| {r['label']} | {_fmt(r['base_cell'], dg)} | {_fmt(r['ours_cell'], dg)} | "
                   f"{_fmt(r['diff_cell'], dg)} |")
    return "\n".join(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("work", help="working directory (created; reused to resume)")
    ap.add_argument("--rev", default=BASELINE, help=f"the baseline commit (default {BASELINE})")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--jobs", type=int, default=1, help="runs trained at a time (the threads are shared)")
    ap.add_argument("--experiment", default="paper_mead", help="this tree's experiment (at scale=demo)")
    ap.add_argument("args", nargs="*", help="extra Hydra overrides of this tree's runs")
    a = ap.parse_args(argv)
    try:
        seeds = [int(s) for s in a.seeds.split(",") if s.strip()]
    except ValueError:
        print(f"quality_vs: --seeds must be integers, got {a.seeds!r}", file=sys.stderr)
        return 2
    if not seeds or a.jobs < 1:
        print("quality_vs: give at least one seed and --jobs ≥ 1", file=sys.stderr)
        return 2
    work = Path(a.work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    cpus = os.cpu_count() or 1
    try:
        base = prepare(work, a.rev, threads=cpus)
        threads = max(1, cpus // a.jobs)
        with ThreadPoolExecutor(a.jobs) as pool:
            for f in [pool.submit(train_pair, work, base, s, a.experiment, a.args, threads) for s in seeds]:
                f.result()
        ev = str(work / "evaluators")
        res = {"base": {}, "ours": {}}
        for s in seeds:
            res["ours"][s] = score(work / "runs" / f"seed{s}", ev)
            res["base"][s] = score(work / "runs" / f"seed{s}", ev, work / "pred" / f"seed{s}")
            print(f"[quality_vs] seed {s}: {a.rev} psnr {res['base'][s]['metrics'].get('psnr'):.2f}, this tree "
                  f"{res['ours'][s]['metrics'].get('psnr'):.2f}", flush=True)
    except (ValueError, RuntimeError, FileNotFoundError) as e:
        print(f"quality_vs: {e}", file=sys.stderr)
        return 1
    rows = summarise(res["base"], res["ours"])
    (work / "quality_vs.json").write_text(json.dumps({"rev": a.rev, "seeds": seeds, "experiment": a.experiment,
                                                      "args": a.args, "scores": res, "rows": rows}, indent=1))
    print(table(rows, a.rev))
    return 0


if __name__ == "__main__":
    sys.exit(main())
