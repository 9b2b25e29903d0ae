"""The report of a trained avatar of one's own video (``make video``; DESIGN §9): held-out frames beside their
renders, the held-out metrics with the evaluator that produced each, and the driven mp4.

    python -m ua3dtalk.reporting.video_report RUN [--driven me.mp4] [--out DIR] [--frames 4]

``RUN`` is a training run directory (``ua3dtalk-train experiment=own_video data.root=…``). Its best
checkpoint (:func:`ua3dtalk.cli.infer.resolve_checkpoint`) renders the validation frames of the run's own
split — frames the avatar never trained on — in frame order, driven by their own audio. ``DIR`` (default
``RUN/report``) receives ``report.md``, ``heldout.png`` (ground truth above render, ``--frames`` frames spread
over the held-out part), ``heldout.mp4`` (ground truth | render, with audio) and a copy of the driven mp4.
Metrics are read from ``RUN/metrics.json``: ``val/*`` keys written by ``ua3dtalk-eval ckpt=RUN split=val``
(preferred: scored on every held-out frame) or by training's last validation. Everything is built in a
staging directory and swapped in on success.
"""
from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from typing import Optional

PROG = "ua3dtalk-video-report"


def _png(path: Path, img) -> None:
    import imageio.v3 as iio

    path.write_bytes(iio.imwrite("<bytes>", img, extension=".png"))


def heldout_renders(run: Path, n_frames: int = 4):
    """``(gt, pred, ckpt)``: the run's validation frames rendered by its best checkpoint, ``[n,3,H,W]`` in
    [0, 1] (frame order, own audio), and the checkpoint used."""
    import torch

    from ..callbacks.metrics import render_sequence, split_sequences
    from ..cli.eval import build_eval_datamodule
    from ..cli.infer import load_model, resolve_checkpoint

    ckpt = resolve_checkpoint(run, PROG)
    model = load_model(ckpt)
    dm = build_eval_datamodule(model, ckpt)
    dataset, seqs = split_sequences(dm, "val", max_clips=1, max_frames=None)
    if not seqs:
        raise ValueError(f"{run}: the run's dataset has no validation frames to show")
    with torch.no_grad():
        pred, gt, _, _ = render_sequence(model, dataset, seqs[0])
    return gt.clamp(0, 1), pred.clamp(0, 1), ckpt, model, dm


def _metric_rows(metrics: dict) -> list[tuple[str, str, str]]:
    evs = metrics.get("metrics_evaluators") or {}
    rows = []
    for k in sorted(metrics):
        v = metrics[k]
        if not k.startswith("val/") or not isinstance(v, (int, float)):
            continue
        rows.append((k, f"{v:.4g}", str(evs.get(k, "training validation"))))
    return rows


def write_report(run: Path, out: Optional[Path] = None, driven: Optional[Path] = None, n_frames: int = 4) -> Path:
    """Write the report (see the module docstring); returns ``out/report.md``."""
    import numpy as np

    from ..callbacks.media import write_clip_video
    from ..utils.io import atomic_directory

    from ..utils.io import check_output_dir

    run = Path(run)
    out = Path(out) if out is not None else run / "report"
    check_output_dir(out, "--out", {"--driven": driven}, own=lambda d: (d / "report.md").is_file(), what="report")
    mf = run / "metrics.json"
    if not run.is_dir():
        raise FileNotFoundError(f"{run} is not a run directory")
    if not mf.is_file():
        raise FileNotFoundError(f"{run}: no metrics.json (not a finished training run)")
    metrics = json.loads(mf.read_text())
    if not isinstance(metrics, dict):
        raise ValueError(f"{mf}: not a JSON object")
    if driven is not None and not Path(driven).is_file():
        raise FileNotFoundError(f"--driven: {driven} not found")
    gt, pred, ckpt, model, dm = heldout_renders(run, n_frames)
    idx = np.unique(np.linspace(0, len(gt) - 1, max(1, min(n_frames, len(gt)))).round().astype(int))
    to8 = lambda t: (t.permute(1, 2, 0).numpy() * 255 + 0.5).clip(0, 255).astype(np.uint8)  # noqa: E731
    sheet = np.concatenate([np.concatenate([to8(gt[i]) for i in idx], 1),
                            np.concatenate([to8(pred[i]) for i in idx], 1)], 0)
    with atomic_directory(out) as stage:
        stage = Path(stage)
        _png(stage / "heldout.png", sheet)
        write_clip_video(model, dm, "val", stage / "heldout.mp4")
        if driven is not None:
            shutil.copyfile(driven, stage / "driven.mp4")
        lines = [f"# {metrics.get('experiment', 'run')} — {metrics.get('subject', '')}", "",
                 f"Run `{run}`, checkpoint `{ckpt}`; dataset `{metrics.get('data', '')}`.", "",
                 f"## Held-out frames ({len(gt)} validation frames, never trained on)", "",
                 "Ground truth (top) and render (bottom), frames "
                 + ", ".join(str(int(i)) for i in idx) + " of the held-out part:", "",
                 "![held-out frames](heldout.png)", "",
                 "[held-out clip: ground truth | render, own audio](heldout.mp4)", "",
                 "## Held-out metrics", "", "| metric | value | evaluator |", "|---|---|---|"]
        rows = _metric_rows(metrics)
        lines += [f"| `{k}` | {v} | {e} |" for k, v, e in rows] or ["| — | — | — |"]
        lines += ["", "Metrics whose evaluator is missing are left out (`ua3dtalk-eval` names what is missing); "
                  "LPIPS needs the AlexNet weights, LMD and Sync-C/D an evaluator directory "
                  "(`ua3dtalk-eval ckpt=RUN split=val evaluators=DIR`).", ""]
        if driven is not None:
            lines += ["## Driven by new speech", "", "[driven.mp4](driven.mp4)", ""]
        (stage / "report.md").write_text("\n".join(lines))
    return out / "report.md"


def main(argv=None) -> int:
    from ..cli.args import Parser, int_in

    p = Parser(prog=PROG, description=__doc__.split("\n\n")[0])
    p.add_argument("run", help="training run directory")
    p.add_argument("--driven", default=None, help="the driven mp4 (ua3dtalk-infer … out=FILE) to include")
    p.add_argument("--out", default=None, help="report directory (default RUN/report)")
    p.add_argument("--frames", type=int_in(1, 16), default=4, help="held-out frames in the picture")
    a = p.parse_args(argv)
    try:
        path = write_report(Path(a.run), a.out and Path(a.out), a.driven and Path(a.driven), a.frames)
        print(f"{PROG}: wrote {path}")
        return 0
    except (FileNotFoundError, ValueError, OSError) as e:  # one line naming the file or argument, exit 2
        print(f"{PROG}: error: {e}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
