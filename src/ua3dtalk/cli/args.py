"""The argument layer shared by the argparse scripts: one-line errors and range-checked number types.

:class:`Parser` prints a bad argument as one line (``<prog>: error: argument --x: …``) and exits 2, without
the usage block; :func:`int_in` / :func:`float_in` are argparse ``type=`` callables that refuse a value out of
range (and NaN/inf), so every count, limit, size and quality is checked before work starts.
"""
from __future__ import annotations

import argparse
import math
from typing import Callable, Optional


class Parser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` whose errors are one line on stderr and exit 2."""

    def error(self, message):  # noqa: D401 - argparse API
        self.exit(2, f"{self.prog}: error: {message}\n")


def doc_parser(prog: str, doc: str) -> Parser:
    """A :class:`Parser` for the script ``prog`` described by the first paragraph of its module docstring
    ``doc``, kept as written (``RawDescriptionHelpFormatter``)."""
    return Parser(prog=prog, description=doc.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)


def _bounds(lo, hi) -> str:
    if hi is None:
        return f"≥ {lo}"
    return f"between {lo} and {hi}"


def int_in(lo: int, hi: Optional[int] = None) -> Callable[[str], int]:
    """An integer ``lo ≤ x ≤ hi`` (``hi=None``: no upper bound)."""
    def conv(s: str) -> int:
        try:
            v = int(s)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer {_bounds(lo, hi)}, got {s!r}") from None
        if v < lo or (hi is not None and v > hi):
            raise argparse.ArgumentTypeError(f"must be {_bounds(lo, hi)}, got {v}")
        return v
    conv.__name__ = "integer"
    return conv


def float_in(lo: float, hi: Optional[float] = None, *, open_lo: bool = False) -> Callable[[str], float]:
    """A finite number ``lo ≤ x ≤ hi`` (``open_lo``: ``lo < x``)."""
    def conv(s: str) -> float:
        try:
            v = float(s)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {s!r}") from None
        if not math.isfinite(v) or (v <= lo if open_lo else v < lo) or (hi is not None and v > hi):
            what = f"> {lo}" + (f" and ≤ {hi}" if hi is not None else "") if open_lo else _bounds(lo, hi)
            raise argparse.ArgumentTypeError(f"must be a finite number {what}, got {s}")
        return v
    conv.__name__ = "number"
    return conv


def key_value_main(argv, prog: str, keys, doc: str, run: Callable[[list], int],
                   errors: Callable[[], tuple] = lambda: (ValueError, FileNotFoundError)) -> int:
    """The ``main`` of a ``key=value`` script (``ua3dtalk-infer``, ``ua3dtalk-eval``): ``argv`` (default
    ``sys.argv[1:]``) asking for help (``-h``, ``--help`` or ``help``) prints a usage line naming ``keys``
    and ``doc``, exit 0, before anything heavy is imported; else ``run(argv)``, where an exception of
    ``errors()`` (imported only then) is one line ``<prog>: error: …`` on stderr and exit 2."""
    import sys

    argv = list(sys.argv[1:] if argv is None else argv)
    if any(a in ("-h", "--help", "help") for a in argv):
        print(f"usage: {prog} key=value ...  (keys: {', '.join(sorted(keys))})\n")
        print(doc)
        return 0
    caught = errors()
    try:
        return run(argv)
    except caught as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2
