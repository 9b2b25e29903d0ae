"""First run: wall time of every step of ``make demo`` from a fresh clone, against the first-run budget.

Clones the repository's committed HEAD into a temporary directory, runs ``make demo`` there (set-up of
``.venv`` included, as a new user would) and prints one row per step — set-up, data, evaluators, train,
evaluate, render, report — with its share of the total and the budget of each step where there is one
(data ≤ 60 s, evaluators ≤ 60 s, the whole first run ≤ 10 min). The demo's own step times come from the
``demo_seconds`` it records in ``outputs/demo/metrics.json``; set-up is the rest of the wall time.

Caches start empty, as on a new machine: the clone's ``make`` gets its own uv, pip and torch-extension
cache directories (so packages are downloaded and the C++ kernels compiled; ``--warm`` keeps the user's
caches). Run it on an idle machine (it prints the load average before and after: a figure taken beside
other jobs is not a timing). ``--metrics FILE --total S`` prints the table of an earlier demo instead of running one.

    python benchmarks/first_run.py [--keep] [--warm] [--make make]
    python benchmarks/first_run.py --metrics outputs/demo/metrics.json --total 1338
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

#: budget per step (seconds); None = no budget of its own
BUDGETS = {"set-up": None, "data": 60.0, "evaluators": 60.0, "train": None, "evaluate": None, "render": None,
           "report": None, "total": 600.0}


def short_name(step: str) -> str:
    """``"train: experiment demo_synth, stages [...]"`` → ``"train"``."""
    return step.split(":")[0].strip()


def table(demo_seconds: dict[str, float], total: float) -> str:
    """Markdown table of the steps (set-up = ``total`` − the demo's steps)."""
    steps = {short_name(k): float(v) for k, v in demo_seconds.items()}
    rows = {"set-up": max(0.0, total - sum(steps.values())), **steps, "total": total}
    out = ["| step | seconds | share | budget | within |", "|---|--:|--:|--:|:-:|"]
    for name, s in rows.items():
        b = BUDGETS.get(name)
        share = "" if name == "total" else f"{100 * s / max(total, 1e-9):.0f} %"
        out.append(f"| {name} | {s:.0f} | {share} | {'' if b is None else f'{b:.0f}'} | "
                   f"{'' if b is None else ('yes' if s <= b else 'no')} |")
    return "\n".join(out)


def load() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:  # pragma: no cover - platforms without getloadavg
        return "n/a"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--metrics", type=Path, help="an earlier demo's metrics.json (no run)")
    ap.add_argument("--total", type=float, help="with --metrics: that run's wall time in seconds, set-up included")
    ap.add_argument("--make", default="make", help="the make program (default: make)")
    ap.add_argument("--keep", action="store_true", help="keep the temporary clone")
    ap.add_argument("--warm", action="store_true", help="use the user's package and kernel caches")
    a = ap.parse_args(argv)
    if a.metrics is not None:
        if a.total is None:
            ap.error("--metrics needs --total (the run's wall time in seconds)")
        try:
            steps = json.loads(a.metrics.read_text())["demo_seconds"]
        except (OSError, ValueError, KeyError) as e:
            print(f"first_run: {a.metrics}: no demo_seconds ({e})", file=sys.stderr)
            return 2
        print(table(steps, a.total))
        return 0
    tmp = Path(tempfile.mkdtemp(prefix="ua3dtalk-first-run-"))
    clone = tmp / "p"
    try:
        subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
        print(f"load average before: {load()}", flush=True)
        t0 = time.perf_counter()
        env = dict(os.environ)
        if not a.warm:  # a new machine: nothing downloaded or compiled yet
            for key, sub in (("UV_CACHE_DIR", "uv-cache"), ("PIP_CACHE_DIR", "pip-cache"),
                             ("TORCH_EXTENSIONS_DIR", "torch-extensions")):
                env[key] = str(tmp / sub)
        r = subprocess.run([a.make, "demo"], cwd=clone, env=env)
        total = time.perf_counter() - t0
        print(f"load average after: {load()}", flush=True)
        if r.returncode != 0:
            print(f"first_run: make demo failed (exit {r.returncode}) after {total:.0f} s", file=sys.stderr)
            return 1
        steps = json.loads((clone / "outputs" / "demo" / "metrics.json").read_text())["demo_seconds"]
        print(table(steps, total))
        return 0
    finally:
        if a.keep:
            print(f"clone kept: {clone}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
