"""Smoke run: wall time of ``ua3dtalk-train experiment=smoke`` per stage, against its 2-minute budget.

Runs the smoke experiment (all five stages on the tiny emotional synthetic set) in this checkout, into a
temporary run directory, and prints one row per stage — the ``seconds`` each stage records in its
``checkpoints/<stage>/done.json`` — plus ``start-up`` (the rest of the wall time: imports, configuration,
the data module and features, the C++ kernels' first load) and the total against the budget (120 s). The
tiny data set is generated first when it is missing (``ua3dtalk-train`` does that on first use); that is
timed on its own row and not counted in the smoke run. Run it on an idle machine after ``make setup``: it
prints the load average before and after (a figure taken beside other jobs is not a timing).
``--run-dir DIR --total S`` prints the table of an earlier run instead.

    python benchmarks/smoke.py [--keep] [-- extra ua3dtalk-train overrides]
    python benchmarks/smoke.py --run-dir outputs/runs/tiny/smoke/synth0/seed0 --total 110
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))  # also when loaded by path (the tests)
from first_run import load  # noqa: E402  (the load average, printed before and after)

STAGES = ("prior", "emotion", "mouth", "face", "fuse")
BUDGET = 120.0


def stage_seconds(run_dir: Path) -> dict[str, float]:
    """``{stage: seconds}`` of the stages of ``run_dir`` that finished (``done.json``)."""
    out = {}
    for s in STAGES:
        done = Path(run_dir) / "checkpoints" / s / "done.json"
        if done.is_file():
            out[s] = float(json.loads(done.read_text())["seconds"])
    return out


def table(stages: dict[str, float], total: float, data: float | None = None) -> str:
    """Markdown table: the stages, start-up (= ``total`` − Σ stages), the total against the budget; ``data``:
    the first-use generation of the data set (outside the smoke run's budget)."""
    rows = {**stages, "start-up": max(0.0, total - sum(stages.values()))}
    out = ["| step | seconds | share |", "|---|--:|--:|"]
    for name, s in rows.items():
        out.append(f"| {name} | {s:.0f} | {100 * s / max(total, 1e-9):.0f} % |")
    out.append(f"| total (budget {BUDGET:.0f}) | {total:.0f} | {'within' if total <= BUDGET else 'over'} |")
    if data is not None:
        out.append(f"| preparation: data set on first use, one prior step (not counted) | {data:.0f} | |")
    return "\n".join(out)


def _train_cmd() -> list[str]:
    exe = Path(sys.executable).with_name("ua3dtalk-train")
    return [str(exe)] if exe.is_file() else [sys.executable, "-m", "ua3dtalk.cli.train"]


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[:argv.index("--")] if "--" in argv else argv
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run-dir", type=Path, help="an earlier smoke run's directory (no run)")
    ap.add_argument("--total", type=float, help="with --run-dir: that run's wall time in seconds")
    ap.add_argument("--keep", action="store_true", help="keep the run directory")
    a = ap.parse_args(argv)
    if a.run_dir is not None:
        if a.total is None:
            ap.error("--run-dir needs --total (the run's wall time in seconds)")
        stages = stage_seconds(a.run_dir)
        if not stages:
            print(f"smoke: {a.run_dir}: no finished stage (checkpoints/<stage>/done.json)", file=sys.stderr)
            return 2
        print(table(stages, a.total))
        return 0
    tmp = Path(tempfile.mkdtemp(prefix="ua3dtalk-smoke-"))
    run_dir = tmp / "run"
    base = [*_train_cmd(), "experiment=smoke", "~logger", "trainer.enable_progress_bar=false", *extra]
    quiet = dict(stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        print(f"load average before: {load()}", flush=True)
        # the data set on its own (a zero-step prior stage generates it when missing; seconds when present)
        t0 = time.perf_counter()
        r = subprocess.run([*base, f"paths.run_dir={tmp / 'data-only'}", "stages=[prior]", "stage_steps.prior=1"],
                           **quiet)
        data = time.perf_counter() - t0
        if r.returncode != 0:
            print(f"smoke: preparing the data failed (exit {r.returncode}):\n{r.stderr[-3000:]}", file=sys.stderr)
            return 1
        t0 = time.perf_counter()
        r = subprocess.run([*base, f"paths.run_dir={run_dir}"], **quiet)
        total = time.perf_counter() - t0
        print(f"load average after: {load()}", flush=True)
        if r.returncode != 0:
            print(f"smoke: ua3dtalk-train failed (exit {r.returncode}) after {total:.0f} s:\n{r.stderr[-3000:]}",
                  file=sys.stderr)
            return 1
        print(table(stage_seconds(run_dir), total, data))
        return 0
    finally:
        if a.keep:
            print(f"run kept: {run_dir}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
