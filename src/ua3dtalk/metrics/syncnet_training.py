"""Training a SyncNet evaluator on a dataset's ground truth video + audio (DESIGN §8).

:class:`SyncClip` (one clip: frames, audio, landmarks), :func:`clips_from_dataset` (the clips of a
dataset in the DESIGN §5 layout) and :func:`train_syncnet`. The network is :class:`~.syncnet.SyncNet`;
crops and windows come from :mod:`.syncnet_scoring`, so training sees what the metric sees.

Training (:func:`train_syncnet`)
--------------------------------
The reference network was trained on LRS2/VoxCeleb. Without those weights, :func:`train_syncnet`
trains the same architecture on ground-truth video + audio. Default objective ``"multiway"`` (the
multi-way matching of SyncNet v2, Chung et al., "Perfect match", ICASSP 2019, extended with in-batch
negatives): for each 5-frame video window the logits are the *negative Euclidean distances* to a set
of audio windows — the in-sync window, windows of the same clip shifted by ``min_shift..max_shift``
frames, and the windows of every other batch element (other clips or other times) — and the loss is
the cross-entropy of picking the in-sync window. Audio windows of the same clip closer than
``min_shift`` frames are excluded (they are nearly in sync). The distance is the quantity the metric
uses, so trained distances are directly Sync-D/Sync-C. ``loss="contrastive"`` is the original
SyncNet objective (Chung & Zisserman 2016): ``y·d² + (1−y)·max(margin − d, 0)²`` over in-sync
(``y=1``) and shifted / other-clip (``y=0``) pairs.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Optional, Union

import numpy as np
import torch
import torch.nn.functional as F

from .mfcc import MFCC_PER_VIDEO_FRAME, SAMPLE_RATE, syncnet_mfcc
from .syncnet import AUDIO_WINDOW, SAMPLES_PER_FRAME, WINDOW, SyncNet, SyncNetConfig, save_syncnet
from .syncnet_scoring import (
    _as_frames,
    _audio_16k,
    _lip_windows,
    _mfcc_windows,
    crop_one,
    sync_boxes,
    to_model_pixels,
)

# --------------------------------------------------------------------------------------------------
# training on ground truth
# --------------------------------------------------------------------------------------------------


@dataclass
class SyncClip:
    """One clip for :func:`train_syncnet`.

    frames     a loader ``frames(i) → [3,H,W]`` RGB in [0,1] for i in 0..N-1, or a tensor ``[N,3,H,W]``
    audio      mono waveform ``[L]`` (float in [-1,1]) at ``sr``, starting at frame 0
    landmarks  ``[N,68,2]`` (x, y) pixels: the face box of every frame
    """

    frames: Union[Callable[[int], torch.Tensor], torch.Tensor]
    audio: np.ndarray
    landmarks: np.ndarray
    sr: int = SAMPLE_RATE
    name: str = ""

    @property
    def num_frames(self) -> int:
        return int(len(self.landmarks))

    def load_frames(self) -> torch.Tensor:
        """All frames ``[N,3,H,W]``."""
        if isinstance(self.frames, (torch.Tensor, np.ndarray)):
            return _as_frames(self.frames, f"frames of clip {self.name!r}")
        return torch.stack([self.frames(i) for i in range(self.num_frames)])


def clips_from_dataset(data, *, split: Optional[str] = None) -> list[SyncClip]:
    """:class:`SyncClip` s of a dataset in the DESIGN §5 layout: a path (regular or emotional root), a
    :class:`~ua3dtalk.data.clip.ClipInfo`, a list of them or an :class:`~ua3dtalk.data.formats.EmotionalData`.

    Frames are the training images (``gt_imgs`` when present, else ``ori_imgs``), landmarks
    ``ori_imgs/<i>.lms``, audio ``aud.wav`` from the first frame on. ``split`` ("train" / "val")
    keeps that split's frames, which must be consecutive (the default splits are). Raises
    :class:`~ua3dtalk.data.formats.DatasetError` naming the clip when it has no ``aud.wav`` or the
    frames are not consecutive.
    """
    from ..data.audio import load_wav
    from ..data.clip import iter_clips
    from ..data.formats import DatasetError, Problem, read_image
    from ..data.loading import load_dataset

    if isinstance(data, (str, Path)):
        data = load_dataset(data)
    out = []
    for clip in (list(data) if isinstance(data, (list, tuple)) else iter_clips(data)):
        pos = np.arange(len(clip)) if split is None else np.asarray(clip.splits.get(split, []))
        if len(pos) == 0:
            continue
        ids = clip.img_ids[pos]
        if not np.array_equal(ids, np.arange(ids[0], ids[0] + len(ids))):
            raise DatasetError([Problem(clip.root, f"SyncNet needs consecutive frames; the {split or 'all'} "
                                                   "frames of this clip have gaps in img_id")])
        if clip.wav_path is None:
            raise DatasetError([Problem(clip.root / "aud.wav", "missing audio file (SyncNet needs aud.wav)")])
        wav = load_wav(clip.wav_path)
        first = int(ids[0]) * SAMPLES_PER_FRAME
        wav = wav[first:first + len(ids) * SAMPLES_PER_FRAME]
        lms = np.stack([clip.landmarks(int(p)) for p in pos])
        out.append(SyncClip(frames=lambda i, c=clip, p=pos: read_image(c.image_path(int(p[i]))), audio=wav,
                            landmarks=lms, name=f"{clip.clip_id}" + (f":{split}" if split else "")))
    return out


def _as_sync_clip(c, i: int) -> SyncClip:
    if isinstance(c, SyncClip):
        return c
    if isinstance(c, (tuple, list)) and len(c) in (3, 4):
        return SyncClip(c[0], c[1], c[2], *(c[3:] or ()), name=f"clip{i}")
    raise TypeError(f"clip {i}: expected a SyncClip or a tuple (frames, audio, landmarks[, sr]), "
                    f"got {type(c).__name__}")


@dataclass
class _Prepared:
    name: str
    pix: torch.Tensor  # uint8 [N,3,S,S] BGR
    mfcc: torch.Tensor  # float [13,T]
    windows: int  # valid starts 0..windows-1


def _prepare(clip: SyncClip, size: int, crop_scale: float) -> _Prepared:
    """Crop (frame by frame: a long clip never sits in memory at full resolution) and compute MFCCs."""
    boxes = sync_boxes(clip.landmarks)
    pix = torch.empty(clip.num_frames, 3, size, size, dtype=torch.uint8)
    tensor = isinstance(clip.frames, (torch.Tensor, np.ndarray))
    frames = clip.load_frames() if tensor else None
    for i in range(clip.num_frames):
        f = frames[i] if tensor else _as_frames(clip.frames(i)[None], f"frame {i} of clip {clip.name!r}")[0]
        crop = crop_one(f, boxes[i], crop_scale=crop_scale, size=size)
        pix[i] = to_model_pixels(crop[None], size)[0].round().clamp(0, 255).to(torch.uint8)
    wav = _audio_16k(clip.audio, clip.sr)
    mfcc = torch.from_numpy(syncnet_mfcc(wav))
    w = min(pix.shape[0] - WINDOW + 1, (mfcc.shape[1] - AUDIO_WINDOW) // MFCC_PER_VIDEO_FRAME + 1)
    return _Prepared(clip.name, pix, mfcc, int(w))


def _augment_lip(x: torch.Tensor, g: torch.Generator, shift: int) -> torch.Tensor:
    """Per-window photometric jitter, horizontal flip and a small translation (the same for the 5
    frames of a window). ``x [B,3,5,S,S]`` float 0..255."""
    B = x.shape[0]
    gain = 1.0 + 0.2 * (torch.rand(B, 1, 1, 1, 1, generator=g) - 0.5)
    bias = 20.0 * (torch.rand(B, 3, 1, 1, 1, generator=g) - 0.5)
    x = (x * gain + bias).clamp(0, 255)
    flip = torch.rand(B, generator=g) < 0.5
    x = torch.where(flip[:, None, None, None, None], x.flip(-1), x)
    if shift > 0:
        S = x.shape[-1]
        xp = F.pad(x.flatten(1, 2), (shift, shift, shift, shift), mode="replicate").view(B, 3, WINDOW, S + 2 * shift,
                                                                                         S + 2 * shift)
        dy = torch.randint(0, 2 * shift + 1, (B,), generator=g)
        dx = torch.randint(0, 2 * shift + 1, (B,), generator=g)
        x = torch.stack([xp[b, :, :, dy[b]:dy[b] + S, dx[b]:dx[b] + S] for b in range(B)])
    return x


def train_syncnet(clips: Iterable, cfg: Optional[SyncNetConfig] = None, *, steps: int, batch_size: int,
                  out: Union[str, Path, None] = None, seed: int = 0, progress: bool = True, lr: float = 1e-3,
                  loss: str = "multiway", negatives: int = 8, min_shift: int = 2, max_shift: int = 15,
                  margin: float = 10.0, crop_scale: float = 0.4, augment: bool = True) -> SyncNet:
    """Train a :class:`SyncNet` (shape ``cfg``, default :meth:`SyncNetConfig.small`) on ground truth.

    ``clips``: :class:`SyncClip` s (or tuples ``(frames, audio, landmarks[, sr])``), e.g. from
    :func:`clips_from_dataset`; frames are cut with :func:`crop_for_sync` once, up front. Each step
    samples ``batch_size`` in-sync (video window, audio window) pairs and, per pair, ``negatives``
    audio windows of the same clip shifted by ``min_shift..max_shift`` frames; ``loss`` is
    ``"multiway"`` (cross-entropy over negative distances, with the other pairs' audio as extra
    negatives) or ``"contrastive"`` (``margin``), see the module docstring. Adam(``lr``) with a cosine
    schedule; photometric / flip / translation augmentation of the crops and a random gain (a shift of
    the energy coefficient) of the audio when ``augment``. Shows a tqdm bar (``progress``). Returns the
    model in eval mode; when ``out`` is given it is also written there with :func:`save_syncnet`
    (the metadata records the training settings, final loss / accuracy and time).
    """
    from tqdm.auto import tqdm

    cfg = cfg or SyncNetConfig.small()
    if loss not in ("multiway", "contrastive"):
        raise ValueError(f"loss must be 'multiway' or 'contrastive', got {loss!r}")
    if steps < 1 or batch_size < 2:
        raise ValueError(f"steps must be ≥ 1 and batch_size ≥ 2, got steps={steps}, batch_size={batch_size}")
    if not 1 <= min_shift <= max_shift:
        raise ValueError(f"need 1 ≤ min_shift ≤ max_shift, got {min_shift}, {max_shift}")
    clips = [_as_sync_clip(c, i) for i, c in enumerate(clips)]
    t0 = time.time()
    prep = [_prepare(c, cfg.lip_size, crop_scale) for c in tqdm(clips, desc="syncnet: crops + mfcc", unit="clip",
                                                                 disable=not progress, leave=False)]
    prep = [p for p in prep if p.windows > min_shift]
    if not prep:
        raise ValueError(f"train_syncnet: no clip is long enough (need more than {WINDOW + min_shift} frames "
                         "with audio)")
    g = torch.Generator().manual_seed(int(seed))
    torch.manual_seed(int(seed))
    model = SyncNet(cfg)
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    warm = max(1, steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warm) * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))
    counts = torch.tensor([p.windows for p in prep], dtype=torch.float64)
    shift = max(1, cfg.lip_size // 32) if augment else 0
    K = int(negatives)
    hist: list[tuple[float, float]] = []
    bar = tqdm(range(steps), desc="syncnet: train", unit="step", disable=not progress)
    for step in bar:
        ci = torch.multinomial(counts, batch_size, replacement=True, generator=g)
        v = torch.stack([torch.randint(0, prep[c].windows, (), generator=g) for c in ci.tolist()])
        # audio candidates: column 0 in sync, columns 1..K shifted by min_shift..max_shift (valid only)
        cand = torch.empty(batch_size, 1 + K, dtype=torch.long)
        cand[:, 0] = v
        for b, c in enumerate(ci.tolist()):
            n = prep[c].windows
            vb = int(v[b])
            ok = [d for d in range(-max_shift, max_shift + 1)
                  if abs(d) >= min_shift and 0 <= vb + d < n]
            pick = torch.randint(0, len(ok), (K,), generator=g)
            cand[b, 1:] = vb + torch.tensor(ok)[pick]
        lip = torch.stack([_lip_windows(prep[c].pix, v[b:b + 1])[0] for b, c in enumerate(ci.tolist())]).float()
        aud = torch.stack([_mfcc_windows(prep[c].mfcc, cand[b]) for b, c in enumerate(ci.tolist())])
        aud = aud.flatten(0, 1)  # [B*(1+K),1,13,20]
        if augment:
            lip = _augment_lip(lip, g, shift)
            aud = aud.clone()
            aud[:, 0, 0, :] += (torch.randn(aud.shape[0], 1, generator=g) * 0.5)
        V = model.forward_lip(lip)
        A = model.forward_aud(aud)
        if loss == "multiway":
            d = torch.cdist(V, A)  # [B, B*(1+K)]
            # candidate j of anchor b may be a negative unless it is a near-sync window of the same clip
            clip_of = ci[:, None].expand(-1, 1 + K).reshape(-1)
            start_of = cand.reshape(-1)
            same = (ci[:, None] == clip_of[None]) & ((v[:, None] - start_of[None]).abs() < min_shift)
            target = torch.arange(batch_size) * (1 + K)
            same[torch.arange(batch_size), target] = False
            logits = (-d).masked_fill(same, float("-inf"))
            L = F.cross_entropy(logits, target)
            acc = float((logits.argmax(1) == target).float().mean())
        else:
            d = (V[:, None, :] - A.view(batch_size, 1 + K, -1)).norm(dim=-1)  # [B,1+K]
            y = torch.zeros_like(d)
            y[:, 0] = 1
            L = (y * d.pow(2) + (1 - y) * (margin - d).clamp(min=0).pow(2)).mean()
            acc = float((d.argmin(1) == 0).float().mean())
        opt.zero_grad(set_to_none=True)
        L.backward()
        opt.step()
        sched.step()
        hist.append((float(L.detach()), acc))
        if progress and (step % 10 == 0 or step == steps - 1):
            tail = hist[-50:]
            bar.set_postfix(loss=f"{np.mean([h[0] for h in tail]):.3f}", acc=f"{np.mean([h[1] for h in tail]):.2f}")
    model.eval()
    tail = hist[-max(1, min(50, steps // 5)):]
    info = {"steps": int(steps), "batch_size": int(batch_size), "seed": int(seed), "lr": float(lr), "loss": loss,
            "negatives": K, "min_shift": int(min_shift), "max_shift": int(max_shift), "crop_scale": float(crop_scale),
            "augment": bool(augment), "clips": [p.name for p in prep],
            "final_loss": float(np.mean([h[0] for h in tail])), "final_acc": float(np.mean([h[1] for h in tail])),
            "seconds": round(time.time() - t0, 2)}
    model.training_info = info
    model.source = {"path": None, "format": "trained", "meta": {"training": info}}
    if out is not None:
        save_syncnet(model, out, meta={"training": info})
        model.source["path"] = str(out)
    return model


__all__ = ["SyncClip", "clips_from_dataset", "train_syncnet"]
