"""Audio-feature throughput: seconds of audio per second of compute (× real time) on 2 CPU threads.

Measures :class:`ua3dtalk.data.audio.Wav2Vec2Extractor` (the real chunked code path) on the
full-size wav2vec2-base architecture — ``Wav2Vec2Config()`` defaults (12 layers, hidden 768, CTC
head), random weights, so nothing is downloaded; weights do not change the cost — plus the log-mel
extractor for reference. Target (issue 3): wav2vec2 fp32 ≥ 8× real time.

    python benchmarks/audio.py [--lengths 5 20 60] [--repeats 2] [--threads 2] [--no-bf16]

Each figure is the best of ``--repeats`` runs after one warm-up. On a shared machine wall time is
inflated by other processes, so the table also gives process CPU time divided by the thread count —
what the run costs when its cores are free — next to the load average (the mel extractor is
single-threaded numpy: its CPU column is plain CPU time).
"""
from __future__ import annotations

import argparse
import os
import time

import numpy as np
import torch


def speech_like(seconds: float, seed: int = 0) -> np.ndarray:
    sr = 16000
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sr)) / sr
    env = 0.5 + 0.5 * np.sin(2 * np.pi * 4 * t) ** 2
    x = env * (0.3 * np.sin(2 * np.pi * 140 * t) + 0.1 * np.sin(2 * np.pi * 700 * t)) + 0.02 * rng.normal(size=t.size)
    return x.astype(np.float32)


def best_time(fn, x, repeats: int) -> tuple[float, float]:
    """(best wall seconds, best process-CPU seconds) over ``repeats`` runs after a warm-up."""
    fn(x[: 16000])
    wall, cpu = [], []
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        fn(x)
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return min(wall), min(cpu)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--lengths", type=float, nargs="+", default=[5.0, 20.0, 60.0], help="audio lengths in seconds")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-bf16", action="store_true", help="skip the bfloat16-autocast rows")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    from transformers import Wav2Vec2Config, Wav2Vec2ForCTC
    from transformers.utils import logging as hf_logging

    from ua3dtalk.data.extractors import MelExtractor, Wav2Vec2Extractor

    hf_logging.set_verbosity_error()
    torch.manual_seed(0)
    model = Wav2Vec2ForCTC(Wav2Vec2Config()).eval()
    n_params = sum(p.numel() for p in model.parameters()) / 1e6
    rows = []
    variants = [("wav2vec2-base fp32 logits", Wav2Vec2Extractor(model, model_name="wav2vec2-base-random"))]
    if not args.no_bf16:
        variants.append(("wav2vec2-base bf16 logits",
                         Wav2Vec2Extractor(model, model_name="wav2vec2-base-random", dtype="bfloat16")))
    variants.append(("log-mel 80", MelExtractor()))
    for name, ex in variants:
        for secs in args.lengths:
            x = speech_like(secs)
            dt, cpu = best_time(ex, x, args.repeats)
            threaded = not name.startswith("log-mel")  # numpy mel runs on one thread
            eff = cpu / args.threads if threaded else cpu
            rows.append((name, secs, dt, secs / dt, eff, secs / eff))

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"audio feature throughput — torch {torch.__version__}, {args.threads} threads, "
          f"wav2vec2-base {n_params:.1f}M params (random init), chunks of 20 s + 1 s context, "
          f"load average {load:.1f}")
    print()
    print(f"| {'extractor':<27} | {'audio (s)':>9} | {'wall (s)':>9} | {'× real time':>11} "
          f"| {'CPU/threads (s)':>15} | {'× real time (CPU)':>17} |")
    print(f"|{'-' * 29}|{'-' * 11}|{'-' * 11}|{'-' * 13}|{'-' * 17}|{'-' * 19}|")
    for name, secs, dt, rt, cpu, rt_cpu in rows:
        print(f"| {name:<27} | {secs:>9.1f} | {dt:>9.3f} | {rt:>10.1f}× | {cpu:>15.3f} | {rt_cpu:>16.1f}× |")
    fp32 = [r for r in rows if "fp32" in r[0]]
    wall_min, cpu_min = min(r[3] for r in fp32), min(r[5] for r in fp32)
    print()
    verdict = "OK" if wall_min >= 8 else (
        "OK by CPU time, wall-clock slowed by load" if cpu_min >= 8 else "BELOW TARGET")
    print(f"wav2vec2 fp32: min {wall_min:.1f}× real time wall-clock, {cpu_min:.1f}× by CPU time "
          f"(target ≥ 8×): {verdict}")


if __name__ == "__main__":
    main()
