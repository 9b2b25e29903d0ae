"""Preprocessing speed: frames per second of the whole pipeline at 512² on 2 threads (issue 7).

A real face (scikit-image's astronaut photo, :mod:`ua3dtalk.preprocess.animate`) is animated into a
``--frames``-frame 512² talking video with audio (not timed); then ``ua3dtalk-preprocess`` runs every
step except the audio features (decode, landmarks with the dlib backend, parsing, background, pose,
blink, expression) with ``--threads`` worker threads, and the time of each step is reported. Target:
≥ 10 frames/s for the whole pipeline (a 5-minute video in well under an hour).

    python benchmarks/preprocess.py [--frames 250] [--size 512] [--threads 2] [--features] [--keep DIR]

``--features`` also times log-mel feature extraction. Besides wall-clock frames/s (which depend on
the machine's other load, reported as the load average), the CPU time of every step (this process
and its worker processes, ffmpeg included) is measured, and ``threads × frames / CPU seconds`` is
reported as the CPU-bound rate on that many free cores.
"""
from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

TARGET_FPS = 10.0


def _cpu() -> float:
    import resource

    a, b = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return a.ru_utime + a.ru_stime + b.ru_utime + b.ru_stime


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=250)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--features", action="store_true", help="also extract log-mel features")
    ap.add_argument("--keep", default=None, help="write the video and dataset here and keep them")
    a = ap.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", str(a.threads))
    import torch

    torch.set_num_threads(a.threads)
    from ua3dtalk.preprocess import STEPS, PreprocessConfig, Preprocessor
    from ua3dtalk.preprocess.animate import write_animated_video

    work = Path(a.keep) if a.keep else Path(tempfile.mkdtemp(prefix="ua3dtalk-bench-pre-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        video = work / "astronaut.mp4"
        t0 = time.perf_counter()
        write_animated_video(video, a.frames, a.size)
        print(f"test video: {a.frames} frames of {a.size}² written in {time.perf_counter() - t0:.1f} s (not timed)")
        out = work / "dataset"
        shutil.rmtree(out, ignore_errors=True)
        steps = [s for s in STEPS if s != "features" or a.features]
        cfg = PreprocessConfig(size=a.size, backend="dlib", threads=a.threads, progress=False,
                               features=("mel",) if a.features else ())
        pre = Preprocessor(video, out, cfg, log=lambda m: None)
        load0 = os.getloadavg()[0]
        rows, total_wall, total_cpu = [], 0.0, 0.0
        for s in steps:  # one step at a time to measure its CPU time (this process + finished children)
            c0, t0 = _cpu(), time.perf_counter()
            pre.run([s])
            wall, cpu = time.perf_counter() - t0, _cpu() - c0
            rows.append((s, wall, cpu))
            total_wall += wall
            total_cpu += cpu
        load1 = os.getloadavg()[0]
        n = pre.n_frames()
        print("\n| step | wall s | frames/s (wall) | CPU ms/frame |\n|---|---|---|---|")
        for s, wall, cpu in rows:
            print(f"| {s} | {wall:.2f} | {n / max(wall, 1e-9):.1f} | {1000 * cpu / n:.1f} |")
        fps = n / total_wall
        cpu_fps = a.threads * n / total_cpu
        what = "with" if a.features else "without"
        print(f"| **whole pipeline** ({what} features) | {total_wall:.2f} | **{fps:.1f}** | "
              f"{1000 * total_cpu / n:.1f} |")
        print(f"\n{n} frames at {a.size}², {a.threads} threads: {fps:.1f} frames/s measured (machine load average "
              f"{load0:.1f} → {load1:.1f} on {os.cpu_count()} cores); CPU-bound on {a.threads} free cores: "
              f"{cpu_fps:.1f} frames/s (CPU time / {a.threads}).")
        print(f"target ≥ {TARGET_FPS:g} frames/s: {'met' if fps >= TARGET_FPS else 'NOT met'} as measured, "
              f"{'met' if cpu_fps >= TARGET_FPS else 'NOT met'} CPU-bound; a 5-minute video (7500 frames) takes "
              f"≈ {7500 / fps / 60:.1f} min as measured, ≈ {7500 / cpu_fps / 60:.1f} min CPU-bound")
    finally:
        if not a.keep:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
