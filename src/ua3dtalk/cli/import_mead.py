"""``ua3dtalk-import-mead ROOT --subject M003 --out DIR`` — a MEAD subject → the emotional layout.

Reads ``ROOT/<subject>/video/front/<emotion>/level_<k>/<NNN>.mp4`` (and ``audio/.../<NNN>.m4a``),
preprocesses every clip with one shared crop, focal length and 3-D template (see
:mod:`ua3dtalk.preprocess.mead`) and writes ``DIR/<subject>/<emotion>/level_<k>/<NNN>/`` with
``emotion.json`` (DESIGN §5.2). Resumable. The result is checked with the loaders' validator.

Exit status: 0 done and valid, 1 bad input / failed clip, 2 usage error.
"""
from __future__ import annotations

import argparse
import sys
import time
import warnings
from typing import Optional, Sequence

from .preprocess import _show_warning, add_common_arguments, config_from_args, validate_and_report
from .args import doc_parser, int_in

PROG = "ua3dtalk-import-mead"


def _log(msg: str) -> None:
    print(f"{PROG}: {msg}", file=sys.stderr, flush=True)


def build_parser() -> argparse.ArgumentParser:
    p = doc_parser(PROG, __doc__)
    p.add_argument("root", help="MEAD root (holding <subject>/video/front/...) or the subject directory")
    p.add_argument("--subject", required=True, help="subject id, e.g. M003")
    p.add_argument("--out", required=True, help="output root; clips go to OUT/<subject>/<emotion>/level_<k>/<NNN>/")
    p.add_argument("--emotions", default=None, help="comma-separated subset of the emotions")
    p.add_argument("--levels", default=None, help="comma-separated subset of the intensity levels (1,2,3)")
    p.add_argument("--max-clips", type=int_in(1), default=None, help="import at most this many clips (in sorted order)")
    p.add_argument("--skip-bad", action="store_true", help="leave out clips that fail instead of stopping")
    add_common_arguments(p, focal_default="searched over all clips of the subject")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = build_parser()
    a = p.parse_args(argv)
    if a.steps is not None:
        p.error("--steps is not supported by the importer (it runs every step; it resumes when rerun)")
    from ua3dtalk.constants import EMOTIONS
    from ua3dtalk.preprocess import PreprocessError
    from ua3dtalk.preprocess.mead import import_mead

    emotions = None if a.emotions is None else [e.strip().lower() for e in a.emotions.split(",") if e.strip()]
    if emotions is not None and any(e not in EMOTIONS for e in emotions):
        p.error(f"--emotions must be among {', '.join(EMOTIONS)}")
    try:
        levels = None if a.levels is None else [int(x) for x in a.levels.split(",") if x.strip()]
    except ValueError:
        p.error("--levels must be comma-separated integers 1, 2, 3")
    from ua3dtalk.utils.io import OutputError, check_output_dir

    try:  # not the MEAD tree, not inside it; writable with room — before any decoding
        check_output_dir(a.out, "--out", {"root": a.root}, min_free_bytes=256 << 20, what="dataset")
    except OutputError as e:
        _log(f"error: {e}")
        return 2
    cfg = config_from_args(a, focal=a.focal)
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.showwarning = _show_warning
        try:
            rep = import_mead(a.root, a.subject, a.out, cfg, emotions=emotions, levels=levels, max_clips=a.max_clips,
                              skip_bad=a.skip_bad, force=a.force, log=_log)
        except PreprocessError as e:
            _log(f"error: {e}")
            return 1
    _log(f"imported {len(rep['clips'])} clip(s) of {a.subject}"
         + (f", {len(rep['failed'])} left out" if rep["failed"] else "") + f" in {time.perf_counter() - t0:.1f} s")
    if a.no_validate:
        return 0
    return validate_and_report(rep["out"], log=_log)


if __name__ == "__main__":
    sys.exit(main())
