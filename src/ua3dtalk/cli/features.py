"""``ua3dtalk-features DIR --extractor wav2vec2|mel`` — extract and cache audio features.

Works on a regular dataset directory or on every clip of an emotional root. Each clip's
``aud.wav`` is read (any rate/channels → 16 kHz mono), the extractor runs at 50 Hz, and the result
is cached atomically as ``aud_<name>.npy`` (+ ``.json`` record) in the clip directory — e.g.
``aud_w2v_wav2vec2-base-960h_logits.npy`` or ``aud_mel.npy``. An up-to-date cache is kept unless
``--force``. wav2vec2 weights are never downloaded: ``--extractor-model`` is a local ``save_pretrained``
directory or a hub id already in the Hugging Face cache (HF_HOME).

Also runnable as ``python -m ua3dtalk.cli.features DIR ...``.
"""
from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence
from .args import doc_parser, float_in


def build_parser() -> argparse.ArgumentParser:
    p = doc_parser("ua3dtalk-features", __doc__)
    p.add_argument("dir", help="regular dataset directory or emotional root")
    p.add_argument("--extractor", required=True, choices=("wav2vec2", "mel"))
    p.add_argument("--extractor-model", "--model", dest="model", default=None,  # = data.extractor_model
                   help="wav2vec2 model: local directory or cached hub id (default facebook/wav2vec2-base-960h)")
    p.add_argument("--extractor-layer", "--layer", dest="layer", default=None,  # = data.extractor_layer
                   help="'logits' (default) or a hidden-state index (e.g. 9, -1)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    p.add_argument("--chunk-seconds", type=float_in(0.0, 3600.0, open_lo=True), default=20.0,
                   help="wav2vec2 chunk length (bounds memory)")
    p.add_argument("--index", default=None, help="index file listing the clips of an emotional dataset")
    p.add_argument("--force", action="store_true", help="recompute even when the cache is up to date")
    p.add_argument("--allow-download", action="store_true",
                   help="allow transformers to download the model (ignored when HF_HUB_OFFLINE=1)")
    p.add_argument("--no-progress", action="store_true")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    if args.extractor == "mel" and (args.model or args.layer):
        print("ua3dtalk-features: --extractor-model/--extractor-layer (--model/--layer) only apply to "
              "--extractor wav2vec2", file=sys.stderr)
        return 2

    import soundfile as sf
    from tqdm import tqdm

    from ua3dtalk.data.audio import extract_features
    from ua3dtalk.data.extractors import MissingModelError, make_extractor
    from ua3dtalk.data.formats import DatasetError, Problem
    from ua3dtalk.data.loading import list_clip_dirs

    try:
        clips = list_clip_dirs(args.dir, index=args.index)
    except DatasetError as e:
        print(f"ua3dtalk-features: {e}", file=sys.stderr)
        return 1
    durations = {}
    missing = []
    for c in clips:
        try:
            durations[c] = sf.info(str(c / "aud.wav")).duration
        except Exception:  # missing/unreadable: reported below with the file name
            missing.append(c)
    try:
        kw = {}
        if args.extractor == "wav2vec2":
            kw = dict(device=args.device, dtype=args.dtype, chunk_seconds=args.chunk_seconds,
                      allow_download=args.allow_download)
        extractor = make_extractor(args.extractor, args.model, args.layer, **kw)
    except (MissingModelError, ValueError) as e:
        print(f"ua3dtalk-features: {e}", file=sys.stderr)
        return 1

    status = 0
    bar = tqdm(total=round(sum(durations.values()), 2), unit="s audio", desc=extractor.name,
               disable=args.no_progress or None, file=sys.stderr)
    try:
        for c in clips:
            done = [0.0]

            def progress(n_samples: int) -> None:
                done[0] += n_samples / 16000
                bar.update(n_samples / 16000)

            try:
                if c in missing:
                    raise DatasetError([Problem(c / "aud.wav", "missing or unreadable audio file")], c)
                out = extract_features(c, extractor, force=args.force, progress=progress)
                computed = done[0] > 0
                bar.update(max(0.0, durations[c] - done[0]))  # a reused cache advances the bar at once
                bar.write(f"{c}: {out.name} ({'computed' if computed else 'cache up to date'})")
            except DatasetError as e:
                print(f"ua3dtalk-features: {e}", file=sys.stderr)
                status = 1
    finally:
        bar.close()
    return status


if __name__ == "__main__":
    sys.exit(main())
