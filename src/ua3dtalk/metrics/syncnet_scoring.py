"""SyncNet v2 scoring: the Sync-C / Sync-D lip-sync metrics of one clip (DESIGN §8).

Holds the front end (:func:`crop_for_sync` face crops from 68-point landmarks, the lip stream's pixels,
audio at 16 kHz and the 5-frame / 20-MFCC-frame windows), :func:`embed_clip` (window embeddings) and
the metric itself (:func:`sync_scores`, :class:`SyncResult`). The network and its weights files are in
:mod:`.syncnet`, training in :mod:`.syncnet_training`.

Metric (the reference's ``SyncNetInstance.evaluate`` and ``calc_pdist``)
------------------------------------------------------------------------
Video at 25 fps, audio at 16 kHz. With ``L = min(N_frames, floor(N_samples / 640)) − 5`` windows,
window ``v`` pairs frames ``v..v+4`` with MFCC frames ``4v..4v+19``; both streams give embeddings
``V[v]``, ``A[v]``. For every offset index ``j = 0..2·vshift`` and window ``v`` the distance is
``d[v, j] = ‖V[v] − A[v + j − vshift]‖₂`` (``A`` zero-padded at both ends, as the reference does),
``D[j] = mean_v d[v, j]``. Then

* **Sync-D** (``dist``) = ``min_j D[j]`` — lower is better;
* **Sync-C** (``conf``) = ``median_j D[j] − min_j D[j]`` — higher is better;
* **offset** = ``vshift − argmin_j D[j]``: the audio whose content best matches video frame ``i`` is
  audio frame ``i − offset``. A positive offset means the audio is *ahead* of the video; audio delayed
  by ``k`` frames (sound of frame ``i`` heard at frame ``i + k``) gives ``offset = −k``. In-sync video
  gives 0 (the public model reports small offsets such as ±1 for well-synced real videos).

The numbers are comparable with published Sync-C/Sync-D only with the public ``syncnet_v2.model`` and
the reference's face crops (S3FD face track, ``crop_scale`` 0.4, 224²); :func:`crop_for_sync` makes
the same crop from 68-point landmarks. A project-trained network gives numbers on its own scale;
:func:`~.syncnet.load_syncnet` records which file produced them.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .mfcc import INT16_SCALE, MFCC_PER_VIDEO_FRAME, SAMPLE_RATE, syncnet_mfcc
from .syncnet import AUDIO_WINDOW, PAD_VALUE, SAMPLES_PER_FRAME, WINDOW, SyncNet

# --------------------------------------------------------------------------------------------------
# front end
# --------------------------------------------------------------------------------------------------


def _as_frames(frames, what: str = "frames") -> torch.Tensor:
    if isinstance(frames, np.ndarray):
        frames = torch.from_numpy(frames)
    if not isinstance(frames, torch.Tensor) or frames.dim() != 4 or frames.shape[1] != 3:
        shape = list(frames.shape) if hasattr(frames, "shape") else type(frames).__name__
        raise ValueError(f"{what} must be a tensor [N,3,H,W] (RGB in [0,1]), got {shape}")
    if frames.dtype == torch.uint8:
        frames = frames.float() / 255.0
    return frames.float()


def to_model_pixels(frames: torch.Tensor, size: int) -> torch.Tensor:
    """RGB frames ``[N,3,H,W]`` in [0,1] → the lip stream's pixels ``[N,3,size,size]``: bilinear resize
    (OpenCV ``INTER_LINEAR`` semantics: half-pixel centres, no antialiasing), BGR order, 0..255."""
    x = frames
    if tuple(x.shape[-2:]) != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=False)
    return x.flip(1) * 255.0


def crop_for_sync(frames, lms, *, crop_scale: float = 0.4, size: int = 224, smooth: int = 13,
                  pad_value: float = PAD_VALUE) -> torch.Tensor:
    """Cut SyncNet face crops from full frames given 68-point landmarks.

    ``frames``: ``[N,3,H,W]`` RGB in [0,1] (or uint8); ``lms``: ``[N,68,2]`` (x = column, y = row,
    pixels). Returns ``[N,3,size,size]`` RGB in [0,1].

    The crop is the reference's (``run_pipeline.crop_video``) with the landmarks' bounding box in place
    of the S3FD face box: half-size ``s = max(w, h)/2`` and centre of the box, both median-filtered
    over ``smooth`` frames (edges replicated); rows ``cy − s .. cy + s(1 + 2·crop_scale)``, columns
    ``cx ± s(1 + crop_scale)`` (a square reaching below the chin), frames padded with grey
    (``pad_value``) where the square leaves the image, then resized to ``size``. Rendered frames share
    the ground truth's cameras, so the ground-truth landmarks give their crops too.
    """
    x = _as_frames(frames)
    boxes = sync_boxes(lms, smooth=smooth)
    if boxes.shape[0] != x.shape[0]:
        raise ValueError(f"lms must be [N,68,2] with N = {x.shape[0]} frames, got {boxes.shape[0]} frames")
    out = torch.empty(x.shape[0], 3, size, size)
    for i in range(x.shape[0]):
        out[i] = crop_one(x[i], boxes[i], crop_scale=crop_scale, size=size, pad_value=pad_value)
    return out


def sync_boxes(lms, *, smooth: int = 13) -> np.ndarray:
    """Face boxes of :func:`crop_for_sync`: ``[N,3]`` = (half-size s, centre x, centre y) of the
    landmarks' bounding box, median-filtered over ``smooth`` frames (edges replicated)."""
    lm = np.asarray(lms.detach().cpu() if hasattr(lms, "detach") else lms, dtype=np.float64)
    if lm.ndim != 3 or lm.shape[2] != 2 or lm.shape[0] < 1:
        raise ValueError(f"lms must be [N,68,2] (x, y pixels), got {list(lm.shape)}")
    if not np.isfinite(lm).all():
        raise ValueError("lms contain NaN or Inf")
    lo, hi = lm.min(1), lm.max(1)
    s = np.maximum(hi[:, 0] - lo[:, 0], hi[:, 1] - lo[:, 1]) / 2.0
    cx, cy = (lo[:, 0] + hi[:, 0]) / 2.0, (lo[:, 1] + hi[:, 1]) / 2.0
    if smooth and smooth > 1 and len(s) > 1:
        from scipy.ndimage import median_filter

        s, cx, cy = (median_filter(a, size=int(smooth), mode="nearest") for a in (s, cx, cy))
    return np.stack([s, cx, cy], 1)


def crop_one(frame: torch.Tensor, box, *, crop_scale: float = 0.4, size: int = 224,
             pad_value: float = PAD_VALUE) -> torch.Tensor:
    """Crop one frame ``[3,H,W]`` with a box (s, cx, cy) of :func:`sync_boxes` → ``[3,size,size]``."""
    cs = float(crop_scale)
    bs = max(float(box[0]), 1.0)
    bsi = int(bs * (1 + 2 * cs))
    fr = F.pad(frame, (bsi, bsi, bsi, bsi), value=float(pad_value))
    my, mx = float(box[2]) + bsi, float(box[1]) + bsi
    face = fr[:, int(my - bs):int(my + bs * (1 + 2 * cs)), int(mx - bs * (1 + cs)):int(mx + bs * (1 + cs))]
    return F.interpolate(face[None], size=(size, size), mode="bilinear", align_corners=False, antialias=False)[0]


def _audio_16k(audio, sr: int) -> np.ndarray:
    if hasattr(audio, "detach"):
        audio = audio.detach().cpu().numpy()
    a = np.asarray(audio)
    if a.ndim != 1:
        raise ValueError(f"audio must be a mono 1-D waveform [L], got shape {list(a.shape)}")
    if np.issubdtype(a.dtype, np.integer):
        a = a.astype(np.float32) / INT16_SCALE
    if int(sr) != SAMPLE_RATE:
        from ..data.audio import resample

        a = resample(a, int(sr), SAMPLE_RATE)
    return a.astype(np.float32)


def _num_windows(num_frames: int, num_samples: int) -> int:
    """The reference's window count: min(frames, floor(samples/640)) − 5."""
    return min(int(num_frames), int(num_samples) // SAMPLES_PER_FRAME) - WINDOW


def _lip_windows(pix: torch.Tensor, starts: torch.Tensor) -> torch.Tensor:
    """``pix [N,3,S,S]`` → windows ``[B,3,5,S,S]`` starting at ``starts [B]``."""
    idx = starts[:, None] + torch.arange(WINDOW)[None]
    return pix[idx].permute(0, 2, 1, 3, 4)


def _mfcc_windows(mfcc: torch.Tensor, starts: torch.Tensor) -> torch.Tensor:
    """``mfcc [13,T]`` → windows ``[B,1,13,20]`` for video-frame starts ``starts [B]``."""
    idx = starts[:, None] * MFCC_PER_VIDEO_FRAME + torch.arange(AUDIO_WINDOW)[None]
    return mfcc[:, idx].permute(1, 0, 2)[:, None]


def _model_device(model) -> torch.device:
    try:
        return next(model.parameters()).device
    except (StopIteration, AttributeError):
        return torch.device("cpu")


@torch.no_grad()
def embed_clip(model: SyncNet, frames, audio, sr: int = SAMPLE_RATE, *, batch_size: int = 64
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """Lip and audio embeddings of every window of a clip, as the reference computes them.

    ``frames``: face crops ``[N,3,H,W]`` RGB in [0,1] at 25 fps (resized to ``model.config.lip_size``);
    ``audio``: mono waveform ``[L]`` (float in [-1,1] or int16) at ``sr``. Returns ``(V, A)``, each
    ``[W, embed_dim]`` with ``W = min(N, floor(L16k/640)) − 5`` (float32, CPU).
    """
    x = _as_frames(frames)
    wav = _audio_16k(audio, sr)
    n_frames = x.shape[0]
    if abs(n_frames - len(wav) / SAMPLES_PER_FRAME) > 1.0:
        warnings.warn(f"SyncNet: audio ({len(wav) / SAMPLE_RATE:.3f} s) and video ({n_frames / 25:.3f} s) lengths "
                      "differ; scoring the common part", stacklevel=3)
    nw = _num_windows(n_frames, len(wav))
    if nw < 1:
        raise ValueError(f"SyncNet needs at least {WINDOW + 1} frames (0.24 s) of video and audio, got "
                         f"{n_frames} frames and {len(wav)} samples")
    mfcc = torch.from_numpy(syncnet_mfcc(wav, SAMPLE_RATE))
    dev = _model_device(model)
    size = int(model.config.lip_size)
    was_training = getattr(model, "training", False)
    model.eval()
    V, A = [], []
    try:
        for i in range(0, nw, batch_size):
            j = min(nw, i + batch_size)
            pix = to_model_pixels(x[i:j + WINDOW - 1], size)
            starts = torch.arange(j - i)
            V.append(model.forward_lip(_lip_windows(pix, starts).to(dev)).float().cpu())
            A.append(model.forward_aud(_mfcc_windows(mfcc, starts + i).to(dev)).float().cpu())
    finally:
        if was_training:
            model.train()
    return torch.cat(V), torch.cat(A)


@dataclass
class SyncResult:
    """Sync scores of one clip (see the module docstring).

    offset  int, ``vshift − argmin D``; > 0: audio ahead of the video, < 0: audio behind
    conf    Sync-C = median(D) − min(D) (higher is better)
    dist    Sync-D = min(D) (lower is better)
    dists   float [2·vshift+1]: D[j], mean distance at offset ``vshift − j`` (the reference's order)
    num_windows  number of 5-frame windows averaged
    """

    offset: int
    conf: float
    dist: float
    dists: np.ndarray
    num_windows: int = 0

    @property
    def vshift(self) -> int:
        return (len(self.dists) - 1) // 2

    @property
    def offsets(self) -> np.ndarray:
        """Offset of each entry of :attr:`dists`."""
        return self.vshift - np.arange(len(self.dists))

    def as_dict(self) -> dict:
        return {"sync_c": float(self.conf), "sync_d": float(self.dist), "sync_offset": int(self.offset)}


def offset_distances(V: torch.Tensor, A: torch.Tensor, vshift: int = 15) -> torch.Tensor:
    """``d [W, 2·vshift+1]``: ``d[v,j] = ‖V[v] − A[v+j−vshift]‖₂`` with ``A`` zero-padded (reference
    ``calc_pdist``, including ``pairwise_distance``'s eps)."""
    W = V.shape[0]
    Ap = F.pad(A, (0, 0, vshift, vshift))
    idx = torch.arange(W)[:, None] + torch.arange(2 * vshift + 1)[None]
    return F.pairwise_distance(V[:, None, :].expand(-1, idx.shape[1], -1), Ap[idx], p=2.0, eps=1e-6)


def scores_from_embeddings(V: torch.Tensor, A: torch.Tensor, vshift: int = 15) -> SyncResult:
    """:class:`SyncResult` from the window embeddings of :func:`embed_clip`."""
    d = offset_distances(V.double(), A.double(), vshift)
    D = d.mean(0)
    minval, minidx = torch.min(D, 0)
    med = torch.median(D)  # torch.median: lower median, as the reference
    return SyncResult(offset=int(vshift - int(minidx)), conf=float(med - minval), dist=float(minval),
                      dists=D.float().numpy(), num_windows=int(V.shape[0]))


def sync_scores(model: SyncNet, frames, audio, sr: int = SAMPLE_RATE, *, vshift: int = 15,
                batch_size: int = 64) -> SyncResult:
    """Sync-C, Sync-D and the audio-video offset of one clip.

    ``frames``: face crops ``[N,3,H,W]`` RGB in [0,1] at 25 fps (e.g. from :func:`crop_for_sync`;
    resized to ``model.config.lip_size`` inside); ``audio``: mono waveform ``[L]`` at ``sr`` (float in
    [-1, 1] or int16). ``vshift``: offsets searched, −vshift..vshift frames (15 as in the papers).
    """
    if int(vshift) < 1:
        raise ValueError(f"vshift must be ≥ 1, got {vshift}")
    V, A = embed_clip(model, frames, audio, sr, batch_size=batch_size)
    return scores_from_embeddings(V, A, int(vshift))


__all__ = [
    "SyncResult", "crop_for_sync", "sync_boxes", "crop_one", "embed_clip", "sync_scores", "scores_from_embeddings",
    "offset_distances", "to_model_pixels",
]
