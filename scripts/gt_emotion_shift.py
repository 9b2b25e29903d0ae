"""Ground-truth emotion shift of the synthetic emotional set: how much the data's own expression changes the
face, in the units of ``test/emo_shift``.

For every emotional clip of a role (e.g. the test clips of a run), the clip is re-rendered twice from its
``synth.json``: with its expression, and as its *neutral twin* (the emotional coefficients removed,
:func:`ua3dtalk.data.synth.generate.render_neutral_twin`; pose, speech, blinks and camera unchanged). The
shift is the mean absolute difference (0–255, mean over RGB) inside the bounding box of each frame's
landmarks, as ``ua3dtalk-eval control=true`` measures a label's effect. Printed per clip (mean over frames and
the frame maximum, near the expression's apex) and per intensity level.

    python scripts/gt_emotion_shift.py --data data/synth_small_emotional/synth0 \
        --metrics outputs/demo/metrics.json --role test_clips
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def clip_shift(clip_dir: Path):
    """(mean over frames, max over frames) of the face-box shift of one clip."""
    import numpy as np

    from ua3dtalk.data.synth.generate import render_clip, render_neutral_twin

    frames, lms = render_clip(clip_dir)
    twin, _ = render_neutral_twin(clip_dir)
    diff = np.abs(frames.astype(np.float32) - twin.astype(np.float32)).mean(-1)  # [N,H,W]
    vals = []
    for i in range(len(frames)):
        lo, hi = lms[i].min(0).astype(int), lms[i].max(0).astype(int)
        vals.append(float(diff[i, lo[1]:hi[1] + 1, lo[0]:hi[0] + 1].mean()))
    return float(np.mean(vals)), float(np.max(vals))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, required=True, help="the subject directory (…/synth0)")
    ap.add_argument("--metrics", type=Path, required=True, help="a run's metrics.json with eval_protocol")
    ap.add_argument("--role", default="test_clips", help="eval_protocol list (default test_clips)")
    a = ap.parse_args(argv)
    try:
        clips = json.loads(a.metrics.read_text())["eval_protocol"][a.role]
    except (OSError, ValueError, KeyError) as e:
        print(f"gt_emotion_shift: {a.metrics}: no eval_protocol/{a.role} ({e})", file=sys.stderr)
        return 2
    by_level: dict[int, list[float]] = {}
    print("| clip | emotion | intensity | shift (mean) | shift (max) |\n|---|---|--:|--:|--:|")
    for c in clips:
        d = a.data / c.split("/", 1)[1]
        meta = json.loads((d / "synth.json").read_text())
        if meta.get("emotion", "neutral") == "neutral":
            continue
        mean, peak = clip_shift(d)
        level = int(meta.get("intensity", 0))
        by_level.setdefault(level, []).append(mean)
        print(f"| {c} | {meta['emotion']} | {level} | {mean:.2f} | {peak:.2f} |", flush=True)
    for level, v in sorted(by_level.items()):
        print(f"intensity {level}: mean shift {sum(v) / len(v):.2f} over {len(v)} clips")
    return 0


if __name__ == "__main__":
    sys.exit(main())
