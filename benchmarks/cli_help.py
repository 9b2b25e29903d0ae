"""Console-script help: wall time of ``<script> --help`` for every console script of ``setup.cfg``.

Each script runs in a fresh process (the installed ``.venv/bin/<name>`` when present, else
``python -c "from <module> import main; main()"``); the best of ``--repeats`` runs is reported with
whether it is within the budget (2 s) and whether it exited 0.

    python benchmarks/cli_help.py [--repeats 3] [--budget 2.0]
"""
from __future__ import annotations

import argparse
import configparser
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def console_scripts(setup_cfg: Path = ROOT / "setup.cfg") -> dict[str, str]:
    """``name → module:function`` of the ``console_scripts`` entry points of ``setup_cfg``."""
    cp = configparser.ConfigParser()
    cp.read(setup_cfg)
    out = {}
    for line in cp.get("options.entry_points", "console_scripts", fallback="").splitlines():
        if "=" in line:
            name, target = (s.strip() for s in line.split("=", 1))
            out[name] = target
    return out


def command(name: str, target: str) -> list[str]:
    exe = Path(sys.executable).parent / name
    if exe.is_file() and os.access(exe, os.X_OK):
        return [str(exe), "--help"]
    module, func = target.split(":")
    return [sys.executable, "-c", f"import sys; sys.argv = [{name!r}, '--help']; from {module} import {func}; "
                                  f"sys.exit({func}())"]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--budget", type=float, default=2.0, help="seconds (default 2)")
    a = ap.parse_args(argv)
    rows = []
    for name, target in console_scripts().items():
        best, code = float("inf"), None
        for _ in range(max(1, a.repeats)):
            t0 = time.perf_counter()
            r = subprocess.run(command(name, target), cwd=ROOT, capture_output=True)
            best, code = min(best, time.perf_counter() - t0), r.returncode
        rows.append((name, best, code))
    width = max(len(n) for n, _, _ in rows)
    print(f"| {'script':<{width}} | seconds | ≤ {a.budget:g} s | exit |")
    print(f"|{'-' * (width + 2)}|--------:|:------:|-----:|")
    for name, s, code in rows:
        print(f"| {name:<{width}} | {s:7.2f} | {'yes' if s <= a.budget else 'no':^6} | {code:4d} |")
    return 0 if all(code == 0 for _, _, code in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
