"""``ua3dtalk-preprocess VIDEO --out DIR`` — turn a talking-head video into a dataset (DESIGN §5.1).

Offline, with models that ship in pip wheels (``pip install 'ua3dtalk[preprocess]'``). Steps:
decode, landmarks, parsing, background, pose, blink, expr, features (see
:mod:`ua3dtalk.preprocess.pipeline`); each is skipped when its valid outputs exist, so an interrupted
run resumes. When the dataset is complete it is checked with the loaders' validator (the quick level
of ``ua3dtalk-validate``; run ``ua3dtalk-validate DIR`` to also decode every image).

Exit status: 0 done (and valid), 1 bad input or failed step (message names the file; the outputs
of completed steps are kept), 2 usage error.

Also runnable as ``python -m ua3dtalk.cli.preprocess``.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
import warnings
from pathlib import Path
from typing import Optional, Sequence

from .args import doc_parser, float_in, int_in

PROG = "ua3dtalk-preprocess"


def add_common_arguments(p: argparse.ArgumentParser, focal_default: str = "searched") -> None:
    """Options shared with ``ua3dtalk-import-mead`` (``focal_default``: what ``--focal``'s help says is
    done without it)."""
    from ua3dtalk.preprocess.landmarks import BACKENDS

    p.add_argument("--focal", type=float_in(0.0, open_lo=True), default=None,
                   help=f"focal length in output pixels (default: {focal_default})")
    p.add_argument("--size", type=int_in(32, 4096), default=512, help="output frame side in pixels (square) [512]")
    p.add_argument("--crop", default="auto",
                   help="auto (square input: whole frame; else a square around the face), face, center, none, "
                        "or X,Y,SIDE in input pixels [auto]")
    p.add_argument("--landmark-backend", "--backend", dest="backend", default="auto", choices=BACKENDS,
                   help="landmark detector [auto: fan if its weights are on disk, else dlib, else mediapipe]")
    p.add_argument("--smooth", type=float_in(0.0, 100.0), default=0.5,
                   help="landmark smoothing σ in frames, 0 = none [0.5]")
    p.add_argument("--max-gap", type=int_in(0), default=5,
                   help="longest run of frames without a face to interpolate [5]")
    p.add_argument("--min-frames", type=int_in(1), default=25, help="reject shorter videos [25 = 1 s]")
    p.add_argument("--pose-smooth", type=float_in(0.0, 100.0), default=1.5,
                   help="camera smoothing σ in frames when the cameras come from the landmarks alone [1.5]")
    p.add_argument("--track-points", type=int_in(0, 5000), default=300,
                   help="head points tracked to refine the cameras by bundle adjustment, 0 = landmarks only [300]")
    p.add_argument("--no-refine-template", action="store_true", help="keep the generic 3-D landmark template")
    p.add_argument("--parsing-model", default=None, help="BiSeNet face-parsing checkpoint (19 classes) instead of the "
                   "landmark/background parsing")
    p.add_argument("--features", default="mel", help="audio features to cache, comma-separated: mel, wav2vec2 "
                   "('' for none) [mel]")
    p.add_argument("--extractor-model", "--w2v-model", dest="w2v_model", default=None,  # = data.extractor_model
                   help="wav2vec2 checkpoint (local dir or cached hub id)")
    p.add_argument("--jpeg-quality", type=int_in(1, 100), default=95)
    p.add_argument("--threads", type=int_in(1, 256), default=2, help="worker threads [2]")
    p.add_argument("--steps", default=None, help="comma-separated subset of the steps to run (complete steps "
                   "that read what they rewrite run again too)")
    p.add_argument("--force", action="store_true",
                   help="rerun the selected steps even when their outputs are valid; into a non-empty --out that is "
                        "not this video's preprocessing: build anew and replace it only when complete")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--no-validate", action="store_true", help="do not run the dataset validator at the end")


def config_from_args(a: argparse.Namespace, **over):
    from ua3dtalk.preprocess import PreprocessConfig

    feats = tuple(x.strip() for x in (a.features or "").split(",") if x.strip())
    kw = dict(size=a.size, crop=a.crop, backend=a.backend, smooth=a.smooth, max_gap=a.max_gap,
              min_frames=a.min_frames, pose_smooth=a.pose_smooth, track_points=a.track_points,
              refine_template=not a.no_refine_template,
              parsing_model=a.parsing_model, features=feats, w2v_model=a.w2v_model, jpeg_quality=a.jpeg_quality,
              threads=a.threads, progress=not a.no_progress and sys.stderr.isatty())
    kw.update(over)
    return PreprocessConfig(**kw)


def parse_steps(text: Optional[str]):
    from ua3dtalk.preprocess import STEPS

    if text is None:
        return None
    steps = [s.strip() for s in text.split(",") if s.strip()]
    bad = [s for s in steps if s not in STEPS]
    if bad:
        raise ValueError(f"unknown step(s) {', '.join(bad)}; steps are {', '.join(STEPS)}")
    return steps


def build_parser() -> argparse.ArgumentParser:
    p = doc_parser(PROG, __doc__)
    p.add_argument("video", help="input video (mp4, mov, mkv, ...; any frame rate)")
    p.add_argument("--out", required=True, help="output dataset directory")
    p.add_argument("--audio", default=None, help="speech audio file to use instead of the video's audio track")
    p.add_argument("--landmarks", default=None, help="given landmarks (directory of <i>.lms or [N,68,2] .npy, output "
                   "pixels) instead of a detector")
    add_common_arguments(p)
    return p


def _log(msg: str) -> None:
    print(f"{PROG}: {msg}", file=sys.stderr, flush=True)


def _show_warning(message, category, filename, lineno, file=None, line=None):
    _log(f"warning: {message}")


def validate_and_report(out, log=_log) -> int:
    from ua3dtalk.data.validate import errors, format_problems, inspect_dataset, summary

    data, problems = inspect_dataset(out, level="quick")
    for line in format_problems([p for p in problems if p.severity == "error"], out):
        log(line)
    log(summary(out, data, problems))
    return 1 if errors(problems) else 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = build_parser()
    a = p.parse_args(argv)
    try:
        steps = parse_steps(a.steps)
    except ValueError as e:
        p.error(str(e))
    from ua3dtalk.preprocess import STEPS, PreprocessError, Preprocessor

    cfg = config_from_args(a, audio=a.audio, landmarks=a.landmarks, focal=a.focal)
    try:
        staging = output_plan(a, steps)
    except ValueError as e:
        _log(f"error: {e}")
        return 2
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.showwarning = _show_warning
        try:
            pre = Preprocessor(a.video, staging or a.out, cfg, log=_log)
            try:
                rep = pre.run(steps, force=a.force)
            except BaseException:
                if staging is not None:  # the existing dataset stays as it was
                    shutil.rmtree(staging, ignore_errors=True)
                    _log(f"{a.out} was left unchanged")
                raise
            if staging is not None:
                swap_in(staging, Path(a.out))
                pre = Preprocessor(a.video, a.out, cfg, log=_log)
        except PreprocessError as e:
            where = f" (step {e.step})" if e.step else ""
            _log(f"error{where}: {e}")
            probe = Preprocessor(a.video, a.out, cfg, log=_log)
            done = [s for s in STEPS if _exists(a.out) and probe.is_done(s)]
            if done:
                _log(f"kept the outputs of the completed steps: {', '.join(done)} (rerun to resume)")
            return 1
        except ValueError as e:
            _log(f"error: {e}")
            return 2
    _log(f"ran {', '.join(rep['ran']) or 'nothing'}"
         + (f"; skipped (already done) {', '.join(rep['skipped'])}" if rep["skipped"] else "")
         + f" in {time.perf_counter() - t0:.1f} s")
    if a.no_validate or not pre.is_done("pose"):
        return 0
    return validate_and_report(a.out)


def output_plan(a, steps) -> Optional[Path]:
    """Where to build (DESIGN §9.3): ``--out`` itself when it is empty, missing, or this video's own
    earlier preprocessing (resumed step by step); a staging directory next to it when ``--force`` replaces
    anything else there (swapped in only after success). Refuses (ValueError, nothing changed): a non-empty
    directory that is not this video's output without ``--force``, an ``--out`` that is a file, and an
    ``--out`` that contains one of the inputs."""
    from ua3dtalk.preprocess.config import made_from

    out = Path(a.out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out}: is a file, not a directory")
    for name, p in (("video", a.video), ("--audio", a.audio), ("--landmarks", a.landmarks)):
        if p is not None and Path(p).exists() and out.resolve() in Path(p).resolve().parents:
            raise ValueError(f"--out {out}: contains the input {name} {p}; write the dataset elsewhere")
    from ua3dtalk.preprocess.config import STATE_DIR

    if not out.is_dir() or {p.name for p in out.iterdir()} <= {STATE_DIR}:
        return None  # empty, or only the records of an attempt that stopped before decoding
    if Path(a.video).is_file() and made_from(out, a.video):
        return None  # this video's own output: resumed step by step (--force reruns the selected steps in place)
    if not a.force:
        raise ValueError(f"--out {out}: already holds files that are not the preprocessing of {a.video}; "
                         "--force replaces them once the new dataset is complete (nothing was changed)")
    if steps is not None:
        raise ValueError("--force into a non-empty --out builds the whole dataset anew: drop --steps")
    staging = out.with_name(f".{out.name}.staging-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    _log(f"--force: building into {staging}; {out} is replaced only when it is complete")
    return staging


def swap_in(staging, out) -> None:
    """Replace ``out`` by the complete ``staging`` directory (old one moved aside first, then deleted)."""
    old = out.with_name(f".{out.name}.old-{os.getpid()}")
    out.rename(old)
    staging.rename(out)
    shutil.rmtree(old, ignore_errors=True)


def _exists(path) -> bool:
    from pathlib import Path

    return Path(path).is_dir()


if __name__ == "__main__":
    sys.exit(main())
