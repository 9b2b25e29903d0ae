"""Landmark-based measures on iBUG-68 landmarks: eye aspect ratio / AU45, pose normalisation,
expression coefficients on a fixed basis, LMD / F-LMD and blink error (DESIGN §8).

Conventions
-----------
* Landmarks follow the iBUG 68-point scheme (0-16 jaw, 17-21 / 22-26 brows, 27-35 nose, 36-41 /
  42-47 eyes, 48-59 outer lips, 60-67 inner lips), image coordinates x = column, y = row (y down),
  in pixels unless stated otherwise. 3-D landmarks ``[..., 68, 3]`` are accepted where documented and
  their last coordinate (depth) is ignored.
* Every function accepts a ``numpy.ndarray`` or a ``torch.Tensor`` and returns the same kind (same dtype
  for floating inputs, float32 for integer inputs; torch results stay on the input's device and are
  differentiable). Internally everything is computed in float64.
* Nothing here is fitted to data: :data:`TEMPLATE_68`, :data:`ALIGN_INDICES` and the expression basis
  (:data:`LANDMARK_EXPR_NAMES`) are fixed constants of this module.
"""
from __future__ import annotations

from typing import Union

import numpy as np
import torch

Array = Union[np.ndarray, torch.Tensor]

__all__ = [
    "TEMPLATE_68", "ALIGN_INDICES", "MOUTH_INDICES", "LANDMARK_EXPR_NAMES", "eye_aspect_ratio", "ear_to_au45",
    "normalize_landmarks", "landmark_expression", "lmd", "blink_error", "blink_count",
]

NUM_LANDMARKS = 68
MOUTH_INDICES = tuple(range(48, 68))
"""Mouth landmarks (outer + inner lip contour) used by LMD."""


def _make_template() -> np.ndarray:
    """A generic frontal face, hand-constructed (not the mean of any dataset).

    "Face units": origin between the eyes at eye level, x to the viewer's right, y down; eye centres at
    (±0.30, −0.10) (inter-ocular distance 0.6), nose tip region at y ≈ 0.3, mouth corners at
    (±0.20, 0.48), chin at (0, 0.76).
    """
    pts = []
    # 0-16 jaw contour from the viewer's left (subject's right) ear under the chin to the other ear
    a = np.linspace(-0.475 * np.pi, 0.475 * np.pi, 17)
    pts += list(zip(0.74 * np.sin(a), -0.02 + 0.78 * np.cos(a)))
    # 17-21 left brow (outer → inner), 22-26 right brow (inner → outer)
    for sx in (-1, 1):
        u = np.linspace(1, -1, 5) if sx < 0 else np.linspace(-1, 1, 5)
        pts += list(zip(sx * (0.31 + 0.19 * u), -0.28 - 0.05 * (1 - u**2)))
    # 27-30 nose bridge (top → tip), 31-35 nostrils (viewer's left → right)
    pts += [(0.0, y) for y in np.linspace(-0.12, 0.2, 4)]
    x = np.linspace(-0.1, 0.1, 5)
    pts += list(zip(x, 0.27 + 0.03 * (1 - (x / 0.1) ** 2)))
    # 36-41 left eye: outer corner, upper lid ×2, inner corner, lower lid ×2; 42-47 right eye: inner
    # corner, upper ×2, outer corner, lower ×2 (both start at the viewer's-left corner, clockwise)
    ang = np.arange(6) * np.pi / 3
    for sx in (-1, 1):
        pts += list(zip(sx * 0.30 - 0.11 * np.cos(ang), -0.10 - 0.05 * np.sin(ang)))
    # 48-59 outer lip contour (clockwise from the viewer's-left corner), 60-67 inner lip contour
    pts += [(-0.20, 0.48), (-0.13, 0.44), (-0.05, 0.42), (0.0, 0.43), (0.05, 0.42), (0.13, 0.44),
            (0.20, 0.48), (0.13, 0.53), (0.06, 0.56), (0.0, 0.565), (-0.06, 0.56), (-0.13, 0.53)]
    pts += [(-0.16, 0.48), (-0.07, 0.47), (0.0, 0.47), (0.07, 0.47),
            (0.16, 0.48), (0.07, 0.49), (0.0, 0.49), (-0.07, 0.49)]
    t = np.asarray(pts, dtype=np.float64)
    assert t.shape == (NUM_LANDMARKS, 2)
    return t


TEMPLATE_68: np.ndarray = _make_template()
"""float64 [68,2]: the fixed frontal reference face of :func:`normalize_landmarks` ("face units":
origin between the eyes, inter-ocular distance 0.6, y down). Read-only."""
TEMPLATE_68.setflags(write=False)

ALIGN_INDICES = (0, 1, 2, 14, 15, 16, *range(27, 36), 36, 39, 42, 45)
"""Landmarks that estimate the similarity transform of :func:`normalize_landmarks`: the upper jaw
contour (near the ears), the nose and the eye corners — points that expressions (jaw opening, smiles,
brow raises, blinks) barely move, so the alignment removes pose, not expression."""


# ------------------------------------------------------------------------------------------------
# array helpers
# ------------------------------------------------------------------------------------------------

def _to_torch(x: Array, name: str) -> tuple[torch.Tensor, dict]:
    """float64 tensor plus what is needed to convert a result back to the input's kind."""
    if isinstance(x, torch.Tensor):
        out_dtype = x.dtype if x.is_floating_point() else torch.float32
        return x.to(torch.float64), {"kind": "torch", "dtype": out_dtype}
    if isinstance(x, np.ndarray) or np.isscalar(x) or isinstance(x, (list, tuple)):
        a = np.asarray(x)
        if not (np.issubdtype(a.dtype, np.floating) or np.issubdtype(a.dtype, np.integer)):
            raise TypeError(f"{name}: expected a numeric array, got dtype {a.dtype}")
        out_dtype = a.dtype if np.issubdtype(a.dtype, np.floating) else np.dtype(np.float32)
        return torch.from_numpy(a.astype(np.float64)), {"kind": "numpy", "dtype": out_dtype}
    raise TypeError(f"{name}: expected a numpy array or a torch tensor, got {type(x).__name__}")


def _back(t: torch.Tensor, meta: dict) -> Array:
    if meta["kind"] == "torch":
        return t.to(meta["dtype"])
    return t.detach().cpu().numpy().astype(meta["dtype"])


def _check_lms(t: torch.Tensor, name: str, dims=(2, 3), min_ndim: int = 2) -> torch.Tensor:
    if t.ndim < min_ndim or t.shape[-2] != NUM_LANDMARKS or t.shape[-1] not in dims:
        want = " or ".join(str(d) for d in dims)
        raise ValueError(f"{name}: expected landmarks of shape [..., {NUM_LANDMARKS}, {want}] (iBUG-68), "
                         f"got {tuple(t.shape)}")
    if not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name}: landmarks contain NaN or Inf")
    return t[..., :2]


def _dist(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.linalg.vector_norm(a - b, dim=-1)


# ------------------------------------------------------------------------------------------------
# eyes / AU45
# ------------------------------------------------------------------------------------------------

def _ear(p: torch.Tensor) -> torch.Tensor:
    ears = []
    for o in (36, 42):  # p1..p6 = o..o+5: corner, upper, upper, corner, lower, lower
        num = _dist(p[..., o + 1, :], p[..., o + 5, :]) + _dist(p[..., o + 2, :], p[..., o + 4, :])
        den = 2.0 * _dist(p[..., o, :], p[..., o + 3, :]).clamp_min(1e-9)
        ears.append(num / den)
    return 0.5 * (ears[0] + ears[1])


def eye_aspect_ratio(lms: Array) -> Array:
    """Mean eye aspect ratio of both eyes (Soukupová & Čech, "Real-time eye blink detection using facial
    landmarks", CVWW 2016).

    Per eye with landmarks p1..p6 (iBUG 36-41 and 42-47): EAR = (|p2−p6| + |p3−p5|) / (2·|p1−p4|).
    Scale and in-plane-rotation invariant; ≈ 0.25–0.35 for open human eyes, → 0 when closed.

    Args:
        lms: [..., 68, 2] (or [..., 68, 3]; depth ignored) landmarks.
    Returns:
        [...] mean EAR of the two eyes, same kind as ``lms``.
    """
    t, meta = _to_torch(lms, "lms")
    return _back(_ear(_check_lms(t, "lms")), meta)


def ear_to_au45(ear: Array, *, open_ear: float | None = None, open_percentile: float = 90.0) -> Array:
    """Map per-frame EAR to an OpenFace-like AU45_r ("blink") intensity on 0..5 (0 = open, 5 = closed).

    AU45 = 5 · clip(1 − EAR / EAR_open, 0, 1): linear in the relative eyelid closure, so a fully open
    eye (EAR ≥ EAR_open) gives 0 and a fully closed one (EAR = 0) gives 5. This is the rule the
    synthetic generator uses to write ``au.csv`` (there EAR is proportional to the ``eye_open``
    coefficient), so on synthetic data it reproduces the ground-truth AU45 when ``open_ear`` is the
    open-eye EAR. For real data it is a landmark proxy of OpenFace's AU45_r, not OpenFace itself.

    Args:
        ear: [N] per-frame eye aspect ratio of one clip (:func:`eye_aspect_ratio`).
        open_ear: the open-eye EAR of the person; default: the ``open_percentile``-th percentile of
            ``ear`` (blinks are rare, so a high percentile of the clip is the open-eye level).
        open_percentile: percentile used when ``open_ear`` is None (0-100).
    Returns:
        [N] AU45 intensities in [0, 5], same kind as ``ear``.
    """
    t, meta = _to_torch(ear, "ear")
    if t.ndim != 1 or t.numel() == 0:
        raise ValueError(f"ear: expected a non-empty 1-D array [N] of per-frame EAR, got shape {tuple(t.shape)}")
    if open_ear is None:
        if not 0.0 <= open_percentile <= 100.0:
            raise ValueError(f"open_percentile must be in [0, 100], got {open_percentile}")
        ref = torch.quantile(t.detach(), open_percentile / 100.0)
    else:
        ref = torch.as_tensor(float(open_ear), dtype=torch.float64)
    if not float(ref) > 0:
        raise ValueError(f"open-eye EAR must be > 0, got {float(ref)} (open_ear={open_ear})")
    return _back(5.0 * (1.0 - t / ref).clamp(0.0, 1.0), meta)


def blink_error(pred_au45: Array, gt_au45: Array) -> float:
    """Blink error: mean absolute error between predicted and ground-truth per-frame AU45_r intensities
    (OpenFace scale 0..5; both clipped to [0, 5] first), averaged over frames.

    Args:
        pred_au45, gt_au45: [N] (any shape, identical) AU45 intensities, e.g. from
            :func:`ear_to_au45` of landmarks on rendered frames and ``au.csv`` of the ground truth.
    """
    p, _ = _to_torch(pred_au45, "pred_au45")
    g, _ = _to_torch(gt_au45, "gt_au45")
    if p.shape != g.shape or p.numel() == 0:
        raise ValueError(f"blink_error: pred_au45 {tuple(p.shape)} and gt_au45 {tuple(g.shape)} must have the "
                         "same non-empty shape")
    return float((p.clamp(0, 5) - g.clamp(0, 5)).abs().mean())


def blink_count(au45: Array, *, threshold: float = 2.5, min_gap: int = 3) -> int:
    """Number of blinks in a clip: onsets where AU45 rises to ≥ ``threshold`` (half-closed on the 0..5
    scale), counting an onset only if the previous closed frame is more than ``min_gap`` frames away.

    Args:
        au45: [N] per-frame AU45 intensities.
    """
    t, _ = _to_torch(au45, "au45")
    if t.ndim != 1:
        raise ValueError(f"au45: expected [N], got shape {tuple(t.shape)}")
    closed = (t >= threshold).tolist()
    n, last = 0, -10**9
    for i, c in enumerate(closed):
        if c:
            if i - last > min_gap:
                n += 1
            last = i
    return n


# ------------------------------------------------------------------------------------------------
# pose normalisation
# ------------------------------------------------------------------------------------------------

def _align(p: torch.Tensor, idx=ALIGN_INDICES) -> torch.Tensor:
    """Similarity-Procrustes alignment of [..., 68, 2] onto TEMPLATE_68 (complex closed form, no
    reflection): a* = Σ conj(z̃)·w̃ / Σ |z̃|², aligned = a*·(z − z̄) + w̄ (z̃, w̃ centred anchor points)."""
    tmpl = torch.from_numpy(np.array(TEMPLATE_68)).to(dtype=p.dtype, device=p.device)
    sel = list(idx)
    z = torch.complex(p[..., 0], p[..., 1])  # [..., 68]
    w = torch.complex(tmpl[:, 0], tmpl[:, 1])[sel]
    zs = z[..., sel]
    zm, wm = zs.mean(-1, keepdim=True), w.mean()
    zc, wc = zs - zm, w - wm
    den = (zc.abs() ** 2).sum(-1, keepdim=True)
    if bool((den <= 1e-18).any()):
        raise ValueError("normalize_landmarks: degenerate landmarks (all alignment points coincide)")
    a = (zc.conj() * wc).sum(-1, keepdim=True) / den
    out = a * (z - zm) + wm
    return torch.stack([out.real, out.imag], -1)


def normalize_landmarks(lms: Array) -> Array:
    """Remove translation, scale and in-plane rotation: similarity-Procrustes alignment onto
    :data:`TEMPLATE_68`.

    The transform (uniform scale, rotation, translation; no reflection) is the least-squares fit of
    the points :data:`ALIGN_INDICES` onto the template, computed per frame, and is applied to all 68
    points, so expression-driven motion (mouth, brows, eyelids) survives normalisation. Out-of-plane
    rotation (yaw/pitch) cannot be removed from 2-D landmarks and remains.

    Args:
        lms: [..., 68, 2] or [..., 68, 3] landmarks (pixels; depth ignored).
    Returns:
        [..., 68, 2] landmarks in template "face units", same kind as ``lms``.
    """
    t, meta = _to_torch(lms, "lms")
    return _back(_align(_check_lms(t, "lms")), meta)


# ------------------------------------------------------------------------------------------------
# expression coefficients on a fixed geometric basis
# ------------------------------------------------------------------------------------------------

LANDMARK_EXPR_NAMES = (
    "mouth_open", "jaw_drop", "mouth_width", "mouth_aspect", "lip_corner_raise", "lip_corner_asym",
    "upper_lip_raise", "brow_raise", "brow_inner_raise", "brow_furrow", "eye_open",
)
"""Names of the K = 11 coefficients of :func:`landmark_expression`, in column order."""


def _expr(p: torch.Tensor) -> torch.Tensor:
    y = p[..., 1]
    le = 0.5 * (p[..., 36, :] + p[..., 39, :])  # eye centres from the corners (blink-invariant)
    re = 0.5 * (p[..., 42, :] + p[..., 45, :])
    iod = _dist(le, re).clamp_min(1e-9)
    eye_y = 0.5 * (le[..., 1] + re[..., 1])

    def my(ix):
        return y[..., list(ix)].mean(-1)

    mouth_open = (my((65, 66, 67)) - my((61, 62, 63))) / iod
    jaw_drop = (y[..., 8] - y[..., 33]) / iod
    width = _dist(p[..., 48, :], p[..., 54, :]).clamp_min(1e-9)
    mouth_width = width / iod
    mouth_aspect = (y[..., 57] - y[..., 51]) / width
    lip_mid = 0.25 * (y[..., 51] + y[..., 57] + y[..., 62] + y[..., 66])
    lip_corner_raise = (lip_mid - my((48, 54, 60, 64))) / iod
    lip_corner_asym = (y[..., 48] - y[..., 54]) / iod
    upper_lip_raise = -(y[..., 51] - y[..., 33]) / iod
    brow_raise = (eye_y - my(range(17, 27))) / iod
    brow_inner_raise = (my((17, 18, 25, 26)) - my((19, 20, 21, 22, 23, 24))) / iod
    brow_furrow = -_dist(p[..., 21, :], p[..., 22, :]) / iod
    eye_open = _ear(p)
    out = torch.stack([mouth_open, jaw_drop, mouth_width, mouth_aspect, lip_corner_raise, lip_corner_asym,
                       upper_lip_raise, brow_raise, brow_inner_raise, brow_furrow, eye_open], -1)
    return out


def landmark_expression(lms: Array) -> Array:
    """Pose-normalised expression coefficients of iBUG-68 landmarks on a fixed, hand-defined basis.

    The landmarks are first aligned with :func:`normalize_landmarks` (so "vertical" is the face's own
    vertical); then K = 11 scale-free geometric measures are taken, each divided by the inter-ocular
    distance IOD (between the eye centres, each the midpoint of its two corners) unless stated:

    ==================  ===========================================================================
    mouth_open          mean vertical gap of the inner lips (65,66,67 below 61,62,63) / IOD
    jaw_drop            vertical nose-tip (33) → chin (8) distance / IOD
    mouth_width         mouth-corner distance |48−54| / IOD
    mouth_aspect        outer lip height (51→57) / mouth width (rounding / opening shape)
    lip_corner_raise    height of the lip corners (48,54,60,64) above the lip centre line / IOD (smile +)
    lip_corner_asym     right outer corner (54) above the left one (48) / IOD (smirk)
    upper_lip_raise     upper-lip top (51) to nose tip (33) distance, negated / IOD
    brow_raise          mean brow height (17-26) above the eye line / IOD
    brow_inner_raise    inner brow (19-24) above outer brow (17,18,25,26) / IOD
    brow_furrow         −(inner brow-end distance |21−22|) / IOD (brows drawn together → larger)
    eye_open            mean eye aspect ratio (:func:`eye_aspect_ratio`)
    ==================  ===========================================================================

    Deterministic, nothing is fitted at run time. The coefficients are not zero-centred (a neutral face
    has a positive jaw_drop, mouth_width, ...): Fréchet distances only depend on differences.

    Args:
        lms: [N, 68, 2|3] (or any [..., 68, 2|3]) landmarks in pixels.
    Returns:
        [N, K] (or [..., K]) coefficients, columns named by :data:`LANDMARK_EXPR_NAMES`; same kind as
        ``lms``.
    """
    t, meta = _to_torch(lms, "lms")
    return _back(_expr(_align(_check_lms(t, "lms"))), meta)


# ------------------------------------------------------------------------------------------------
# LMD
# ------------------------------------------------------------------------------------------------

def lmd(pred: Array, gt: Array, *, region: str = "mouth") -> float:
    """Landmark distance (DESIGN §8): mean L2 distance in pixels between corresponding landmarks after
    mean-centring each set (per frame, over the points of the region), averaged over points and frames.

    ``region="mouth"`` → LMD on the mouth points 48–67; ``region="face"`` → F-LMD on all 68 points.
    Landmarks of rendered frames and of the ground truth must be in the same pixel frame (same
    resolution).

    Args:
        pred, gt: [N, 68, 2] (or [68, 2]) landmarks in pixels.
    Returns:
        the mean distance (float, pixels).
    """
    if region not in ("mouth", "face"):
        raise ValueError(f"lmd: region must be 'mouth' (LMD, points 48-67) or 'face' (F-LMD), got {region!r}")
    p, _ = _to_torch(pred, "pred")
    g, _ = _to_torch(gt, "gt")
    p, g = _check_lms(p, "pred", dims=(2,)), _check_lms(g, "gt", dims=(2,))
    if p.shape != g.shape:
        raise ValueError(f"lmd: pred {tuple(p.shape)} and gt {tuple(g.shape)} must have the same shape")
    if region == "mouth":
        p, g = p[..., list(MOUTH_INDICES), :], g[..., list(MOUTH_INDICES), :]
    p = p - p.mean(-2, keepdim=True)
    g = g - g.mean(-2, keepdim=True)
    return float(_dist(p, g).mean())
