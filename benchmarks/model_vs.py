"""The training step and inference of this tree against an earlier commit's, measured side by side here.

A step-time target set on one machine cannot be judged with a figure from another: the same code runs at
different speeds on different hosts (the code of 2026-11-24, whose step was 0.285 s and 0.461 s with every
term on when the target of ≤ 0.35 s was set, takes 0.45–0.49 s and 0.78–0.82 s on the 2-core host of
2026-12-04). This script exports ``--rev`` with ``git archive`` into a temporary directory, runs that
commit's ``benchmarks/model.py`` and this tree's one after the other (``--repeats`` alternations, the
median kept) with the same Python, and prints every row of both with the ratio this / baseline. The
target is a ratio: ``0.35 / 0.461 = 0.76`` for the step with every term the experiments turn on.

This tree runs with the allocator ``ua3dtalk-train`` sets (``cpu_allocator=reuse``); ``--system-allocator`` adds
its figures with glibc's own (the earlier commits ran with that).

    python benchmarks/model_vs.py [--rev d689937] [--repeats 1] [--steps 8] [--frames 40] [--system-allocator]

Run it on an idle machine (the load average is printed before and after).
"""
from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))  # also when loaded by path (the tests)
from first_run import load  # noqa: E402  (the load average, printed before and after)

#: the commit the step target was set against (2026-11-24: 0.285 s, 0.461 s with every term on, 23.7 frames/s)
BASELINE = "d689937"
#: the target ratio of the step with every term on: ≤ 0.35 s where the baseline took 0.461 s
TARGET_RATIO = 0.35 / 0.461

#: rows compared: (label, start of the row in benchmarks/model.py's table, unit)
ROWS = (("training step, all modules", "| training step", "s"),
        ("the same + landmark term + emotion swap (every term on)", "| the same + landmark", "s"),
        ("inference, fused statistics kernel", "| inference (deformation", "frames/s"))

_NUM = re.compile(r"([0-9]+(?:\.[0-9]+)?)\s*(?:s|frames/s)\b")


def parse_rows(text: str) -> dict[str, tuple[float, float]]:
    """``{label: (float32, bfloat16)}`` from the table ``benchmarks/model.py`` prints (rows of :data:`ROWS`;
    a row that is missing is left out)."""
    out = {}
    for line in text.splitlines():
        for label, start, _ in ROWS:
            if line.startswith(start):
                cells = [c.strip() for c in line.strip().strip("|").split("|")]
                nums = [float(m.group(1)) for c in cells[1:3] for m in [_NUM.search(c)] if m]
                if len(nums) == 2:
                    out[label] = (nums[0], nums[1])
    return out


_PEAK = re.compile(r"^peak resident memory[^:]*:\s*([0-9.]+)\s*MB", re.M)


def run_model_bench(tree: Path, args: list[str]) -> dict[str, tuple[float, float]]:
    """Run ``tree``'s ``benchmarks/model.py`` (its own ``src`` first on the path) and parse its table."""
    env = {**os.environ, "PYTHONPATH": str(tree / "src")}
    r = subprocess.run([sys.executable, "benchmarks/model.py", *args], cwd=tree, env=env, text=True,
                       capture_output=True)
    if r.returncode != 0:
        raise SystemExit(f"model_vs: benchmarks/model.py failed in {tree}:\n{r.stderr[-2000:]}")
    rows = parse_rows(r.stdout)
    if not rows:
        raise SystemExit(f"model_vs: no table rows in the output of benchmarks/model.py in {tree}")
    peak = _PEAK.search(r.stdout)
    if peak:  # printed by this tree's benchmarks/model.py (not by older commits')
        rows["peak resident memory"] = (float(peak.group(1)), float(peak.group(1)))
    return rows


def ratio_table(base: dict, cur: dict, rev: str, cur_system: dict | None = None) -> str:
    """Markdown rows: each measurement, baseline and current figures (float32 / bfloat16) and the ratio
    current / baseline of the bfloat16 column (the experiments' ``compute_dtype=auto`` here). ``cur_system``:
    this tree again with glibc's own allocator (``--allocator system``), as two more columns."""
    sys_head = " this tree, system allocator | its ratio |" if cur_system is not None else ""
    lines = [f"| measurement (bfloat16 matmuls; float32 in brackets) | {rev} | this tree | this / {rev} |{sys_head}"
             " target |", "|---|--:|--:|--:|" + ("--:|--:|" if cur_system is not None else "") + "--:|"]
    for label, _, unit in ROWS:
        if label not in base or label not in cur:
            continue
        (b32, b16), (c32, c16) = base[label], cur[label]
        ratio = c16 / b16
        target = f"≤ {TARGET_RATIO:.2f}" if label.startswith("the same") else ""
        extra = ""
        if cur_system is not None:
            s32, s16 = cur_system.get(label, (float("nan"), float("nan")))
            extra = f" {s16:g} {unit} ({s32:g}) | {s16 / b16:.2f}× |"
        lines.append(f"| {label} | {b16:g} {unit} ({b32:g}) | {c16:g} {unit} ({c32:g}) | {ratio:.2f}× |{extra}"
                     f" {target} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rev", default=BASELINE, help=f"the baseline commit (default {BASELINE})")
    ap.add_argument("--repeats", type=int, default=1, help="alternations of baseline and this tree (median kept)")
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--frames", type=int, default=40)
    ap.add_argument("--system-allocator", action="store_true",
                    help="also run this tree with glibc's own allocator (benchmarks/model.py --allocator system)")
    a = ap.parse_args(argv)
    if a.repeats < 1:
        ap.error("--repeats must be >= 1")
    bench_args = ["--steps", str(a.steps), "--frames", str(a.frames)]
    print(f"load average before: {load()}", flush=True)
    with tempfile.TemporaryDirectory(prefix="model_vs_") as tmp:
        base_tree = Path(tmp) / "baseline"
        base_tree.mkdir()
        try:
            archive = subprocess.run(["git", "archive", a.rev], cwd=ROOT, capture_output=True, check=True).stdout
        except subprocess.CalledProcessError as e:
            print(f"model_vs: cannot export --rev {a.rev}: {e.stderr.decode(errors='replace').strip()}",
                  file=sys.stderr)
            return 2
        subprocess.run(["tar", "-x", "-C", str(base_tree)], input=archive, check=True)
        runs: dict[str, list] = {"base": [], "cur": [], "sys": []}
        for i in range(a.repeats):
            print(f"[{i + 1}/{a.repeats}] {a.rev} …", flush=True)
            runs["base"].append(run_model_bench(base_tree, bench_args))
            print(f"[{i + 1}/{a.repeats}] this tree …", flush=True)
            runs["cur"].append(run_model_bench(ROOT, bench_args))
            if a.system_allocator:
                print(f"[{i + 1}/{a.repeats}] this tree, system allocator …", flush=True)
                runs["sys"].append(run_model_bench(ROOT, [*bench_args, "--allocator", "system"]))
    med = {k: {label: tuple(statistics.median(r[label][j] for r in v if label in r) for j in (0, 1))
               for label in v[0]} for k, v in runs.items() if v}
    print(ratio_table(med["base"], med["cur"], a.rev, med.get("sys")))
    for k, name in (("cur", "this tree"), ("sys", "this tree, system allocator")):
        if "peak resident memory" in med.get(k, {}):
            print(f"peak resident memory, {name}: {med[k]['peak resident memory'][0]:.0f} MB")
    print(f"\nload average after: {load()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
