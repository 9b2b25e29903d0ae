"""``python robustness_killer.py SCENARIO DIR``: start a write of the project and SIGKILL this very process at
a chosen point inside it (the test then checks what a real crash at that point leaves behind).

Scenarios:

* ``checkpoint``      — :class:`AtomicCheckpointIO` writes ``DIR/last.ckpt``; killed after half of the bytes.
* ``features-npy``    — ``ua3dtalk-features DIR --extractor mel --force``; killed halfway through ``np.save``.
* ``features-record`` — :func:`extract_features` with a non-default mel extractor of the same cache name;
  killed after the array was replaced, before its record (``aud_mel.json``) was written.
* ``synth``           — :func:`generate_subject` into ``DIR``; killed after 10 frames.
* ``preprocess``      — ``ua3dtalk-preprocess DIR/clip.mp4 --out DIR/ds --steps decode``; killed at the 12th frame.
"""
from __future__ import annotations

import os
import signal
import sys
from pathlib import Path


def die() -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def _write_half(f, serialize) -> None:
    """Write the first half of what ``serialize(buffer)`` produces to the open file ``f``, durably (the
    state a writer killed mid-write leaves behind)."""
    import io

    buf = io.BytesIO()
    serialize(buf)
    data = buf.getvalue()
    f.write(data[: len(data) // 2])
    f.flush()
    os.fsync(f.fileno())


def main(scenario: str, d: Path) -> None:
    import numpy as np
    import torch

    torch.set_num_threads(1)
    if scenario == "checkpoint":
        from ua3dtalk.callbacks.checkpoint import AtomicCheckpointIO

        real_save = torch.save

        def half_save(obj, f, *a, **kw):
            _write_half(f, lambda buf: real_save(obj, buf, *a, **kw))
            die()

        torch.save = half_save
        ck = {"state_dict": {"w": torch.full((256, 256), 2.0)}, "ua3dtalk": {"version": 1}, "global_step": 2}
        AtomicCheckpointIO().save_checkpoint(ck, d / "last.ckpt")
    elif scenario == "features-npy":
        real_save = np.save

        def half(file, arr, *a, **kw):
            with open(file, "wb") as f:
                _write_half(f, lambda buf: real_save(buf, arr, *a, **kw))
            die()

        np.save = half
        from ua3dtalk.cli.features import main as cli  # ua3dtalk-features, killed inside the cache write

        cli([str(d), "--extractor", "mel", "--force", "--no-progress"])
    elif scenario == "features-record":
        import ua3dtalk.data.audio as audio
        from ua3dtalk.data.extractors import MelExtractor

        class SameName(MelExtractor):  # other parameters, same cache file name
            def __init__(self):
                super().__init__(fmin=300.0)
                self.name = "mel"

        audio.atomic_write_json = lambda *a, **kw: die()
        audio.extract_features(d, SameName(), force=True)
    elif scenario == "synth":
        import ua3dtalk.data.synth.generate as gen

        real = gen._write_bytes  # every file of a clip goes through it
        calls = [0]

        def counting(path, data):
            calls[0] += 1
            if calls[0] == 50:  # 5 files per frame: after 10 frames
                die()
            real(path, data)

        gen._write_bytes = counting
        gen.generate_subject(d, "tiny", seed=0, backend="cpu", progress=False)
    elif scenario == "preprocess":
        import ua3dtalk.preprocess.pipeline as pp
        from ua3dtalk.cli.preprocess import main as cli

        real = pp._write_jpeg
        calls = [0]

        def counting(path, img, q):
            calls[0] += 1
            if calls[0] == 12:
                die()
            real(path, img, q)

        pp._write_jpeg = counting
        cli([str(d / "clip.mp4"), "--out", str(d / "ds"), "--steps", "decode", "--size", "64", "--no-progress",
             "--threads", "1"])
    else:
        raise SystemExit(f"unknown scenario {scenario!r}")
    raise SystemExit("the write finished: the kill point was never reached")


if __name__ == "__main__":
    main(sys.argv[1], Path(sys.argv[2]))
