"""``ua3dtalk-score``: score a generated video against its ground-truth video (any method, DESIGN §8).

    ua3dtalk-score pred.mp4 gt.mp4 [--gt-dir DATASET_CLIP_DIR] [--evaluators DIR] [--audio speech.wav]
                   [--metrics psnr,ssim,lpips,efid,lmd,blink,acc_emo,sync] [--lpips-random-backbone]
                   [--syncnet syncnet_v2.model] [--threedmm model.pt] [--json OUT.json]
                   [--chunk 64] [--no-progress]

Both videos are decoded with imageio-ffmpeg (RGB, same frame count and size required; 25 fps assumed
for Sync-C/D) lazily and in lockstep, ``--chunk`` frames at a time (default 64), and scored chunk by
chunk: memory does not grow with the video's length (a 5-minute 512² pair decoded whole would be
~12 GB), and the numbers equal those of scoring every frame at once. The audio comes from the
ground-truth mp4 (or ``--audio``), resampled to 16 kHz mono.
``--gt-dir`` is the dataset clip directory of the ground truth (DESIGN §5): its ``.lms`` landmarks give
the face boxes (LPIPS face crop, E-FID, LMD, blink, Acc_emo, SyncNet crops), ``au.csv`` the AU45 of the
blink error and ``emotion.json`` the Acc_emo label. The same :class:`~ua3dtalk.metrics.suite.MetricSuite`
as training and ``ua3dtalk-eval`` computes the numbers, so baselines are scored by the same code.
Prints the metrics (and which evaluator produced each) and writes them as JSON with ``--json``.
"""
from __future__ import annotations

import subprocess
import sys
import warnings
from pathlib import Path
from typing import Iterator, Optional

import numpy as np
from .args import Parser, int_in

SAMPLE_RATE = 16000


DEFAULT_CHUNK = 64
"""Frames decoded (per video) and scored at a time by :func:`score_videos`."""


class VideoReader:
    """Lazy RGB decoding of one video with imageio-ffmpeg: frames come one by one from ffmpeg's pipe and
    :meth:`read` returns at most ``k`` of them, so memory is bounded by one chunk whatever the length.

    Opening reads the header (``width``, ``height``, ``fps``, ``duration``); raises FileNotFoundError
    (missing file) or ValueError naming the file (not a decodable video). Use as a context manager or
    call :meth:`close` (stops ffmpeg).
    """

    def __init__(self, path):
        import imageio_ffmpeg

        self.path = path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"video not found: {path}")
        self._gen = imageio_ffmpeg.read_frames(str(path), pix_fmt="rgb24")
        try:
            meta = next(self._gen)
            self.width, self.height = (int(v) for v in meta["size"])
        except (RuntimeError, OSError, StopIteration, KeyError, TypeError, ValueError) as e:
            self._gen.close()
            raise ValueError(f"{path}: cannot decode the video ({_first_line(e)})") from None
        self.fps = float(meta.get("fps") or 25.0)
        self.duration = float(meta.get("duration") or 0.0)
        self.frames_read = 0

    @property
    def expected_frames(self) -> Optional[int]:
        """Frame count the header promises (duration × fps; an estimate, for progress bars), None if unknown."""
        return int(round(self.duration * self.fps)) or None

    def read(self, k: int, out: Optional[np.ndarray] = None) -> np.ndarray:
        """The next ≤ ``k`` frames, uint8 [k',H,W,3] RGB; fewer than ``k`` only at the end (0: ended).
        With ``out`` (uint8 [≥k,H,W,3]) the frames are written there and a view of it is returned."""
        if out is None:
            out = np.empty((int(k), self.height, self.width, 3), np.uint8)
        elif out.dtype != np.uint8 or out.shape[0] < k or out.shape[1:] != (self.height, self.width, 3):
            raise ValueError(f"out must be uint8 [≥{k},{self.height},{self.width},3], got {out.dtype} {out.shape}")
        n = 0
        while n < k:
            try:
                buf = next(self._gen)
            except StopIteration:
                break
            except (RuntimeError, OSError) as e:
                raise ValueError(f"{self.path}: cannot decode frame {self.frames_read + n} "
                                 f"({_first_line(e)})") from None
            out[n] = np.frombuffer(buf, np.uint8).reshape(self.height, self.width, 3)
            n += 1
        self.frames_read += n
        return out[:n]

    def chunks(self, k: int = DEFAULT_CHUNK) -> Iterator[np.ndarray]:
        """Yield uint8 [k',H,W,3] chunks of ``k`` frames (the last one shorter) until the video ends."""
        while True:
            c = self.read(k)
            if len(c):
                yield c
            if len(c) < k:
                return

    def close(self) -> None:
        self._gen.close()

    def __enter__(self) -> "VideoReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _first_line(e: BaseException) -> str:
    lines = [ln for ln in str(e).strip().splitlines() if ln.strip()]
    return lines[0] if lines else type(e).__name__


def iter_video(path, chunk: int = DEFAULT_CHUNK) -> Iterator[np.ndarray]:
    """Decode a video lazily → uint8 [k,H,W,3] RGB chunks of ``chunk`` frames (the reading path of
    :func:`score_videos`; memory: one chunk). Raises FileNotFoundError / ValueError naming the file."""
    with VideoReader(path) as r:
        yield from r.chunks(chunk)


def read_video(path) -> tuple[np.ndarray, float]:
    """Decode a whole (short) mp4 → (uint8 [N,H,W,3] RGB, fps). Holds every frame in memory: the CLI
    streams with :class:`VideoPair` instead. Raises FileNotFoundError / ValueError naming the file."""
    with VideoReader(path) as r:
        frames = list(r.chunks(DEFAULT_CHUNK))
        if not frames:
            raise ValueError(f"{path}: the video has no frames")
        return np.concatenate(frames), r.fps


class VideoPair:
    """A generated and a ground-truth video decoded in lockstep, ``k`` frames of each at a time.

    Opening raises ValueError when the frame sizes differ (naming both files) and warns when a video is
    not 25 fps; :meth:`chunks` raises ValueError naming both files, with both counts, as soon as one
    video ends before the other.
    """

    def __init__(self, pred, gt):
        self.pred = VideoReader(pred)
        try:
            self.gt = VideoReader(gt)
        except BaseException:
            self.pred.close()
            raise
        p, g = self.pred, self.gt
        if (p.width, p.height) != (g.width, g.height):
            self.close()
            raise ValueError(f"frame sizes differ: {p.path} is {p.width}×{p.height}, "
                             f"{g.path} is {g.width}×{g.height}")
        for r in (p, g):
            if abs(r.fps - 25.0) > 0.01:
                warnings.warn(f"{r.path}: {r.fps} fps; Sync-C/D assume 25 fps video", stacklevel=3)

    @property
    def frames_read(self) -> int:
        return self.gt.frames_read

    def chunks(self, k: int = DEFAULT_CHUNK) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Yield (pred, gt) uint8 [k',H,W,3] chunks of equal length until both videos end. The two arrays
        are reused for every chunk (memory: one chunk per video): copy them to keep them."""
        bufs = [np.empty((k, r.height, r.width, 3), np.uint8) for r in (self.pred, self.gt)]
        while True:
            p, g = self.pred.read(k, bufs[0]), self.gt.read(k, bufs[1])
            if len(p) != len(g):
                self.drain(k)
            if len(p) == 0:
                if self.pred.frames_read == 0:
                    raise ValueError(f"{self.pred.path}: the video has no frames")
                return
            yield p, g
            if len(p) < k:
                return

    def drain(self, k: int = DEFAULT_CHUNK) -> int:
        """Read (and drop) the rest of both videos → their common frame count; raises the ValueError of
        :meth:`chunks` when the counts differ."""
        for r in (self.pred, self.gt):
            while len(r.read(k)):
                pass
        p, g = self.pred, self.gt
        if p.frames_read != g.frames_read:
            raise ValueError(f"frame counts differ: {p.path} has {p.frames_read} frames, {g.path} has "
                             f"{g.frames_read}")
        return g.frames_read

    def close(self) -> None:
        self.pred.close()
        self.gt.close()

    def __enter__(self) -> "VideoPair":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def read_audio(path, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """The audio track of a video (or an audio file) → mono float32 [L] at ``sample_rate`` (ffmpeg)."""
    import imageio_ffmpeg

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"audio source not found: {path}")
    proc = subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-i", str(path), "-vn", "-ac", "1",
                           "-ar", str(sample_rate), "-f", "s16le", "-"], capture_output=True)
    if proc.returncode != 0 or not proc.stdout:
        msg = proc.stderr.decode(errors="replace").strip().splitlines()
        raise ValueError(f"{path}: no readable audio track ({msg[-1] if msg else 'empty output'}); pass --audio WAV")
    return np.frombuffer(proc.stdout, np.int16).astype(np.float32) / 32768.0


def gt_clip_inputs(gt_dir, num_frames: Optional[int] = None) -> dict:
    """Landmarks [N,68,2], AU45 [N] (or None) and emotion label of a dataset clip directory (N checked
    against ``num_frames`` when given)."""
    from ..data.loading import load_clip

    clip = load_clip(gt_dir)
    if num_frames is not None and len(clip) != num_frames:
        raise ValueError(_gt_dir_mismatch(gt_dir, len(clip), num_frames))
    lms = np.stack([clip.landmarks(j) for j in range(len(clip))]).astype(np.float32)[..., :2]
    a = clip.au()
    col = a.get("AU45_r") if a is not None else None
    au45 = None
    if col is not None and int(np.max(clip.img_ids)) < len(col):
        au45 = np.asarray(col, np.float32)[np.asarray(clip.img_ids)]
    return {"landmarks": lms, "au45": au45, "emotion": int(clip.emotion) if clip.emotion >= 0 else None}


def _gt_dir_mismatch(gt_dir, clip_frames: int, video_frames: int) -> str:
    return (f"--gt-dir {gt_dir}: the clip has {clip_frames} frames but the videos have {video_frames}; "
            "they must show the same frames")


def score_videos(pred, gt, *, gt_dir=None, evaluators=None, audio=None, metrics=None, lpips_random_backbone=False,
                 syncnet=None, threedmm=None, chunk: int = DEFAULT_CHUNK, progress: bool = True) -> dict:
    """Score ``pred`` against ``gt`` (mp4 paths) → {"metrics": {...}, "evaluators": {...}, "skipped": {...},
    "frames": N, ...}.

    Both videos are decoded in lockstep, ``chunk`` frames at a time, and fed to one
    :meth:`MetricSuite.stream <ua3dtalk.metrics.suite.MetricSuite.stream>`: memory is bounded by a
    chunk of both videos (plus small per-frame records), whatever their length, and the numbers are
    those of scoring all frames at once. ``progress``: a tqdm bar over frames (stderr).
    """
    import torch
    from tqdm.auto import tqdm

    from ..metrics.evaluator_dir import load_evaluators, parse_metrics
    from ..metrics.suite import MetricSuite

    groups = parse_metrics(metrics)
    if int(chunk) < 1:
        raise ValueError(f"--chunk must be ≥ 1 frame, got {chunk}")
    chunk = int(chunk)
    with VideoPair(pred, gt) as videos:
        extra = gt_clip_inputs(gt_dir) if gt_dir is not None else {}
        expected = len(extra["landmarks"]) if gt_dir is not None else None
        wav = None
        if "sync" in groups:
            wav = read_audio(audio if audio is not None else gt)
        ev = load_evaluators(evaluators, groups, lpips_random_backbone=lpips_random_backbone, syncnet=syncnet,
                             threedmm=threedmm)
        suite = MetricSuite(ev, groups)
        stream = suite.stream(landmarks=extra.get("landmarks"), audio=wav, sr=SAMPLE_RATE,
                              emotion=extra.get("emotion"), au45=extra.get("au45"), name=Path(pred).name)
        to_t = lambda v: torch.from_numpy(v).permute(0, 3, 1, 2)  # noqa: E731
        total = expected if expected is not None else videos.gt.expected_frames
        with tqdm(total=total, desc="ua3dtalk-score", unit="frame", disable=not progress) as bar:
            n = 0
            for p, g in videos.chunks(chunk):
                if expected is not None and n + len(p) > expected:
                    raise ValueError(_gt_dir_mismatch(gt_dir, expected, videos.drain(chunk)))
                stream.add(to_t(p), to_t(g))
                n += len(p)
                bar.update(len(p))
        if expected is not None and n != expected:
            raise ValueError(_gt_dir_mismatch(gt_dir, expected, n))
        stream.close()
    values = suite.compute()
    return {"pred": str(pred), "gt": str(gt), "gt_dir": None if gt_dir is None else str(gt_dir),
            "frames": int(n), "metrics": values, "evaluators": suite.provenance(list(values)),
            "skipped": suite.skipped}


def _parser():
    p = Parser(prog="ua3dtalk-score", description=__doc__.split("\n\n")[0])
    p.add_argument("pred", help="generated video (mp4)")
    p.add_argument("gt", help="ground-truth video (mp4, with the audio track unless --audio)")
    p.add_argument("--gt-dir", help="dataset clip directory of the ground truth (landmarks, au.csv, emotion.json)")
    p.add_argument("--evaluators", help="evaluator directory (ua3dtalk-evaluators train --out DIR)")
    p.add_argument("--audio", help="audio file instead of the GT video's audio track")
    p.add_argument("--metrics", default="all", help="comma-separated metric groups (default all)")
    p.add_argument("--lpips-random-backbone", action="store_true",
                   help="LPIPS with a random AlexNet (key lpips_randbackbone; smoke tests only)")
    p.add_argument("--syncnet", help="SyncNet weights (syncnet_v2.model or a project .safetensors)")
    p.add_argument("--threedmm", help="TorchScript 3DMM/expression regressor (efid_3dmm)")
    p.add_argument("--json", help="write the result here (atomically)")
    p.add_argument("--chunk", type=int_in(1, 100_000), default=DEFAULT_CHUNK,
                   help=f"frames decoded and scored at a time (memory bound; default {DEFAULT_CHUNK})")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def main(argv: Optional[list] = None) -> int:
    args = _parser().parse_args(sys.argv[1:] if argv is None else argv)
    from ..data.formats import DatasetError
    from ..metrics.evaluators import EvaluatorError
    from ..utils.io import atomic_write_json

    from ..utils.io import check_output

    try:
        if args.json:
            check_output(args.json, "--json", {"pred": args.pred, "gt": args.gt, "--audio": args.audio,
                                               "--gt-dir": args.gt_dir}, reads_back=("aud.wav",))
        res = score_videos(args.pred, args.gt, gt_dir=args.gt_dir, evaluators=args.evaluators, audio=args.audio,
                           metrics=args.metrics, lpips_random_backbone=args.lpips_random_backbone,
                           syncnet=args.syncnet, threedmm=args.threedmm, chunk=args.chunk,
                           progress=not args.no_progress)
    except (ValueError, FileNotFoundError, DatasetError, EvaluatorError) as e:
        print(f"ua3dtalk-score: error: {e}", file=sys.stderr)
        return 2
    for k, v in res["metrics"].items():
        print(f"{k:>16s} = {v:.5g}    [{res['evaluators'].get(k, '')}]")
    for g, why in res["skipped"].items():
        print(f"{'skipped ' + g:>16s}: missing {why}")
    if args.json:
        atomic_write_json(args.json, res)
        print(f"ua3dtalk-score: wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
