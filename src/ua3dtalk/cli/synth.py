"""``ua3dtalk-synth``: write a synthetic talking-head dataset with known ground truth (DESIGN §6).

    ua3dtalk-synth --out data/synth --preset tiny|small|bench [--emotional] [--clips-per-level N]
                   [--seed S] [--resolution R] [--features mel] [--renderer auto|cpu|torch] [--workers W]
"""
from __future__ import annotations

import sys
import time
from .args import Parser, int_in


def main(argv=None) -> int:
    ap = Parser(prog="ua3dtalk-synth", description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="output root; the subject directory synth<seed> is created in it")
    # the presets are checked after parsing: reading them imports the renderer (torch), which --help must not
    ap.add_argument("--preset", default="tiny", metavar="PRESET",
                    help="a preset of ua3dtalk.data.synth.generate.PRESETS (default tiny)")
    ap.add_argument("--emotional", action="store_true", help="8 emotions × 3 intensities (DESIGN §5.2 layout)")
    ap.add_argument("--clips-per-level", type=int_in(1, 100), default=None,
                    help="with --emotional: clips (different utterances) per emotion and intensity "
                         "(default: the preset's clips_per_level)")
    ap.add_argument("--workers", type=int_in(1, 256), default=None,
                    help="with --emotional: rendering processes (default: 2 for large sets on ≥ 2 CPUs, else 1)")
    ap.add_argument("--seed", type=int_in(0), default=0, help="identity and speech seed (deterministic)")
    ap.add_argument("--resolution", type=int_in(16, 2048), default=None, help="override the preset's image size")
    ap.add_argument("--features", default="mel",
                    help="audio feature extractors to cache, comma-separated ('' for none)")
    ap.add_argument("--renderer", "--backend", dest="backend", default="auto",  # = renderer= of ua3dtalk-train
                    help="rasterizer backend: auto, cpu, torch, dense, gsplat, inria")
    a = ap.parse_args(argv)
    from ..data.synth.generate import PRESETS

    if a.preset not in PRESETS:  # argparse's own message for a bad choice
        ap.error(f"argument --preset: invalid choice: {a.preset!r} (choose from "
                 + ", ".join(repr(p) for p in sorted(PRESETS)) + ")")
    from ..data.extractors import MissingModelError
    from ..data.formats import DatasetError
    from ..data.synth.generate import generate_emotional, generate_subject

    extractors = [x.strip() for x in a.features.split(",") if x.strip()]
    bad = [x for x in extractors if x not in ("mel", "wav2vec2", "w2v")]
    if bad:  # found before minutes of rendering, not after
        print(f"ua3dtalk-synth: error: --features: unknown extractor(s) {', '.join(bad)}; choose mel or wav2vec2",
              file=sys.stderr)
        return 2
    from ..utils.io import OutputError, check_output_dir

    try:  # writable, room, not under a file — before minutes of rendering
        check_output_dir(a.out, "--out", what="dataset root")
    except OutputError as e:
        print(f"ua3dtalk-synth: error: {e}", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    try:
        if a.emotional:
            subject = generate_emotional(a.out, a.preset, a.seed, a.resolution, backend=a.backend,
                                         clips_per_level=a.clips_per_level, workers=a.workers)
        else:
            subject = generate_subject(a.out, a.preset, a.seed, a.resolution, backend=a.backend)
    except ValueError as e:
        print(f"ua3dtalk-synth: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"ua3dtalk-synth: error: cannot write the dataset under --out {a.out}: {e}", file=sys.stderr)
        return 1
    if extractors:
        from ..data.synth.generate import cache_features

        try:
            cache_features(subject, extractors)
        except (DatasetError, MissingModelError, OSError) as e:
            print(f"ua3dtalk-synth: error: caching features in {subject}: {e}", file=sys.stderr)
            return 1
    print(f"wrote {subject} in {time.perf_counter() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
