"""Score rendered sequences against their ground truth with every configured metric (DESIGN §8).

The one layer that :class:`ua3dtalk.callbacks.metrics.MetricsCallback`, ``ua3dtalk-eval`` and
``ua3dtalk-score`` share, so a number means the same thing whichever of them produced it. No Lightning.

* :func:`~.evaluator_dir.load_evaluators` (in :mod:`.evaluator_dir`, with the metric groups and the
  evaluator directory layout) loads the evaluator networks a metric list needs into an
  :class:`~.evaluator_dir.Evaluators`.
* :class:`MetricSuite` accumulates clips (:meth:`MetricSuite.update`: pred frames, ground-truth frames,
  landmarks, audio, emotion label, AU45) and :meth:`MetricSuite.compute` returns bare metric keys
  (``psnr``, ``lpips``, ``efid_landmark``, ``sync_c`` …; callers namespace them, e.g. ``val/psnr``).
  Per-clip metrics are averaged over clips weighted by frames (Sync-C/D/offset: plain mean over clips);
  E-FID pools the expression features of all clips (it compares distributions).
  :meth:`MetricSuite.provenance` maps every key to the evaluator that produced it.
* :meth:`MetricSuite.stream` scores one long clip chunk by chunk (:class:`ClipStream`: ``add`` frames,
  then ``close``) in bounded memory with the same numbers as one :meth:`~MetricSuite.update`
  (``update`` is a one-chunk stream); ``ua3dtalk-score`` uses it.

A metric whose evaluator (or input: landmarks, audio, label) is missing is skipped, never replaced by
a made-up number; the first :meth:`~MetricSuite.compute` emits ONE ``UserWarning`` naming everything
that is missing (later ones only warn about new items).

Metric groups (the ``metrics`` argument) and the keys they produce:

==========  ====================================  ============================================
group       keys                                  needs
==========  ====================================  ============================================
psnr        psnr                                  —
ssim        ssim                                  —
lpips       lpips, lpips_face (or *_randbackbone)  AlexNet weights (or lpips_random_backbone);
                                                  face variant: ground-truth landmarks
efid        efid_landmark, efid_regressor,        landmark regressor / expression regressor /
            efid_3dmm                             TorchScript 3DMM regressor (when given); landmarks
lmd         lmd, f_lmd                            landmark regressor, landmarks
blink       blink_err                             landmark regressor, landmarks (AU45 from au.csv
                                                  when given, else from the reference landmarks)
acc_emo     acc_emo, acc_emo_clip                 emotion classifier, landmarks, emotion label
sync        sync_c, sync_d, sync_offset           SyncNet, landmarks, audio (≥ 6 frames)
==========  ====================================  ============================================
"""
from __future__ import annotations

import math
import warnings
from typing import Optional, Sequence, Union

import numpy as np
import torch

from .evaluator_dir import _NEEDS, METRIC_GROUPS, Evaluators, parse_metrics

__all__ = ["MetricSuite", "ClipStream", "finite_or_none"]


def _as_frames(x, what: str) -> torch.Tensor:
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(x)
    if not isinstance(x, torch.Tensor) or x.ndim != 4 or x.shape[1] != 3 or x.shape[0] == 0:
        shape = tuple(x.shape) if hasattr(x, "shape") else type(x).__name__
        raise ValueError(f"{what} must be frames [N,3,H,W] (RGB, float in [0,1] or uint8) with N ≥ 1, got {shape}")
    if x.dtype == torch.uint8:
        return x.float() / 255.0
    if not x.is_floating_point():
        raise ValueError(f"{what} must be float in [0,1] or uint8, got {x.dtype}")
    return x.detach().float().cpu()



def _check_pair(pred: torch.Tensor, gt: torch.Tensor, name: str) -> None:
    if pred.shape[0] != gt.shape[0]:
        raise ValueError(f"{name}: pred has {pred.shape[0]} frames but gt has {gt.shape[0]}; the sequences "
                         "must have the same number of frames")
    if pred.shape != gt.shape:
        raise ValueError(f"{name}: pred frames {tuple(pred.shape[1:])} and gt frames {tuple(gt.shape[1:])} "
                         "differ in size")

class MetricSuite:
    """Accumulate clips, then compute every configured metric (see the module docstring).

    Args:
        evaluators: :class:`Evaluators` (from :func:`load_evaluators`).
        metrics: metric groups (default all).
        vshift: SyncNet offsets searched (−vshift..vshift).
        warn: emit the one "skipped metrics" warning.
    """

    def __init__(self, evaluators: Optional[Evaluators] = None, metrics: Union[str, Sequence[str], None] = None, *,
                 vshift: int = 15, warn: bool = True):
        self.ev = evaluators if evaluators is not None else Evaluators()
        self.metrics = parse_metrics(metrics)
        self.vshift = int(vshift)
        self.warn = bool(warn)
        self._warned: set[str] = set()
        self.reset()

    # ------------------------------------------------------------------ state
    def reset(self) -> None:
        """Forget the accumulated clips (the warned-about items are kept: one warning per suite)."""
        self._sums: dict[str, float] = {}
        self._weights: dict[str, float] = {}
        self._feats: dict[str, tuple[list, list]] = {}
        self._skipped: dict[str, str] = {}
        self.clips: dict[str, dict] = {}
        self.num_frames = 0

    def _add(self, key: str, value: float, weight: float) -> None:
        self._sums[key] = self._sums.get(key, 0.0) + float(value) * weight
        self._weights[key] = self._weights.get(key, 0.0) + weight

    def _skip(self, group: str, why: str) -> None:
        self._skipped.setdefault(group, why)

    def _missing(self, group: str) -> Optional[str]:
        """Reason the group's evaluator is missing, else None."""
        for n in _NEEDS.get(group, ()):
            if getattr(self.ev, n) is None:
                if group == "efid" and (self.ev.landmark is not None or self.ev.expression is not None
                                        or self.ev.threedmm is not None):
                    continue  # E-FID runs with whichever extractors are there
                return self.ev.missing.get(n, f"no {n} evaluator loaded")
        return None

    # ------------------------------------------------------------------ input
    def update(self, pred, gt, *, landmarks=None, audio=None, sr: int = 16000, emotion: Optional[int] = None,
               au45=None, name: Optional[str] = None, groups: Optional[Sequence[str]] = None) -> dict:
        """Score one clip and accumulate it (one-shot :meth:`stream` → ``add`` → ``close``).

        Args:
            pred: rendered frames [N,3,H,W] in [0,1] (or uint8), in time order at 25 fps.
            gt: ground-truth frames, same shape.
            landmarks: ground-truth 68 landmarks [N,68,2] (pixels, x = column) — face boxes of every
                face metric (rendered frames share the ground-truth cameras).
            audio: mono waveform [L] at ``sr`` starting at frame 0 (Sync-C/D).
            emotion: label id in :data:`ua3dtalk.constants.EMOTIONS` (Acc_emo); None/-1 = unknown.
            au45: ground-truth AU45_r [N] (OpenFace scale 0..5) for the blink error; NaNs = unknown.
            name: clip name (per-clip record).
            groups: subset of this suite's metric groups for this clip (the callback's cheap epochs).
        Returns:
            this clip's metrics (bare keys).
        Raises:
            ValueError: frames of different shapes / counts, bad landmark / AU / audio shapes (named).
        """
        name = name or f"clip{len(self.clips)}"
        pred = _as_frames(pred, f"{name}: pred")
        gt = _as_frames(gt, f"{name}: gt")
        _check_pair(pred, gt, name)
        s = self.stream(num_frames=pred.shape[0], landmarks=landmarks, audio=audio, sr=sr, emotion=emotion,
                        au45=au45, name=name, groups=groups)
        s.add(pred, gt)
        return s.close()

    def stream(self, *, num_frames: Optional[int] = None, landmarks=None, audio=None, sr: int = 16000,
               emotion: Optional[int] = None, au45=None, name: Optional[str] = None,
               groups: Optional[Sequence[str]] = None) -> "ClipStream":
        """Score one clip fed in consecutive chunks of frames (long videos in bounded memory).

        ``s = suite.stream(landmarks=lms, audio=wav, ...)``; ``s.add(pred_chunk, gt_chunk)`` for
        consecutive chunks ``[k,3,H,W]``; ``s.close()`` accumulates the clip exactly as :meth:`update`
        does with all frames at once and returns its metrics. The arguments are those of :meth:`update`
        for the whole clip (they are small: landmarks [N,68,2], AU45 [N], the waveform); ``num_frames``
        announces N when neither ``landmarks`` nor ``au45`` does (checked at ``close``). See
        :class:`ClipStream` for what is kept between chunks.
        """
        return ClipStream(self, num_frames=num_frames, landmarks=landmarks, audio=audio, sr=sr, emotion=emotion,
                          au45=au45, name=name, groups=groups)

    def _feat(self, key: str, fp: torch.Tensor, fg: torch.Tensor) -> None:
        a, b = self._feats.setdefault(key, ([], []))
        a.append(torch.as_tensor(fp).detach().double().cpu().numpy())
        b.append(torch.as_tensor(fg).detach().double().cpu().numpy())

    # ------------------------------------------------------------------ output
    def compute(self) -> dict:
        """Metrics of the accumulated clips (bare keys; see the module docstring)."""
        from .frechet import frechet_distance

        out = {k: self._sums[k] / self._weights[k] for k in self._sums if self._weights[k] > 0}
        for key, (a, b) in self._feats.items():
            fp, fg = np.concatenate(a), np.concatenate(b)
            if fp.shape[0] < 2:
                self._skip("efid", "at least 2 frames for E-FID")
                continue
            out[key] = frechet_distance(fp, fg)
        new = {g: why for g, why in self._skipped.items() if g not in self._warned}
        if new and self.warn:
            keys = {g: ", ".join(METRIC_GROUPS[g]) for g in new}
            warnings.warn("metrics skipped (missing evaluator or input; no number is reported for them): "
                          + "; ".join(f"{keys[g]}: missing {why}" for g, why in new.items()), UserWarning,
                          stacklevel=2)
        self._warned |= set(new)
        return out

    @property
    def skipped(self) -> dict:
        """Metric group → what was missing (of the accumulated clips)."""
        return dict(self._skipped)

    def provenance(self, keys: Optional[Sequence[str]] = None) -> dict:
        """Metric key → the evaluator that produced it ("—" for evaluator-free metrics)."""
        src = self.ev.sources
        out = {}
        for k in keys if keys is not None else list(self._sums) + list(self._feats):
            if k in ("psnr", "ssim"):
                out[k] = "torchmetrics (no evaluator)"
            elif k.startswith("lpips"):
                out[k] = src.get("lpips", "—")
            elif k in ("lmd", "f_lmd", "blink_err", "efid_landmark"):
                out[k] = f"landmark regressor {src.get('landmark', '—')}"
            elif k == "efid_regressor":
                out[k] = f"expression regressor {src.get('expression', '—')}"
            elif k.startswith("efid_"):
                out[k] = f"TorchScript extractor {src.get('threedmm', '—')}"
            elif k.startswith("acc_emo"):
                out[k] = f"emotion classifier {src.get('emotion', '—')}"
            elif k.startswith("sync_"):
                out[k] = f"SyncNet {src.get('syncnet', '—')}"
        return out


class ClipStream:
    """One clip scored chunk by chunk (made by :meth:`MetricSuite.stream`; see :meth:`MetricSuite.update`
    for the arguments).

    :meth:`add` takes consecutive chunks ``pred, gt [k,3,H,W]`` (float in [0,1] or uint8; k may vary);
    :meth:`close` accumulates the clip into the suite and returns its metrics, which equal those of a
    single :meth:`MetricSuite.update` with all N frames (up to float rounding; tested):

    * PSNR, SSIM, LPIPS (full frame and face crop): per-frame values summed per chunk, divided by N;
    * LMD / F-LMD, blink error and the landmark E-FID features: the landmark regressor runs per chunk
      and its landmarks of both sequences ([N,68,2], ~1 KB/frame) are kept, so clip-level statistics
      (the open-eye EAR of the blink error) see the whole clip;
    * E-FID features and emotion logits: kept per frame (a few floats), Fréchet distance / clip vote at
      the end;
    * Sync-C/D/offset: the SyncNet face boxes are median-filtered over the whole clip's landmarks up
      front; lip embeddings of every 5-frame window are computed as soon as its last frame arrives
      (the last 4 face crops are carried over a chunk border), the audio embeddings once at
      :meth:`close`, then the offset search (−vshift..vshift) runs on the stored embeddings.

    Evaluators that stack ``in_frames`` > 1 neighbouring frames get their neighbours across chunk
    borders: frames are scored once their right-hand neighbours have arrived (the last ones at
    :meth:`close`), with the left-hand ones kept from the previous chunk. Memory is one chunk (plus
    ≤ in_frames frames) of pixels and O(N) small per-frame records.
    """

    def __init__(self, suite: MetricSuite, *, num_frames: Optional[int], landmarks, audio, sr: int,
                 emotion: Optional[int], au45, name: Optional[str], groups: Optional[Sequence[str]]):
        self.suite = suite
        ev = suite.ev
        self.name = name = name or f"clip{len(suite.clips)}"
        N = None if num_frames is None else int(num_frames)
        lms = None
        if landmarks is not None:
            lms = torch.as_tensor(np.asarray(landmarks) if not isinstance(landmarks, torch.Tensor) else landmarks)
            lms = lms.detach().float().cpu()
            n = N if N is not None else (int(lms.shape[0]) if lms.ndim == 3 else "N")
            if lms.ndim != 3 or lms.shape[1] != 68 or lms.shape[2] not in (2, 3) or lms.shape[0] != n:
                raise ValueError(f"{name}: landmarks must be [N={n},68,2], got {tuple(lms.shape)}")
            lms = lms[..., :2]
            N = int(lms.shape[0])
        if au45 is not None:
            au45 = torch.as_tensor(np.asarray(au45, dtype=np.float32)).flatten()
            if N is not None and au45.shape[0] != N:
                raise ValueError(f"{name}: au45 must have N={N} values, got {au45.shape[0]}")
            N = int(au45.shape[0])
            if not bool(torch.isfinite(au45).all()):
                au45 = None
        if audio is not None:
            a = np.asarray(audio.detach().cpu() if hasattr(audio, "detach") else audio)
            if a.ndim != 1:
                raise ValueError(f"{name}: audio must be a mono waveform [L], got shape {a.shape}")
            audio = a
        self.num_frames, self.lms, self.au45 = N, lms, au45
        self.groups = groups = suite.metrics if groups is None else tuple(g for g in suite.metrics if g in groups)
        self._skipped: dict[str, str] = {}
        need_lms = {"efid", "lmd", "blink", "acc_emo", "sync"}
        for g in groups:
            if g in need_lms | {"lpips"}:
                why = suite._missing(g)
                if why is not None:
                    self._skipped.setdefault(g, why)
                elif g in need_lms and lms is None:
                    self._skipped.setdefault(g, "ground-truth landmarks (face boxes) of the clip")
        # what runs on this clip
        self.lpips = ev.lpips if "lpips" in groups else None
        self.landmark = ev.landmark if (lms is not None and any(g in groups for g in ("lmd", "blink", "efid"))) \
            else None
        self.extractors = [ex for ex in (ev.expression, ev.threedmm) if ex is not None] \
            if ("efid" in groups and lms is not None) else []
        self.emotion = None
        if "acc_emo" in groups and ev.emotion is not None and lms is not None:
            if emotion is None or int(emotion) < 0:
                self._skipped.setdefault("acc_emo", "the clip's emotion label (emotion.json)")
            elif int(emotion) >= len(ev.emotion.config.class_names):
                raise ValueError(f"{name}: emotion label {emotion} outside the classifier's classes "
                                 f"{ev.emotion.config.class_names}")
            else:
                self.emotion, self.label = ev.emotion, int(emotion)
        self.sync = None
        if "sync" in groups and ev.syncnet is not None and lms is not None:
            self._open_sync(ev.syncnet, audio, sr)
        # neighbours the frame-stacking evaluators need on each side
        stacks = [int(getattr(getattr(m, "config", None), "in_frames", 1) or 1)
                  for m in (self.landmark, self.emotion, *self.extractors) if m is not None]
        self._L = max([(t - 1) // 2 for t in stacks], default=0)
        self._R = max([t - 1 - (t - 1) // 2 for t in stacks], default=0)
        # state
        self.seen = 0  # frames added
        self._done = 0  # frames scored
        self._buf: Optional[tuple[torch.Tensor, torch.Tensor]] = None  # frames [_b0, seen)
        self._b0 = 0
        self._hw: Optional[tuple] = None
        self._sums: dict[str, float] = {}
        self._lm: tuple[list, list] = ([], [])
        self._ex: dict[str, tuple[list, list]] = {}
        self._logits: list = []
        self.closed = False

    def _open_sync(self, net, audio, sr: int) -> None:
        from .mfcc import syncnet_mfcc
        from .mfcc import SAMPLE_RATE as SYNC_SR
        from .syncnet import WINDOW
        from .syncnet_scoring import _audio_16k, _num_windows, sync_boxes

        N = self.num_frames
        if audio is None:
            self._skipped.setdefault("sync", "the clip's audio (aud.wav / the GT video's audio track)")
            return
        if N < WINDOW + 1:
            self._skipped.setdefault("sync", f"clips of at least {WINDOW + 1} frames (got {N} in {self.name})")
            return
        wav = _audio_16k(audio, sr)
        nw = _num_windows(N, len(wav))
        if nw < 1:
            raise ValueError(f"SyncNet needs at least {WINDOW + 1} frames (0.24 s) of video and audio, got "
                             f"{N} frames and {len(wav)} samples")
        self.sync = net
        self._sync_boxes = sync_boxes(self.lms)
        self._mfcc = torch.from_numpy(syncnet_mfcc(wav, SYNC_SR))
        self._nw = int(nw)
        self._pix: Optional[torch.Tensor] = None  # face crops (model pixels) of frames [_pix0, _done)
        self._pix0 = 0
        self._win = 0  # lip windows embedded
        self._V: list = []

    # ------------------------------------------------------------------ feeding
    def add(self, pred, gt) -> None:
        """Score the next chunk of frames ``pred, gt [k,3,H,W]`` (float in [0,1] or uint8). Float frames may
        be kept (not copied) until their neighbours arrive: do not modify them in place afterwards."""
        if self.closed:
            raise RuntimeError(f"{self.name}: add() after close()")
        pred = _as_frames(pred, f"{self.name}: pred")
        gt = _as_frames(gt, f"{self.name}: gt")
        _check_pair(pred, gt, self.name)
        if self._hw is None:
            self._hw = tuple(pred.shape[1:])
        elif tuple(pred.shape[1:]) != self._hw:
            raise ValueError(f"{self.name}: frames {tuple(pred.shape[1:])} of this chunk differ in size from the "
                             f"previous chunks' {self._hw}")
        k = pred.shape[0]
        if self.num_frames is not None and self.seen + k > self.num_frames:
            raise ValueError(f"{self.name}: more frames than the N={self.num_frames} of the landmarks / au45 / "
                             f"num_frames given for the clip (got {self.seen + k} so far)")
        if self._buf is None or self._buf[0].shape[0] == 0:
            self._buf, self._b0 = (pred, gt), self.seen
        else:
            self._buf = (torch.cat([self._buf[0], pred]), torch.cat([self._buf[1], gt]))
        self.seen += k
        self._process(final=False)

    def _process(self, final: bool) -> None:
        """Score frames [_done, hi): every frame whose right-hand neighbours are in (all at the end)."""
        lo, hi = self._done, self.seen if final else self.seen - self._R
        if hi <= lo:
            return
        a0, a1 = max(0, lo - self._L), min(self.seen, hi + self._R)  # with the neighbours
        bp, bg = self._buf
        P, G = bp[a0 - self._b0:a1 - self._b0], bg[a0 - self._b0:a1 - self._b0]
        k0, k1 = lo - a0, hi - a0
        p, g = P[k0:k1], G[k0:k1]
        n = hi - lo
        from .evaluators import face_boxes
        from .image import psnr_per_frame, ssim

        with torch.no_grad():
            if "psnr" in self.groups:
                self._sum("psnr", float(psnr_per_frame(p, g).double().sum()))
            if "ssim" in self.groups:
                self._sum("ssim", ssim(p, g) * n)
            if self.lpips is not None:
                self._sum(self.lpips.key, self.lpips(p, g) * n)
                if self.lms is not None:
                    self._sum(self.lpips.face_key, self.lpips.face(p, g, face_boxes(self.lms[lo:hi])) * n)
            lms = self.lms[a0:a1] if self.lms is not None else None
            if self.landmark is not None:
                lm = self.landmark
                boxes = face_boxes(lms, scale=lm.config.box_scale)
                self._lm[0].append(lm.predict(P, boxes)[k0:k1])  # one detector on both (LMD convention)
                self._lm[1].append(lm.predict(G, boxes)[k0:k1])
            for ex in self.extractors:
                scale = getattr(getattr(ex, "config", None), "box_scale", None) or getattr(ex, "box_scale", 1.3)
                b = face_boxes(lms, scale=scale)
                a, c = self._ex.setdefault(f"efid_{ex.name}", ([], []))
                a.append(torch.as_tensor(ex.extract(P, b))[k0:k1])
                c.append(torch.as_tensor(ex.extract(G, b))[k0:k1])
            if self.emotion is not None:
                c = self.emotion
                self._logits.append(c.logits(P, face_boxes(lms, scale=c.config.box_scale))[k0:k1])
            if self.sync is not None:
                self._sync_chunk(p, lo, hi)
        self._done = hi
        keep = max(self._b0, hi - self._L)
        self._buf = (bp[keep - self._b0:], bg[keep - self._b0:])
        self._b0 = keep

    def _sync_chunk(self, p: torch.Tensor, lo: int, hi: int) -> None:
        from .syncnet import WINDOW
        from .syncnet_scoring import _lip_windows, _model_device, crop_one, to_model_pixels

        if self._win >= self._nw:
            return  # every window embedded (audio shorter than the video)
        net = self.sync
        size = int(net.config.lip_size)
        crops = torch.stack([crop_one(p[i], self._sync_boxes[lo + i], size=size) for i in range(hi - lo)])
        pix = to_model_pixels(crops, size)
        pix = pix if self._pix is None else torch.cat([self._pix, pix])  # frames [_pix0, hi)
        end = min(self._nw, hi - WINDOW + 1)  # windows v..v+4 complete
        dev = _model_device(net)
        was = net.training
        net.eval()
        try:
            for i in range(self._win, end, 64):
                starts = torch.arange(i, min(end, i + 64)) - self._pix0
                self._V.append(net.forward_lip(_lip_windows(pix, starts).to(dev)).float().cpu())
        finally:
            net.train(was)
        self._win = max(self._win, end)
        cut = self._win - self._pix0  # keep the crops of frames [_win, hi): the next windows start there
        self._pix, self._pix0 = pix[cut:], self._win

    def _sum(self, key: str, value: float) -> None:
        self._sums[key] = self._sums.get(key, 0.0) + float(value)

    # ------------------------------------------------------------------ result
    def close(self) -> dict:
        """Score the last frames, accumulate the clip into the suite and return its metrics (bare keys)."""
        if self.closed:
            raise RuntimeError(f"{self.name}: close() called twice")
        if self.seen == 0:
            raise ValueError(f"{self.name}: no frames were added to the clip")
        if self.num_frames is not None and self.seen != self.num_frames:
            raise ValueError(f"{self.name}: {self.seen} frames were added but the landmarks / au45 / num_frames of "
                             f"the clip say N={self.num_frames}")
        self._process(final=True)
        self.closed = True
        N = self.seen
        rec: dict[str, float] = {k: v / N for k, v in self._sums.items()}
        if self.landmark is not None:
            from .landmarks import blink_error, ear_to_au45, eye_aspect_ratio, landmark_expression, lmd

            pl, gl = torch.cat(self._lm[0]), torch.cat(self._lm[1])
            if "lmd" in self.groups:
                rec["lmd"], rec["f_lmd"] = lmd(pl, gl, region="mouth"), lmd(pl, gl, region="face")
            if "blink" in self.groups:
                ear_ref = eye_aspect_ratio(gl)
                open_ear = float(torch.quantile(ear_ref.double(), 0.9))
                au_gt = self.au45 if self.au45 is not None else ear_to_au45(ear_ref, open_ear=open_ear)
                rec["blink_err"] = blink_error(ear_to_au45(eye_aspect_ratio(pl), open_ear=open_ear), au_gt)
            if "efid" in self.groups:
                self.suite._feat("efid_landmark", landmark_expression(pl), landmark_expression(gl))
        for key, (a, c) in self._ex.items():
            self.suite._feat(key, torch.cat(a), torch.cat(c))
        if self.emotion is not None:
            lg = torch.cat(self._logits)
            rec["acc_emo"] = float((lg.argmax(-1) == self.label).float().mean())
            rec["acc_emo_clip"] = float(lg.softmax(-1).mean(0).argmax() == self.label)
        if self.sync is not None:
            rec.update(self._sync_result().as_dict())
        suite = self.suite
        for g, why in self._skipped.items():
            suite._skip(g, why)
        for k, v in rec.items():
            suite._add(k, v, 1.0 if k.startswith("sync_") or k == "acc_emo_clip" else float(N))
        suite.clips[self.name] = {"frames": N, **rec}
        suite.num_frames += N
        return rec

    def _sync_result(self):
        from .syncnet_scoring import _mfcc_windows, _model_device, scores_from_embeddings

        net = self.sync
        dev = _model_device(net)
        A = []
        was = net.training
        net.eval()
        try:
            with torch.no_grad():
                for i in range(0, self._nw, 64):
                    starts = torch.arange(i, min(self._nw, i + 64))
                    A.append(net.forward_aud(_mfcc_windows(self._mfcc, starts).to(dev)).float().cpu())
        finally:
            net.train(was)
        return scores_from_embeddings(torch.cat(self._V), torch.cat(A), self.suite.vshift)


def finite_or_none(v):
    """JSON-friendly: floats stay (inf included: identical videos have PSNR = inf), NaN → None."""
    return None if isinstance(v, float) and math.isnan(v) else v
