"""Head pose from 2-D landmarks: per-frame cameras fitted to a 3-D landmark template.

Model (DESIGN §7 camera conventions): the head is fixed in the world (world = the template's head
frame, :mod:`ua3dtalk.preprocess.template`) and the camera moves. Frame i has a world→camera
rigid transform ``[R_i | t_i]`` (OpenCV axes) and all frames share one pinhole ``K`` with focal
length f and principal point at the image centre (W/2, H/2); a template point X projects to
``π(R_i X + t_i)`` with ``π(p) = (f p_x/p_z + c_x, f p_y/p_z + c_y)``.

Fit (:func:`fit_clip`):

1. **Initialisation** per frame, closed form: a scaled-orthographic camera fitted by weighted
   least squares (2×3 affine map of the centred template onto the centred landmarks, projected to
   the nearest scaled rotation), depth t_z = f / scale.
2. **Refinement** per frame (batched over frames): Levenberg–Marquardt on the perspective
   reprojection error with analytic Jacobians (rotation updated multiplicatively, R ← exp([δ]×) R),
   weighted by :data:`~ua3dtalk.preprocess.template.POSE_WEIGHTS` and robust (Huber, IRLS).
3. **Focal length** searched over the clip: the total reprojection error on up to ``search_frames``
   frames for f on a log grid from 1× to 4× the image size (≈ 36–144 mm full-frame equivalent for the
   square crop: the lenses talking-head videos are shot with), then golden-section refinement.
   Small head rotations constrain the focal length only weakly (the error curve is flat; a far
   camera — weak perspective — usually fits a generic face best), so the search is bounded; give
   ``focal`` when it is known.
4. **Template refinement** (optional, default on): alternately, each 3-D landmark is re-estimated
   from all frames' poses (Gauss–Newton, a prior ties it to the generic template, which also keeps
   the unobservable depths where they were), the template is re-aligned to the generic one by a
   similarity (keeps the world frame, metric scale and head-centred origin), and the poses are
   re-fitted; then the focal search is repeated.
5. **Smoothing** (zero-phase Gaussian, σ = ``smooth_sigma`` frames) of the rotation vectors relative
   to the clip's mean rotation and of the translations.
6. With tracked head points (``tracks=``, :mod:`ua3dtalk.preprocess.tracks`, the pipeline's default), the cameras
   of 2. are refined by bundle adjustment on those points before 5., which is then skipped.

Per-frame reprojection errors (mean pixel distance over the 68 points, and over the rigid points
only) are returned and written by the pipeline.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from .template import POSE_WEIGHTS, TEMPLATE_3D

RIGID = np.array([27, 28, 29, 30, 31, 32, 33, 34, 35, 36, 39, 42, 45])
"""Landmarks that expressions barely move (nose, eye corners): the rigid reprojection error."""


# --------------------------------------------------------------------------------------------------
# rotations
# --------------------------------------------------------------------------------------------------


def skew(v: np.ndarray) -> np.ndarray:
    """[...,3] → [...,3,3] cross-product matrices."""
    z = np.zeros(v.shape[:-1])
    return np.stack([np.stack([z, -v[..., 2], v[..., 1]], -1), np.stack([v[..., 2], z, -v[..., 0]], -1),
                     np.stack([-v[..., 1], v[..., 0], z], -1)], -2)


def rotvec_to_matrix(v: np.ndarray) -> np.ndarray:
    """Rodrigues: rotation vectors [...,3] (radians) → [...,3,3]."""
    v = np.asarray(v, np.float64)
    th = np.linalg.norm(v, axis=-1)[..., None, None]
    K = skew(v)
    small = th < 1e-8
    ths = np.where(small, 1.0, th)
    a = np.where(small, 1.0, np.sin(ths) / ths)
    b = np.where(small, 0.5, (1 - np.cos(ths)) / ths**2)
    return np.eye(3) + a * K + b * (K @ K)


def matrix_to_rotvec(R: np.ndarray) -> np.ndarray:
    """[...,3,3] → rotation vectors [...,3] (angles < π)."""
    from scipy.spatial.transform import Rotation

    shp = R.shape[:-2]
    return Rotation.from_matrix(R.reshape(-1, 3, 3)).as_rotvec().reshape(*shp, 3)


def rotation_angle(R: np.ndarray) -> np.ndarray:
    """Angle (degrees) of rotation matrices [...,3,3]."""
    c = (np.trace(R, axis1=-2, axis2=-1) - 1) / 2
    return np.degrees(np.arccos(np.clip(c, -1, 1)))


def euler_yxz(R: np.ndarray) -> np.ndarray:
    """Yaw (about y), pitch (about x), roll (about z) in degrees of head rotations [...,3,3] written as
    R = R_y(yaw) R_x(pitch) R_z(roll) (the convention of :func:`ua3dtalk.data.synth.camera.euler_to_rot`)."""
    from scipy.spatial.transform import Rotation

    shp = R.shape[:-2]
    e = Rotation.from_matrix(R.reshape(-1, 3, 3)).as_euler("YXZ", degrees=True)
    return e.reshape(*shp, 3)


# --------------------------------------------------------------------------------------------------
# fitting
# --------------------------------------------------------------------------------------------------


def project(X: np.ndarray, R: np.ndarray, t: np.ndarray, f: float, c: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Project template [68,3] (or [N,68,3]) with poses R [N,3,3], t [N,3] → (pixels [N,68,2], camera points)."""
    p = np.einsum("nij,nkj->nki" if X.ndim == 3 else "nij,kj->nki", R, X) + t[:, None, :]
    z = np.maximum(p[..., 2:3], 1e-6)
    return f * p[..., :2] / z + c, p


def projection_jacobian(p: np.ndarray, f: float) -> np.ndarray:
    """∂(pinhole pixel)/∂(camera-space point) for points ``p [..., 3]`` (depth clamped at 1e-6) →
    ``[..., 2, 3]``: ``[[f/z, 0, −f·x/z²], [0, f/z, −f·y/z²]]``."""
    z = np.maximum(p[..., 2], 1e-6)
    d = np.zeros(p.shape[:-1] + (2, 3))
    d[..., 0, 0] = d[..., 1, 1] = f / z
    d[..., 0, 2] = -f * p[..., 0] / z**2
    d[..., 1, 2] = -f * p[..., 1] / z**2
    return d


def init_poses(X: np.ndarray, x: np.ndarray, w: np.ndarray, f: float, c: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Closed-form scaled-orthographic initialisation. X [68,3], x [N,68,2], w [68] → R [N,3,3], t [N,3]."""
    ws = w / w.sum()
    Xm = (ws[:, None] * X).sum(0)
    Xc = X - Xm
    xm = np.einsum("k,nkd->nd", ws, x)
    xc = x - xm[:, None]
    A = (Xc * ws[:, None]).T @ Xc  # [3,3]
    B = np.einsum("nkd,k,ke->nde", xc, ws, Xc)  # [N,2,3]
    M = B @ np.linalg.inv(A)  # [N,2,3]
    U, S, Vt = np.linalg.svd(M, full_matrices=False)  # U [N,2,2], Vt [N,2,3]
    R12 = U @ Vt
    r3 = np.cross(R12[:, 0], R12[:, 1])
    R = np.concatenate([R12, r3[:, None]], 1)
    s = S.mean(-1)
    tz = f / np.maximum(s, 1e-9)
    cam_c = np.stack([(xm[:, 0] - c[0]) * tz / f, (xm[:, 1] - c[1]) * tz / f, tz], -1)
    t = cam_c - np.einsum("nij,j->ni", R, Xm)
    return R, t


def refine_poses(X: np.ndarray, x: np.ndarray, w: np.ndarray, f: float, c: np.ndarray, R: np.ndarray, t: np.ndarray,
                 iters: int = 12, huber: Optional[float] = None) -> tuple[np.ndarray, np.ndarray]:
    """Levenberg–Marquardt per frame (batched). X [68,3] or [N,68,3]; returns refined (R, t)."""
    R, t = R.copy(), t.copy()
    lam = np.full(len(R), 1e-3)
    sw = np.sqrt(w)

    def cost(R_, t_):
        px, _ = project(X, R_, t_, f, c)
        r = np.linalg.norm(px - x, axis=-1)
        rw = _huber_w(r, huber)
        return (w * rw * r**2).sum(-1)

    cur = cost(R, t)
    for _ in range(iters):
        px, p = project(X, R, t, f, c)
        r = px - x  # [N,68,2]
        rw = np.sqrt(_huber_w(np.linalg.norm(r, axis=-1), huber))
        dproj = projection_jacobian(p, f)
        RX = p - t[:, None, :]
        dp = np.concatenate([-skew(RX), np.broadcast_to(np.eye(3), RX.shape[:-1] + (3, 3))], -1)  # [N,68,3,6]
        J = dproj @ dp  # [N,68,2,6]
        s = (sw * rw)[..., None, None]
        Jw = (J * s).reshape(len(R), -1, 6)
        rr = (r * (sw * rw)[..., None]).reshape(len(R), -1)
        H = np.einsum("nki,nkj->nij", Jw, Jw)
        g = np.einsum("nki,nk->ni", Jw, rr)
        Hd = H + lam[:, None, None] * (np.eye(6) * np.maximum(np.diagonal(H, axis1=1, axis2=2)[:, None, :], 1e-9))
        d = -np.linalg.solve(Hd, g[..., None])[..., 0]
        Rn = rotvec_to_matrix(d[:, :3]) @ R
        tn = t + d[:, 3:]
        new = cost(Rn, tn)
        ok = new <= cur
        R[ok], t[ok], cur[ok] = Rn[ok], tn[ok], new[ok]
        lam = np.where(ok, lam * 0.3, lam * 10.0)
    return R, t


def _huber_w(r: np.ndarray, delta: Optional[float]) -> np.ndarray:
    if delta is None:
        return np.ones_like(r)
    return np.where(r <= delta, 1.0, delta / np.maximum(r, 1e-12))


def fit_poses(X: np.ndarray, x: np.ndarray, w: np.ndarray, f: float, c: np.ndarray, iters: int = 12,
              huber: Optional[float] = None) -> tuple[np.ndarray, np.ndarray, float]:
    """Initialise + refine; returns (R, t, mean weighted squared error per point)."""
    R, t = init_poses(X, x, w, f, c)
    R, t = refine_poses(X, x, w, f, c, R, t, iters=iters, huber=huber)
    px, _ = project(X, R, t, f, c)
    e = (w * ((px - x) ** 2).sum(-1)).sum() / (w.sum() * len(x))
    return R, t, float(e)


def search_focal(X: np.ndarray, x: np.ndarray, w: np.ndarray, c: np.ndarray, size: float,
                 lo: float = 1.0, hi: float = 4.0, grid: int = 8, golden: int = 8, huber=None) -> float:
    """One focal length for all frames: minimise the total reprojection error over f ∈ [lo, hi]×size
    (log grid, then golden-section search around the best grid point)."""
    fs = np.geomspace(lo * size, hi * size, grid)
    errs = np.array([fit_poses(X, x, w, f, c, iters=8, huber=huber)[2] for f in fs])
    k = int(np.argmin(errs))
    a = math.log(fs[max(k - 1, 0)])
    b = math.log(fs[min(k + 1, grid - 1)])
    g = (math.sqrt(5) - 1) / 2
    c1, c2 = b - g * (b - a), a + g * (b - a)
    e1 = fit_poses(X, x, w, math.exp(c1), c, iters=8, huber=huber)[2]
    e2 = fit_poses(X, x, w, math.exp(c2), c, iters=8, huber=huber)[2]
    for _ in range(golden):
        if e1 < e2:
            b, c2, e2 = c2, c1, e1
            c1 = b - g * (b - a)
            e1 = fit_poses(X, x, w, math.exp(c1), c, iters=8, huber=huber)[2]
        else:
            a, c1, e1 = c1, c2, e2
            c2 = a + g * (b - a)
            e2 = fit_poses(X, x, w, math.exp(c2), c, iters=8, huber=huber)[2]
    best = math.exp(c1 if e1 < e2 else c2)
    return float(best if min(e1, e2) <= errs[k] else fs[k])


def umeyama(src: np.ndarray, dst: np.ndarray, w: Optional[np.ndarray] = None, scale: bool = True
            ) -> tuple[float, np.ndarray, np.ndarray]:
    """Similarity (s, Q, d) minimising Σ w‖s Q src + d − dst‖² (Umeyama 1991). src, dst [M,D] (D = 2 or 3)."""
    w = np.ones(len(src)) if w is None else np.asarray(w, np.float64)
    ws = w / w.sum()
    ms, md = ws @ src, ws @ dst
    S, D = src - ms, dst - md
    C = (D * ws[:, None]).T @ S
    U, sig, Vt = np.linalg.svd(C)
    E = np.eye(src.shape[1])
    if np.linalg.det(U) * np.linalg.det(Vt) < 0:
        E[-1, -1] = -1
    Q = U @ E @ Vt
    var = (ws * (S**2).sum(1)).sum()
    s = float(np.trace(np.diag(sig) @ E) / var) if scale else 1.0
    d = md - s * Q @ ms
    return s, Q, d


def refine_template(X0: np.ndarray, X: np.ndarray, x: np.ndarray, f: float, c: np.ndarray, R: np.ndarray,
                    t: np.ndarray, prior: float = 0.05, iters: int = 3) -> np.ndarray:
    """Re-estimate each 3-D landmark from all frames' poses (Gauss–Newton); ``prior`` ties it to X0
    (dimensionless: the cost of moving a point by δ is ``prior`` × the cost of a δ displacement seen
    in every frame). Returns the new template [68,3]."""
    X = X.copy()
    n = len(R)
    for _ in range(iters):
        px, p = project(X, R, t, f, c)
        r = px - x  # [N,68,2]
        dproj = projection_jacobian(p, f)
        J = dproj @ R[:, None]  # [N,68,2,3]
        H = np.einsum("nkai,nkaj->kij", J, J)  # [68,3,3]
        g = np.einsum("nkai,nka->ki", J, r)
        lam = prior * n * (f / np.median(np.maximum(p[..., 2], 1e-6))) ** 2
        H = H + lam * np.eye(3)
        g = g + lam * (X - X0)
        X = X - np.linalg.solve(H, g[..., None])[..., 0]
    return X


@dataclass
class PoseFit:
    """Result of :func:`fit_clip`.

    R [N,3,3], t [N,3]   world→camera (OpenCV) per frame: viewmat = [[R, t], [0, 1]]
    focal, cx, cy        shared pinhole intrinsics (pixels)
    template [68,3]      the (refined) 3-D landmarks in the world (head) frame, metres
    errors [N]           mean reprojection error over the 68 landmarks (pixels), after smoothing
    rigid_errors [N]     the same over the rigid landmarks (nose, eye corners)
    """

    R: np.ndarray
    t: np.ndarray
    focal: float
    cx: float
    cy: float
    template: np.ndarray
    errors: np.ndarray
    rigid_errors: np.ndarray
    info: dict = field(default_factory=dict)

    def viewmats(self) -> np.ndarray:
        """[N,4,4] OpenCV world→camera."""
        v = np.tile(np.eye(4), (len(self.R), 1, 1))
        v[:, :3, :3] = self.R
        v[:, :3, 3] = self.t
        return v

    def transform_matrices(self) -> np.ndarray:
        """[N,4,4] TalkingGaussian/ER-NeRF ``transform_matrix`` (OpenGL camera-to-world)."""
        from ..data.cameras import opencv_w2c_to_opengl_c2w

        return opencv_w2c_to_opengl_c2w(self.viewmats())

    def head_rotations(self) -> np.ndarray:
        """[N,3,3] rotations of the head relative to the camera (= R): the head's pose in camera space."""
        return self.R

    def camera_centers(self) -> np.ndarray:
        return -np.einsum("nji,nj->ni", self.R, self.t)


def smooth_poses(R: np.ndarray, t: np.ndarray, sigma: float) -> tuple[np.ndarray, np.ndarray]:
    """Zero-phase Gaussian smoothing of rotations (as rotation vectors about the mean rotation) and
    translations over time (σ in frames; 0 → unchanged)."""
    if sigma <= 0 or len(R) < 3:
        return R.copy(), t.copy()
    from scipy.ndimage import gaussian_filter1d

    U, _, Vt = np.linalg.svd(R.sum(0))
    Rm = U @ np.diag([1, 1, np.linalg.det(U @ Vt)]) @ Vt
    v = matrix_to_rotvec(R @ Rm.T)
    v = gaussian_filter1d(v, sigma, axis=0, mode="nearest")
    return rotvec_to_matrix(v) @ Rm, gaussian_filter1d(t, sigma, axis=0, mode="nearest")


def _subsample(n: int, k: int) -> np.ndarray:
    return np.unique(np.linspace(0, n - 1, min(n, k)).round().astype(int))


def estimate_camera(lms: np.ndarray | Sequence[np.ndarray], width: int, height: int, *,
                    template: Optional[np.ndarray] = None, weights: Optional[np.ndarray] = None,
                    refine: bool = True, rounds: int = 3, prior: float = 0.05, search_frames: int = 150,
                    focal: Optional[float] = None) -> tuple[float, np.ndarray]:
    """Focal length and subject template from the landmarks of one clip [N,68,2] or of several clips
    of one subject (a list; frames are pooled). Returns (focal, template [68,3])."""
    if isinstance(lms, (list, tuple)):
        lms = np.concatenate([np.asarray(a, np.float64) for a in lms], 0)
    lms = np.asarray(lms, np.float64)
    X0 = np.array(TEMPLATE_3D if template is None else template, np.float64)
    w = np.array(POSE_WEIGHTS if weights is None else weights, np.float64)
    c = np.array([width / 2.0, height / 2.0])
    sub = lms[_subsample(len(lms), search_frames)]
    size = float(max(width, height))
    huber = 0.04 * float(np.median(np.ptp(sub[..., 0], axis=1)))
    f = float(focal) if focal is not None else search_focal(X0, sub, w, c, size, huber=huber)
    X = X0.copy()
    if refine:
        for _ in range(rounds):
            R, t, _ = fit_poses(X, sub, w, f, c, huber=huber)
            Xn = refine_template(X0, X, sub, f, c, R, t, prior=prior)
            s, Q, d = umeyama(Xn, X0, w)
            X = (s * (Q @ Xn.T)).T + d
        if focal is None:
            f = search_focal(X, sub, w, c, size, huber=huber)
    return f, X


def fit_clip(lms: np.ndarray, width: int, height: int, *, focal: Optional[float] = None,
             template: Optional[np.ndarray] = None, refine_template_: bool = True, smooth_sigma: float = 1.5,
             weights: Optional[np.ndarray] = None, search_frames: int = 150, tracks=None) -> PoseFit:
    """Fit per-frame cameras to landmarks [N,68,2] of a ``width``×``height`` clip (see module doc).

    ``focal``/``template`` given → used as they are (a camera shared by several clips, see
    :func:`estimate_camera`); otherwise searched / refined on this clip. ``tracks``
    (:class:`~ua3dtalk.preprocess.tracks.Tracks`): the cameras are then refined by bundle adjustment on the
    tracked head points (:func:`~ua3dtalk.preprocess.tracks.bundle_adjust`) and not smoothed (the tracks leave
    no jitter to smooth; on the animated astronaut clip smoothing with σ 1.5 raises the error of the refined
    cameras against the known motion from 0.23 to 0.26 px), unless the adjustment found too few points.
    """
    lms = np.asarray(lms, np.float64)
    if lms.ndim != 3 or lms.shape[1:] != (68, 2):
        raise ValueError(f"landmarks must be [N,68,2], got {list(lms.shape)}")
    if not np.isfinite(lms).all():
        raise ValueError("landmarks contain NaN/Inf (fill frames without a face first)")
    w = np.array(POSE_WEIGHTS if weights is None else weights, np.float64)
    c = np.array([width / 2.0, height / 2.0])
    if focal is None or template is None:
        f, X = estimate_camera(lms, width, height, template=template, weights=w, refine=refine_template_,
                               search_frames=search_frames, focal=focal)
        if template is not None:
            X = np.asarray(template, np.float64)
    else:
        f, X = float(focal), np.asarray(template, np.float64)
    huber = 0.04 * float(np.median(np.ptp(lms[..., 0], axis=1)))
    R, t, _ = fit_poses(X, lms, w, f, c, iters=15, huber=huber)
    raw_err = np.linalg.norm(project(X, R, t, f, c)[0] - lms, axis=-1)
    info = {}
    if tracks is not None:
        from .tracks import bundle_adjust

        adj = bundle_adjust(tracks, R, t, f, c, X, lms, w)
        info["tracks"] = {**tracks.info, **adj.info}
        if "skipped" not in adj.info:
            R, t, smooth_sigma = adj.R, adj.t, 0.0
    R, t = smooth_poses(R, t, smooth_sigma)
    px, p = project(X, R, t, f, c)
    err = np.linalg.norm(px - lms, axis=-1)
    if (p[..., 2] <= 0).any():
        raise ValueError("pose fit put landmarks behind the camera; the landmarks do not look like a face")
    return PoseFit(R=R, t=t, focal=f, cx=float(c[0]), cy=float(c[1]), template=X, errors=err.mean(1),
                   rigid_errors=err[:, RIGID].mean(1),
                   info={"raw_mean_error_px": float(raw_err.mean()), "smooth_sigma": smooth_sigma,
                         "focal_over_size": f / max(width, height), **info})


def write_transforms(out_dir: Path, fit: PoseFit, width: int, height: int, *, n_val: Optional[int] = None,
                     write=None) -> tuple[int, int]:
    """Write ``transforms_train.json`` / ``transforms_val.json`` (ER-NeRF split: the last
    ``max(1, N // 11)`` frames are validation). Returns (n_train, n_val)."""
    from ..utils.io import atomic_write_json

    n = len(fit.R)
    n_val = max(1, n // 11) if n_val is None else n_val
    mats = fit.transform_matrices()
    frames = [{"img_id": i, "aud_id": i, "transform_matrix": mats[i].tolist()} for i in range(n)]
    cam = {"focal_len": float(fit.focal), "cx": float(fit.cx), "cy": float(fit.cy), "h": int(height), "w": int(width)}
    w = write or atomic_write_json
    w(Path(out_dir) / "transforms_train.json", {**cam, "frames": frames[: n - n_val]})
    w(Path(out_dir) / "transforms_val.json", {**cam, "frames": frames[n - n_val:]})
    return n - n_val, n_val
