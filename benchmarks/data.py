"""Data loading: frames per second delivered, and peak memory on a long high-resolution video.

Two measurements of :class:`ua3dtalk.data.datamodule.TalkingHeadDataModule` (issue 3, DESIGN §5.4):

1. **Throughput** — FrameBatch frames per second delivered by the train loader (shuffled, batch
   size 1 as in training, ``--workers`` workers, default 2) at 256², in steady state (after the
   first batch, i.e. without worker start-up), plus the AudioBatch loader of the prior stage and,
   for reference, the same loader without workers. The main process runs torch on one thread, as
   DataLoader workers do (on a small shared machine, multi-threaded torch ops on small tensors in
   the main process are slowed down badly by other processes' load).
2. **Memory** — peak resident memory while iterating one full training epoch of a 5-minute
   (7500-frame) 512² dataset with the same loader. Target: ≤ 2048 MB (TalkingGaussian preloads
   ~32 GB per 5k frames). Reported as the peak of the *sum over the main process and its workers*
   of RSS (conservative: pages shared between the forked processes are counted once per process)
   and of PSS (shared pages divided among the processes that map them; from
   ``/proc/<pid>/smaps_rollup``), sampled every 0.1 s.

**How the long dataset is built.** Rendering 7500 synthetic frames at 512² takes far too long for
routine use, so the script renders a short clip with ``ua3dtalk-synth`` (the ``tiny`` preset at the
requested resolution: 75 frames) and writes a dataset directory whose ``transforms_*.json`` list
``--long-frames`` frames (ER-NeRF split: first 10/11 train) that reuse those frames' files through
hard links (copies when the file system refuses links) — frame ``i`` is source frame ``i mod 75``
(images, parsing, torso layer, landmarks, camera), ``au.csv`` / ``expr.npy`` are tiled, and
``aud.wav`` is the source audio tiled to the full length (5 minutes at 7500 frames); log-mel
features are extracted by ``prepare_data``. Decoding cost and memory are those of a real 512²
video of that length; what is *not* measured is disk I/O, because the 75 distinct files stay in
the page cache (the page cache is not part of RSS/PSS).

    python benchmarks/data.py [--long-frames 7500] [--long-resolution 512] [--fps-resolution 256]
                              [--fps-frames 2000] [--measure-frames 1000] [--workers 2]
                              [--cache-size 256] [--out DIR] [--keep]

Quick check: ``python benchmarks/data.py --long-frames 750 --fps-frames 500 --measure-frames 300``.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

TARGET_MB = 2048.0


# --------------------------------------------------------------------------------------------------
# datasets
# --------------------------------------------------------------------------------------------------


def render_source(out: Path, resolution: int) -> Path:
    """A short synthetic clip (``tiny`` preset: 75 frames) at ``resolution``; reused when present."""
    from ua3dtalk.data.synth import generate_subject

    subject = out / "synth0"
    if (subject / "synth.json").is_file():
        return subject
    t0 = time.perf_counter()
    subject = generate_subject(out, "tiny", seed=0, resolution=resolution, backend="cpu", progress=False)
    print(f"  rendered a 75-frame {resolution}² source clip in {time.perf_counter() - t0:.1f} s")
    return subject


def _link(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


def make_long(src: Path, dst: Path, n_frames: int) -> Path:
    """Write a regular dataset of ``n_frames`` frames reusing the source clip's files (module docstring)."""
    if (dst / "transforms_val.json").is_file():
        return dst
    tmp = dst.with_name(dst.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    frames_src = sorted(json.loads((src / "transforms_train.json").read_text())["frames"]
                        + json.loads((src / "transforms_val.json").read_text())["frames"], key=lambda f: f["img_id"])
    L = len(frames_src)
    kinds = (("ori_imgs", ".jpg"), ("ori_imgs", ".lms"), ("gt_imgs", ".jpg"), ("parsing", ".png"),
             ("torso_imgs", ".png"))
    for d, _ in kinds:
        (tmp / d).mkdir(parents=True, exist_ok=True)
    frames = []
    for i in range(n_frames):
        j = i % L
        for d, suf in kinds:
            _link(src / d / f"{j}{suf}", tmp / d / f"{i}{suf}")
        frames.append({"img_id": i, "aud_id": i, "transform_matrix": frames_src[j]["transform_matrix"]})
    meta = json.loads((src / "transforms_train.json").read_text())
    cam = {k: meta[k] for k in ("focal_len", "cx", "cy")}
    n_train = n_frames * 10 // 11
    (tmp / "transforms_train.json").write_text(json.dumps({**cam, "frames": frames[:n_train]}))
    (tmp / "transforms_val.json").write_text(json.dumps({**cam, "frames": frames[n_train:]}))
    _link(src / "bc.jpg", tmp / "bc.jpg")
    reps = -(-n_frames // L)
    np.save(tmp / "expr.npy", np.tile(np.load(src / "expr.npy"), (reps, 1))[:n_frames])
    lines = (src / "au.csv").read_text().splitlines()
    body = lines[1:]
    rows = [lines[0]] + [f"{i + 1}," + body[i % L].split(",", 1)[1] for i in range(n_frames)]
    (tmp / "au.csv").write_text("\n".join(rows) + "\n")
    wav, sr = sf.read(str(src / "aud.wav"), dtype="int16")
    n_samples = n_frames * sr // 25
    sf.write(str(tmp / "aud.wav"), np.tile(wav, -(-n_samples // len(wav)))[:n_samples], sr, subtype="PCM_16")
    os.replace(tmp, dst)
    return dst


# --------------------------------------------------------------------------------------------------
# memory sampling
# --------------------------------------------------------------------------------------------------


def _children(pid: int) -> list[int]:
    out = []
    for p in os.listdir("/proc"):
        if p.isdigit():
            try:
                with open(f"/proc/{p}/stat") as f:
                    st = f.read()
                if int(st[st.rindex(")") + 2:].split()[1]) == pid:
                    out.append(int(p))
            except (OSError, ValueError, IndexError):
                pass
    return out


def _mem_kb(pid: int) -> tuple[int, int]:
    """(RSS, PSS) of a process in kB (PSS = RSS when smaps_rollup is unavailable)."""
    rss = pss = 0
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Rss:"):
                    rss = int(line.split()[1])
                elif line.startswith("Pss:"):
                    pss = int(line.split()[1])
        return rss, pss
    except OSError:
        pass
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    rss = int(line.split()[1])
    except OSError:
        pass
    return rss, rss


class MemorySampler:
    """Background thread: peak of Σ RSS and Σ PSS over this process and its children."""

    def __init__(self, interval: float = 0.1):
        self.interval = interval
        self.peak_rss = self.peak_pss = 0
        self.max_procs = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def sample(self) -> tuple[int, int]:
        pids = [os.getpid()] + _children(os.getpid())
        vals = [_mem_kb(p) for p in pids]
        rss, pss = sum(v[0] for v in vals), sum(v[1] for v in vals)
        self.peak_rss, self.peak_pss = max(self.peak_rss, rss), max(self.peak_pss, pss)
        self.max_procs = max(self.max_procs, len(pids))
        return rss, pss

    def _run(self):
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.sample()
        return False


# --------------------------------------------------------------------------------------------------
# measurements
# --------------------------------------------------------------------------------------------------


def datamodule(root: Path, workers: int, cache_size: int, stage: str = "face"):
    from ua3dtalk.data.datamodule import TalkingHeadDataModule

    dm = TalkingHeadDataModule(str(root), num_workers=workers, cache_size=cache_size, batch_size=1,
                               audio_batch_size=128, stage=stage)
    dm.prepare_data()
    dm.setup("fit")
    return dm


def throughput(dm, max_frames: int) -> tuple[float, float, int]:
    """(frames/s in steady state, seconds to the first batch, frames) of ``dm.train_dataloader()``."""
    t0 = time.perf_counter()
    it = iter(dm.train_dataloader())
    first = next(it)
    t1 = time.perf_counter()
    n = 0
    for b in it:
        n += len(b)
        if n >= max_frames:
            break
    dt = time.perf_counter() - t1
    del it, first
    return n / dt, t1 - t0, n


def memory_run(root: Path, workers: int, cache_size: int) -> dict:
    """Iterate one training epoch of ``root`` in a fresh Python process (so that the memory of this
    process's renders and other loaders does not count) and return its measurements."""
    import subprocess
    import sys

    cmd = [sys.executable, __file__, "--memory-run", str(root), "--workers", str(workers), "--cache-size",
           str(cache_size)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def _memory_child(root: Path, workers: int, cache_size: int) -> None:
    t0 = time.perf_counter()
    dm = datamodule(root, workers, cache_size)
    setup_s = time.perf_counter() - t0
    base_rss, base_pss = MemorySampler().sample()
    with MemorySampler() as mem:
        t0 = time.perf_counter()
        n = sum(len(b) for b in dm.train_dataloader())
        dt = time.perf_counter() - t0
    print(json.dumps({"frames": n, "fps": n / dt, "setup_s": setup_s, "base_rss_mb": base_rss / 1024,
                      "base_pss_mb": base_pss / 1024, "peak_rss_mb": mem.peak_rss / 1024,
                      "peak_pss_mb": mem.peak_pss / 1024, "processes": mem.max_procs}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--long-frames", type=int, default=7500, help="frames of the long dataset (7500 = 5 min)")
    ap.add_argument("--long-resolution", type=int, default=512)
    ap.add_argument("--fps-resolution", type=int, default=256)
    ap.add_argument("--fps-frames", type=int, default=2000, help="frames of the throughput dataset")
    ap.add_argument("--measure-frames", type=int, default=1000, help="frames timed for the throughput")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--cache-size", type=int, default=256)
    ap.add_argument("--out", default=None, help="work directory (default: a temporary directory)")
    ap.add_argument("--keep", action="store_true", help="keep the generated datasets")
    ap.add_argument("--memory-run", default=None, help=argparse.SUPPRESS)  # internal: the fresh-process part
    args = ap.parse_args()
    torch.set_num_threads(1)
    if args.memory_run:
        _memory_child(Path(args.memory_run), args.workers, args.cache_size)
        return

    work = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="ua3dtalk-bench-data-"))
    work.mkdir(parents=True, exist_ok=True)
    rows = []
    try:
        print(f"data loading benchmark — torch {torch.__version__}, {os.cpu_count()} CPUs, "
              f"load average {os.getloadavg()[0]:.2f}, work dir {work}")
        # 1. throughput at 256²
        src = render_source(work / f"src{args.fps_resolution}", args.fps_resolution)
        fps_root = make_long(src, work / f"long{args.fps_resolution}_{args.fps_frames}", args.fps_frames)
        dm = datamodule(fps_root, args.workers, args.cache_size)
        for workers in sorted({0, args.workers}):
            dm.num_workers = workers
            fps, startup, n = throughput(dm, args.measure_frames)
            rows.append((f"FrameBatch {args.fps_resolution}², bs 1, {workers} workers", fps, startup, n, None, None))
        dm.stage = "prior"
        dm.num_workers = args.workers
        fps, startup, n = throughput(dm, max(args.measure_frames, 1024))
        rows.append((f"AudioBatch (prior stage), bs 128, {args.workers} workers", fps, startup, n, None, None))

        # 2. memory while iterating the long dataset
        src = render_source(work / f"src{args.long_resolution}", args.long_resolution)
        long_root = make_long(src, work / f"long{args.long_resolution}_{args.long_frames}", args.long_frames)
        mem = memory_run(long_root, args.workers, args.cache_size)
        print(f"  long dataset: {args.long_frames} frames ({args.long_frames / 25 / 60:.1f} min) at "
              f"{args.long_resolution}², prepare_data + setup {mem['setup_s']:.1f} s (fresh process)")
        rows.append((f"FrameBatch {args.long_resolution}², full epoch, {args.workers} workers", mem["fps"], None,
                     mem["frames"], mem["peak_rss_mb"], mem["peak_pss_mb"]))
    finally:
        if not args.keep and args.out is None:
            shutil.rmtree(work, ignore_errors=True)

    print()
    print(f"| {'loader':<44} | {'frames/s':>9} | {'start-up (s)':>12} | {'frames':>7} | "
          f"{'peak Σ RSS (MB)':>15} | {'peak Σ PSS (MB)':>15} |")
    print(f"|{'-' * 46}|{'-' * 11}|{'-' * 14}|{'-' * 9}|{'-' * 17}|{'-' * 17}|")
    for name, fps, startup, n, rss, pss in rows:
        s = f"{startup:.2f}" if startup is not None else "-"
        r = f"{rss:.0f}" if rss is not None else "-"
        p = f"{pss:.0f}" if pss is not None else "-"
        print(f"| {name:<44} | {fps:>9.1f} | {s:>12} | {n:>7} | {r:>15} | {p:>15} |")
    print()
    peak = mem["peak_pss_mb"]
    print(f"memory of the long run (fresh process): before iterating Σ RSS {mem['base_rss_mb']:.0f} MB (torch, "
          f"lightning, metadata); peak over {mem['processes']} processes Σ PSS {peak:.0f} MB, Σ RSS "
          f"{mem['peak_rss_mb']:.0f} MB (counts pages shared by the forked workers once per process)")
    print(f"target: peak memory ≤ {TARGET_MB:.0f} MB — {'met' if peak <= TARGET_MB else 'NOT met'} "
          f"(by Σ PSS; cache_size={args.cache_size} decoded frames per worker)")

if __name__ == "__main__":
    main()
