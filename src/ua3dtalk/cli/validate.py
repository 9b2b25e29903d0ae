"""``ua3dtalk-validate DIR`` — check a dataset and print every problem with its file.

DIR is a regular dataset directory (DESIGN §5.1: transforms json, ori_imgs/, parsing/, aud.wav, …)
or an emotional root (§5.2: ``<subject>/<emotion>/level_<k>/<clip>/`` with ``emotion.json``, or an
index file ``clips.json``/``clips.txt``). Exit status 0 only when the dataset is valid (warnings
allowed unless ``--strict``), 1 when it is not, 2 for usage errors. Nothing is written.

Also runnable as ``python -m ua3dtalk.cli.validate DIR``.
"""
from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence
from .args import doc_parser


def build_parser() -> argparse.ArgumentParser:
    p = doc_parser("ua3dtalk-validate", __doc__)
    p.add_argument("dir", help="dataset directory (regular subject/clip dir, or an emotional root)")
    p.add_argument("--quick", action="store_true",
                   help="skip decoding pixels (no parsing-colour / corrupt-image-body checks); what the loaders run")
    p.add_argument("--index", default=None, help="index file listing the clips of an emotional dataset")
    p.add_argument("--strict", action="store_true", help="treat warnings as errors (exit 1)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    from ua3dtalk.data.validate import run

    bar = None
    progress = None
    if not args.no_progress and sys.stderr.isatty():
        from tqdm import tqdm

        state = {"clip": None}

        def progress(clip, done, total):  # noqa: F811
            nonlocal bar
            if state["clip"] != clip:
                if bar is not None:
                    bar.close()
                bar = tqdm(total=total, desc=f"checking {clip}", unit="frame", leave=False, file=sys.stderr)
                state["clip"] = clip
            bar.n = done
            bar.refresh()
    try:
        return run(args.dir, level="quick" if args.quick else "full", index=args.index, strict=args.strict,
                   progress=progress)
    finally:
        if bar is not None:
            bar.close()


if __name__ == "__main__":
    sys.exit(main())
