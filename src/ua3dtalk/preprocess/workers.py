"""Per-frame work of the preprocessing steps: file writing, progress bars, threads and worker processes.

:func:`run_chunks` runs a step's per-frame function over contiguous chunks of frames in forked worker
processes (real parallelism on every core) with a shared frame counter for the progress bar
(:func:`_tick`); the chunk functions of the landmarks, parsing and background steps live here too.
Frames are uint8 [H,W,3] RGB, read from ``<out>/ori_imgs/<i>.jpg``. Also: :func:`write_bytes` (atomic,
no per-file fsync), the step-end :func:`_flush`, frame-file checks and a thread pool / prefetcher.
"""
from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Optional

import numpy as np

from ..utils.io import atomic_path
from . import video as V

__all__ = ["write_bytes", "run_chunks"]


def write_bytes(path: Path, data: bytes) -> None:
    """Atomic write without a per-file fsync (a step flushes everything once before its record)."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)


def _flush() -> None:
    with contextlib.suppress(Exception):
        os.sync()


class _Bar:
    def __init__(self, enabled: bool, total: int, desc: str):
        self.bar = None
        if enabled:
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc=desc, unit="frame", leave=False, dynamic_ncols=True)

    def __call__(self, k: int = 1) -> None:
        if self.bar is not None:
            self.bar.update(k)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _frame_files_ok(d: Path, suffix: str, n: int) -> bool:
    try:
        names = set(os.listdir(d))
    except OSError:
        return False
    return all(f"{i}{suffix}" in names for i in range(n))


def _stale_frames(d: Path, suffix: str, n: int) -> None:
    """Remove ``<i><suffix>`` files with i ≥ n (left by an earlier, longer run)."""
    try:
        names = os.listdir(d)
    except OSError:
        return
    for nm in names:
        if nm.endswith(suffix) and nm[: -len(suffix)].isdigit() and int(nm[: -len(suffix)]) >= n:
            with contextlib.suppress(OSError):
                os.unlink(d / nm)


@contextlib.contextmanager
def _pool(threads: int):
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=max(1, int(threads))) as ex:
        yield ex


def _prefetch(gen, threads: int, ahead: int = 4):
    """Yield the items of ``gen`` (e.g. decoded frames) produced on a background thread, at most
    ``ahead`` in advance, so decoding overlaps the caller's work."""
    if threads <= 1:
        yield from gen
        return
    import queue
    import threading

    q: queue.Queue = queue.Queue(maxsize=ahead)
    end = object()
    stop = threading.Event()

    def fill():
        try:
            for x in gen:
                if stop.is_set():
                    return
                q.put(x)
            q.put(end)
        except BaseException as e:  # handed to the consumer
            q.put(e)

    t = threading.Thread(target=fill, daemon=True)
    t.start()
    try:
        while True:
            x = q.get()
            if x is end:
                return
            if isinstance(x, BaseException):
                raise x
            yield x
    finally:
        stop.set()
        while t.is_alive():
            try:
                q.get_nowait()
            except queue.Empty:
                t.join(timeout=0.05)


# --------------------------------------------------------------------------------------------------
# per-frame work in worker processes (contiguous chunks of frames; real parallelism on every core)
# --------------------------------------------------------------------------------------------------

_COUNTER = None


def _init_worker(counter) -> None:
    global _COUNTER
    _COUNTER = counter
    os.environ["OMP_NUM_THREADS"] = "1"


def _tick() -> None:
    if _COUNTER is not None:
        with _COUNTER.get_lock():
            _COUNTER.value += 1


def run_chunks(fn, n: int, workers: int, bar=None, args: tuple = (), min_chunk: int = 16) -> list:
    """Run ``fn(start, stop, *args)`` over ``workers`` contiguous chunks of ``range(n)`` in forked
    worker processes (in this process when one worker is asked for or the clip is short) and return
    the chunks' results in order. Each worker calls :func:`_tick` per frame; ``bar`` follows them."""
    k = max(1, min(int(workers), n // min_chunk))
    bounds = np.linspace(0, n, k + 1).round().astype(int)
    if k == 1:
        global _COUNTER
        _COUNTER = None
        try:
            out = fn(0, n, *args)
        finally:
            if bar is not None:
                bar(n)
        return [out]
    import multiprocessing as mp

    ctx = mp.get_context("fork")
    counter = ctx.Value("l", 0)
    with ctx.Pool(k, initializer=_init_worker, initargs=(counter,)) as pool:
        res = pool.starmap_async(fn, [(int(a), int(b), *args) for a, b in zip(bounds[:-1], bounds[1:])])
        seen = 0
        while not res.ready():
            res.wait(0.2)
            if bar is not None and counter.value > seen:
                bar(counter.value - seen)
                seen = counter.value
        out = res.get()
        if bar is not None and n > seen:
            bar(n - seen)
    return out


def _landmarks_chunk(start: int, stop: int, out: str, backend: str):
    from . import landmarks as L

    b = L.make_backend(backend)
    frames = _prefetch((V.decode_image(Path(out) / "ori_imgs" / f"{i}.jpg") for i in range(start, stop)), 2)
    return L.track(frames, b, progress=_tick)


def _parsing_chunk(start: int, stop: int, out: str, lms: np.ndarray, bgm, parsing_model: Optional[str]):
    from . import parsing as P

    net = None
    if parsing_model:
        import torch

        from .bisenet import BiSeNetParser

        torch.set_num_threads(1)
        net = BiSeNetParser(parsing_model)
    d = Path(out) / "parsing"
    acc = cnt = None
    for i in range(start, stop):
        img = V.decode_image(Path(out) / "ori_imgs" / f"{i}.jpg")
        lab = net.parse(img, lms[i]) if net is not None else P.parse_frame(img, lms[i], bgm)
        write_bytes(d / f"{i}.png", V.encode_png(lab, palette=P.PALETTE_RGB))
        m = P.background_pixels(lab)
        if acc is None:
            acc = np.zeros(img.shape, np.float32)
            cnt = np.zeros(img.shape[:2], np.int32)
        acc += img * m[..., None]
        cnt += m
        _tick()
    return acc, cnt


def _background_chunk(start: int, stop: int, out: str, bc8: np.ndarray, quality: int):
    from ..data.formats import parsing_labels
    from . import parsing as P

    gd, td = Path(out) / "gt_imgs", Path(out) / "torso_imgs"
    for i in range(start, stop):
        img = V.decode_image(Path(out) / "ori_imgs" / f"{i}.jpg")
        lab, _ = parsing_labels(V.decode_image(Path(out) / "parsing" / f"{i}.png"))
        person = lab != P.LABEL["background"]
        write_bytes(gd / f"{i}.jpg", V.encode_jpeg(np.where(person[..., None], img, bc8), quality))
        torso = (lab == P.LABEL["torso"]) | (lab == P.LABEL["neck"])
        rgba = np.concatenate([img * torso[..., None], torso[..., None].astype(np.uint8) * 255], -1)
        write_bytes(td / f"{i}.png", V.encode_png(rgba))  # transparent pixels are 0: a faster PNG
        _tick()
    return None
