"""``ua3dtalk-bench``: list and run the project's benchmark scripts (``benchmarks/*.py``).

    ua3dtalk-bench                       # list the benchmarks with their one-line descriptions
    ua3dtalk-bench render model          # run these (each prints its own ratio table)
    ua3dtalk-bench all                   # run every benchmark, in name order
    ua3dtalk-bench render -- --repeats 3 # arguments after -- go to every benchmark run
    ua3dtalk-bench --dir path/to/benchmarks cli_help

The benchmarks live in ``benchmarks/`` at the repository root (beside ``src/``); ``--dir`` names another
directory. Each runs as ``python <script>`` in its own process with the repository root as working
directory; the exit code is 0 when every benchmark run succeeded, 1 when one failed, 2 for an unknown name
or a missing directory.
"""
from __future__ import annotations

import argparse
import ast
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

from .args import Parser

PROG = "ua3dtalk-bench"


def find_benchmarks(directory: Path) -> dict[str, Path]:
    """``name → script`` of the benchmark scripts in ``directory`` (``*.py`` not starting with ``_``), sorted."""
    return {p.stem: p for p in sorted(Path(directory).glob("*.py")) if not p.name.startswith("_")}


def describe(script: Path) -> str:
    """The first line of a script's module docstring (without running it), or ``""``."""
    try:
        doc = ast.get_docstring(ast.parse(script.read_text(encoding="utf-8")))
    except (OSError, SyntaxError, UnicodeDecodeError, ValueError):
        return ""
    return doc.strip().splitlines()[0] if doc and doc.strip() else ""


def select(available: dict[str, Path], names: Sequence[str]) -> list[str]:
    """The benchmarks ``names`` asks for (``all``: every one), in the order given, each once; raises
    ValueError naming the unknown ones and the available."""
    if "all" in names:
        return list(available)
    unknown = [n for n in names if n not in available]
    if unknown:
        raise ValueError(f"unknown benchmark(s) {', '.join(unknown)}; available: {', '.join(available) or 'none'}")
    return list(dict.fromkeys(names))


def run_benchmark(script: Path, args: Sequence[str] = (), cwd: Optional[Path] = None) -> int:
    """Run one benchmark script in a fresh interpreter (its output goes to this process's); its exit code."""
    return subprocess.run([sys.executable, str(script), *args], cwd=str(cwd) if cwd else None).returncode


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra: list[str] = []
    if "--" in argv:
        i = argv.index("--")
        argv, extra = argv[:i], argv[i + 1:]
    ap = Parser(prog=PROG, description=__doc__.splitlines()[0], epilog=__doc__.split("\n\n", 1)[1],
                formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("names", nargs="*", help="benchmarks to run (a script name without .py, or all); none: list them")
    ap.add_argument("--dir", default=None,
                    help="the benchmarks directory (default: benchmarks/ at the repository root)")
    a = ap.parse_args(argv)
    from ..paths import benchmarks_dir, repo_root

    directory = Path(a.dir) if a.dir else benchmarks_dir()
    if not directory.is_dir():
        print(f"{PROG}: error: no benchmarks directory {directory} (give --dir DIR)", file=sys.stderr)
        return 2
    available = find_benchmarks(directory)
    if not a.names:
        width = max((len(n) for n in available), default=0)
        print(f"benchmarks in {directory} (run: {PROG} NAME... | {PROG} all):")
        for name, script in available.items():
            print(f"  {name:<{width}}  {describe(script)}")
        return 0
    try:
        names = select(available, a.names)
    except ValueError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 2
    cwd = repo_root() if not a.dir else directory.parent
    failed = []
    for name in names:
        print(f"== {name} ({available[name]})", flush=True)
        t0 = time.perf_counter()
        code = run_benchmark(available[name], extra, cwd)
        print(f"== {name}: {'ok' if code == 0 else f'exit {code}'} in {time.perf_counter() - t0:.1f} s", flush=True)
        if code != 0:
            failed.append(name)
    if failed:
        print(f"{PROG}: failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
