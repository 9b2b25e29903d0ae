#!/usr/bin/env python
"""Strip outputs and execution counts from notebooks (they are committed without outputs).

    python scripts/strip_notebooks.py notebooks/*.ipynb        # rewrite in place
    python scripts/strip_notebooks.py --check notebooks/*.ipynb # exit 1 when one has outputs
"""
from __future__ import annotations

import argparse
import sys

import nbformat


def strip(nb) -> bool:
    changed = False
    for cell in nb.cells:
        if cell.cell_type == "code":
            if cell.get("outputs") or cell.get("execution_count") is not None:
                changed = True
            cell["outputs"], cell["execution_count"] = [], None
        if cell.get("metadata", {}).pop("execution", None) is not None:
            changed = True
    return changed


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("paths", nargs="+")
    ap.add_argument("--check", action="store_true")
    a = ap.parse_args(argv)
    bad = []
    for p in a.paths:
        nb = nbformat.read(p, as_version=4)
        if strip(nb):
            bad.append(p)
            if not a.check:
                nbformat.write(nb, p)
    if a.check and bad:
        print("notebooks with outputs: " + ", ".join(bad), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
