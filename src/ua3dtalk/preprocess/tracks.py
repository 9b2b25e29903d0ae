"""Camera refinement from tracked head points: the pose step after the landmark fit (DESIGN §5.1).

Cameras fitted to 68 detected landmarks (:mod:`ua3dtalk.preprocess.pose`) inherit the detector's errors: on the
animated astronaut clip (known motion, 512²) a rigid point of the head, seen through those cameras, lands 1.06 px
from where the frame shows it (mean over the head's rigid points and all frames, up to 7 px), an error that drifts
slowly with the head pose (0.5–1°). A Gaussian avatar trained on such cameras blurs its hair and misplaces its
silhouette. Hundreds of points of the head's own texture, tracked through the clip, pin the cameras down much more
tightly (0.23 px on that clip):

1. **Points** (:func:`select_points`): up to ``n_points`` corners (Shi–Tomasi response, at least ``spacing`` px
   apart) of the reference frame (the frame whose landmark configuration is closest to the clip's median: the
   most typical pose), inside the head (face ∪ hair of the parsing, eroded by the patch radius so the background
   never enters a patch), away from what expressions move: the eyes (boxes around landmarks 36–47, grown by half
   their size) and the face below the nose (below landmarks 31–35, where the mouth and jaw move).
2. **Tracking** (:func:`track_points`): every point's patch (radius ``radius``) of the reference frame is found in
   every frame by Lucas–Kanade on the translation, with zero-mean patches (a brightness change between frames
   does not matter) and the patch's shape mapped by the 2-D similarity that carries the reference frame's rigid
   landmarks (nose, eye corners) onto the frame's (rotation of the head in the image plane, scale), coarse to fine
   (Gaussian blur σ = 2.5 then 1 px). Frames are visited outwards from the reference, each point starting where
   it was in the frame visited before (moved by the change of the landmark similarity); the template is always
   the reference patch, so a track cannot drift. A point counts in a frame where its normalised cross-correlation
   with the reference patch is ≥ ``min_ncc`` and the solve converged (a hand over it, a blink, a shadow: out).
3. **Bundle adjustment** (:func:`bundle_adjust`): alternately, the points' 3-D positions (linear triangulation
   from the frames where they count, then Gauss–Newton) and every frame's camera (Levenberg–Marquardt of
   :func:`~ua3dtalk.preprocess.pose.refine_poses` on the tracked points, robust (Huber 1 px), plus the 68
   landmarks on the template at weight ``landmark_weight`` × their usual weights, which keeps the landmark fit's
   world frame and scale: the tracks alone fix the cameras only up to a similarity of the whole scene).
   Observations further than 3 px (and 4× the median) from their point's projection are dropped between rounds.

Shapes: frames [H,W] grey float32; points / tracks as (x, y) pixel coordinates, pixel (row r, column c) centred
at (c + 0.5, r + 0.5) like the landmarks; tracks [N,P,2] with a validity mask [N,P] bool.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np

from .pose import RIGID, project, projection_jacobian, refine_poses, umeyama

EYES = np.arange(36, 48)
NOSE_BOTTOM = np.arange(31, 36)


@dataclass
class Tracks:
    """Points tracked through a clip.

    ref       index of the reference frame
    points    [P,2] positions in the reference frame
    xy        [N,P,2] positions in every frame (NaN where not found)
    valid     [N,P] bool, the point was found in that frame
    ncc       [N,P] normalised cross-correlation with the reference patch
    """

    ref: int
    points: np.ndarray
    xy: np.ndarray
    valid: np.ndarray
    ncc: np.ndarray
    info: dict = field(default_factory=dict)


# --------------------------------------------------------------------------------------------------
# images
# --------------------------------------------------------------------------------------------------


def grey(img: np.ndarray) -> np.ndarray:
    """uint8 / float [H,W,3] or [H,W] → float32 [H,W] in [0, 1] (Rec. 601 luma)."""
    a = np.asarray(img, np.float32)
    if a.ndim == 3:
        a = a[..., 0] * 0.299 + a[..., 1] * 0.587 + a[..., 2] * 0.114
    return a / 255.0 if np.asarray(img).dtype == np.uint8 else a


def pyramid_levels(g: np.ndarray, sigmas=(2.5, 1.0)) -> list[np.ndarray]:
    """[H,W] → per σ, a [3,H,W] stack of the blurred image and its x / y derivatives (per pixel)."""
    from scipy.ndimage import gaussian_filter

    out = []
    for s in sigmas:
        b = gaussian_filter(g, s, mode="nearest")
        gy, gx = np.gradient(b)
        out.append(np.stack([b, gx, gy]).astype(np.float32))
    return out


def sample(stack: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Bilinear samples of a [C,H,W] stack at pixel coordinates (x, y) (pixel centres at +0.5; clamped at the
    border) → [C, *x.shape]."""
    _, h, w = stack.shape
    fx = np.clip(x - 0.5, 0, w - 1.000001)
    fy = np.clip(y - 0.5, 0, h - 1.000001)
    x0 = fx.astype(np.int64)
    y0 = fy.astype(np.int64)
    ax, ay = (fx - x0).astype(np.float32), (fy - y0).astype(np.float32)
    flat = stack.reshape(stack.shape[0], -1)
    i00 = y0 * w + x0
    v00, v01, v10, v11 = (np.take(flat, i, axis=1) for i in (i00, i00 + 1, i00 + w, i00 + w + 1))
    return (v00 * (1 - ax) + v01 * ax) * (1 - ay) + (v10 * (1 - ax) + v11 * ax) * ay


# --------------------------------------------------------------------------------------------------
# point selection
# --------------------------------------------------------------------------------------------------


def reference_frame(lms: np.ndarray) -> int:
    """Index of the frame whose landmarks, after removing position, scale and in-plane rotation, are closest
    to the clip's median configuration (the most typical head pose)."""
    lms = np.asarray(lms, np.float64)
    P = lms[:, RIGID]
    P = P - P.mean(1, keepdims=True)
    P = P / np.sqrt((P**2).sum((1, 2), keepdims=True))
    med = np.median(P, 0)
    d = []
    for q in P:  # align each to the median by a rotation (Procrustes in 2-D)
        U, _, Vt = np.linalg.svd(q.T @ med)
        d.append(np.linalg.norm(q @ (U @ Vt) - med))
    return int(np.argmin(d))


def head_mask(labels: np.ndarray, lms: np.ndarray, radius: int) -> np.ndarray:
    """[H,W] bool where points may be taken: face ∪ hair of the parsing labels (PARTS indices), eroded by
    ``radius`` + 1, without the eyes and the face below the nose (module doc)."""
    from scipy import ndimage as ndi

    from ..data.formats import PARTS

    lab = np.asarray(labels)
    m = (lab == PARTS.index("face")) | (lab == PARTS.index("hair"))
    m = ndi.binary_erosion(m, iterations=int(radius) + 1)
    h, w = m.shape
    yy, xx = np.mgrid[0:h, 0:w] + 0.5
    lm = np.asarray(lms, np.float64)
    for side in (EYES[:6], EYES[6:]):
        (x0, y0), (x1, y1) = lm[side].min(0), lm[side].max(0)
        gx, gy = 0.5 * (x1 - x0) + 2, 0.75 * (x1 - x0) + 2
        m &= ~((xx > x0 - gx) & (xx < x1 + gx) & (yy > y0 - gy) & (yy < y1 + gy))
    # below the nose, inside the face's width (the jaw contour 0–16): mouth, cheeks and chin move with speech
    nose_y = lm[NOSE_BOTTOM, 1].max() + 2
    jx0, jx1 = lm[0:17, 0].min() - radius, lm[0:17, 0].max() + radius
    m &= ~((yy > nose_y) & (xx > jx0) & (xx < jx1))
    return m


def select_points(g: np.ndarray, mask: np.ndarray, n_points: int, spacing: int = 7) -> np.ndarray:
    """Up to ``n_points`` corners [P,2] (x, y) of grey image ``g`` inside ``mask``, strongest first, at least
    ``spacing`` px apart (Shi–Tomasi response: the smaller eigenvalue of the structure tensor, σ = 1.5)."""
    from skimage.feature import corner_peaks, corner_shi_tomasi

    resp = corner_shi_tomasi(g.astype(np.float64), sigma=1.5)
    resp = np.where(mask, resp, 0.0)
    if not (resp > 0).any():
        return np.zeros((0, 2))
    pk = corner_peaks(resp, min_distance=int(spacing), threshold_rel=0.02, num_peaks=int(n_points),
                      exclude_border=False)
    return pk[:, ::-1].astype(np.float64) + 0.5  # (row, col) → (x, y) pixel centres


# --------------------------------------------------------------------------------------------------
# tracking
# --------------------------------------------------------------------------------------------------


def similarity_2d(src: np.ndarray, dst: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(L [2,2], d [2]) of the 2-D similarity x ↦ L x + d closest to mapping ``src`` [M,2] onto ``dst``
    (:func:`~ua3dtalk.preprocess.pose.umeyama`)."""
    s, Q, d = umeyama(src, dst)
    return s * Q, d


def _lk(levels, tmpl, offs, L, u, iters: int):
    """Lucas–Kanade on the translation of every point (vectorised; a point stops iterating once its step is below
    0.005 px): ``tmpl`` per level [P,K] zero-mean reference patches, ``offs`` [K,2] patch offsets mapped by ``L``
    [2,2], start ``u`` [P,2] → (u, ncc [P], last step [P])."""
    d = offs @ L.T  # [K,2]
    u = u.copy()
    step = np.full(len(u), np.inf)
    for lv, T in zip(levels, tmpl):
        act = np.arange(len(u))
        for _ in range(iters):
            x = u[act, None, 0] + d[None, :, 0]
            y = u[act, None, 1] + d[None, :, 1]
            I, gx, gy = sample(lv, x, y)  # [A,K] each
            r = (I - I.mean(1, keepdims=True)) - T[act]
            gx = gx - gx.mean(1, keepdims=True)
            gy = gy - gy.mean(1, keepdims=True)
            a, b, c = (gx * gx).sum(1), (gx * gy).sum(1), (gy * gy).sum(1)
            e, f = (gx * r).sum(1), (gy * r).sum(1)
            det = a * c - b * b
            ok = det > 1e-12
            det = np.where(ok, det, 1.0)
            delta = np.stack([np.where(ok, -(c * e - b * f) / det, 0.0), np.where(ok, -(a * f - b * e) / det, 0.0)], -1)
            n = np.linalg.norm(delta, axis=-1)
            delta = delta * np.minimum(1.0, 2.0 / np.maximum(n, 1e-12))[:, None]  # at most 2 px per iteration
            u[act] += delta
            step[act] = n
            act = act[n >= 0.005]
            if not len(act):
                break
    x = u[:, None, 0] + d[None, :, 0]
    y = u[:, None, 1] + d[None, :, 1]
    I = sample(levels[-1][:1], x, y)[0]
    Iz = I - I.mean(1, keepdims=True)
    T = tmpl[-1]
    ncc = (Iz * T).sum(1) / np.maximum(np.linalg.norm(Iz, axis=1) * np.linalg.norm(T, axis=1), 1e-12)
    return u, ncc, step


def track_points(frame: Callable[[int], np.ndarray], lms: np.ndarray, mask: np.ndarray, ref: int, *,
                 n_points: int = 300, radius: int = 6, min_ncc: float = 0.9, iters: int = 8,
                 progress: Optional[Callable[[int], None]] = None) -> Tracks:
    """Track head points through a clip (module doc, steps 1–2).

    frame      i → the frame's image ([H,W,3] uint8 or [H,W] grey)
    lms        [N,68,2] landmarks (the similarity that maps the patches, and the starting positions)
    mask       [H,W] bool where the reference frame's points may be taken (:func:`head_mask`)
    ref        reference frame index; progress(k) is called after each frame
    """
    lms = np.asarray(lms, np.float64)
    n = len(lms)
    g_ref = grey(frame(ref))
    pts = select_points(g_ref, mask, n_points)
    P = len(pts)
    xy = np.full((n, P, 2), np.nan)
    valid = np.zeros((n, P), bool)
    ncc = np.zeros((n, P))
    info = {"n_points": P}
    if P == 0:
        return Tracks(ref, pts, xy, valid, ncc, info)
    r = np.arange(-radius, radius + 1, dtype=np.float64)
    offs = np.stack(np.meshgrid(r, r, indexing="xy"), -1).reshape(-1, 2)
    lv_ref = pyramid_levels(g_ref)
    tmpl = []
    for lv in lv_ref:
        T = sample(lv[:1], pts[:, None, 0] + offs[None, :, 0], pts[:, None, 1] + offs[None, :, 1])[0]
        tmpl.append(T - T.mean(1, keepdims=True))
    xy[ref], valid[ref], ncc[ref] = pts, True, 1.0
    src = lms[ref, RIGID]
    sims = [similarity_2d(src, lms[i, RIGID]) for i in range(n)]
    for order in (range(ref + 1, n), range(ref - 1, -1, -1)):
        prev, u_prev = ref, pts.copy()
        for i in order:
            L, d = sims[i]
            Lp, dp = sims[prev]
            # where the landmark similarity moves each point between the previous frame and this one
            u0 = u_prev + (pts @ L.T + d) - (pts @ Lp.T + dp)
            lv = pyramid_levels(grey(frame(i)))
            u, c, step = _lk(lv, tmpl, offs, L, u0, iters)
            h, w = lv[0].shape[1:]
            inside = (u[:, 0] > radius) & (u[:, 0] < w - radius) & (u[:, 1] > radius) & (u[:, 1] < h - radius)
            ok = inside & (c >= min_ncc) & (step < 0.1) & np.isfinite(u).all(1)
            xy[i, ok], valid[i], ncc[i] = u[ok], ok, c
            # a lost point restarts from the landmark prediction in the next frame
            u_prev = np.where(ok[:, None], u, pts @ L.T + d)
            prev = i
            if progress is not None:
                progress(1)
    info["valid_fraction"] = float(valid.mean())
    return Tracks(ref, pts, xy, valid, ncc, info)


# --------------------------------------------------------------------------------------------------
# bundle adjustment
# --------------------------------------------------------------------------------------------------


def triangulate(x: np.ndarray, valid: np.ndarray, R: np.ndarray, t: np.ndarray, f: float, c: np.ndarray,
                X0: Optional[np.ndarray] = None, iters: int = 3) -> np.ndarray:
    """Points [P,3] seen at ``x`` [N,P,2] (where ``valid`` [N,P]) by cameras (R [N,3,3], t [N,3], f, c): linear
    (DLT, all points at once) unless ``X0`` is given, then Gauss–Newton on the reprojection error."""
    wv = valid.astype(np.float64)
    xs = np.where(valid[..., None], x, 0.0)
    if X0 is None:
        K = np.array([[f, 0, c[0]], [0, f, c[1]], [0, 0, 1.0]])
        Pm = K @ np.concatenate([R, t[:, :, None]], 2)  # [N,3,4]
        a = xs[..., 0:1] * Pm[:, None, 2] - Pm[:, None, 0]  # [N,P,4]
        b = xs[..., 1:2] * Pm[:, None, 2] - Pm[:, None, 1]
        # rows scaled to unit norm (the DLT's conditioning)
        a = a / np.linalg.norm(a, axis=-1, keepdims=True)
        b = b / np.linalg.norm(b, axis=-1, keepdims=True)
        A = np.einsum("np,npi,npj->pij", wv, a, a) + np.einsum("np,npi,npj->pij", wv, b, b)
        _, V = np.linalg.eigh(A)
        h = V[..., 0]
        X = h[:, :3] / np.where(np.abs(h[:, 3:4]) > 1e-12, h[:, 3:4], 1e-12)
    else:
        X = np.asarray(X0, np.float64).copy()
    for _ in range(iters):
        px, p = project(X, R, t, f, c)  # [N,P,2], [N,P,3]
        r = np.where(valid[..., None], px - x, 0.0)
        J = projection_jacobian(p, f) @ R[:, None]  # [N,P,2,3]
        H = np.einsum("np,npai,npaj->pij", wv, J, J) + 1e-9 * np.eye(3)
        gr = np.einsum("np,npai,npa->pi", wv, J, r)
        X = X - np.linalg.solve(H, gr[..., None])[..., 0]
    return X


@dataclass
class Adjusted:
    """Result of :func:`bundle_adjust`: cameras R [N,3,3], t [N,3], points X [P,3], the observations kept
    (valid [N,P]) and figures (mean track residual before / after in px, points used)."""

    R: np.ndarray
    t: np.ndarray
    X: np.ndarray
    valid: np.ndarray
    info: dict


def track_residuals(X, x, valid, R, t, f, c) -> np.ndarray:
    """[N,P] pixel distance of each kept observation from its point's projection (NaN where not kept)."""
    px, _ = project(X, R, t, f, c)
    e = np.linalg.norm(px - np.where(valid[..., None], x, 0.0), axis=-1)
    return np.where(valid, e, np.nan)


def bundle_adjust(tracks: Tracks, R: np.ndarray, t: np.ndarray, f: float, c: np.ndarray, template: np.ndarray,
                  lms: np.ndarray, lm_weights: np.ndarray, *, landmark_weight: float = 0.05, rounds: int = 4,
                  min_views: int = 10, huber: float = 1.0) -> Adjusted:
    """Refine the cameras (R, t: the landmark fit, before smoothing) with the tracks (module doc, step 3)."""
    x = np.where(tracks.valid[..., None], tracks.xy, 0.0)
    valid = tracks.valid.copy()
    R, t = R.copy(), t.copy()
    keep = valid.sum(0) >= min_views
    info = {"points": int(keep.sum()), "observations": int(valid[:, keep].sum())}
    if keep.sum() < 12:  # too few points to add anything to the landmarks
        info["skipped"] = "fewer than 12 points tracked in ≥ {} frames".format(min_views)
        return Adjusted(R, t, np.zeros((0, 3)), valid, info)
    x, valid = x[:, keep], valid[:, keep]
    X = triangulate(x, valid, R, t, f, c)
    X = triangulate(x, valid, R, t, f, c, X0=X)
    e0 = track_residuals(X, x, valid, R, t, f, c)
    info["residual_before_px"] = float(np.nanmean(e0))
    lm_w = np.asarray(lm_weights, np.float64) * landmark_weight
    n = len(R)
    for _ in range(rounds):
        Xa = np.concatenate([X, template], 0)
        xa = np.concatenate([x, lms], 1)
        wa = np.concatenate([valid.astype(np.float64), np.broadcast_to(lm_w, (n, len(lm_w)))], 1)
        R, t = refine_poses(Xa, xa, wa, f, c, R, t, iters=8, huber=huber)
        X = triangulate(x, valid, R, t, f, c, X0=X)
        e = track_residuals(X, x, valid, R, t, f, c)
        med = float(np.nanmedian(e))
        bad = valid & (e > max(3.0, 4 * med))
        if bad.any():
            valid &= ~bad
            X = triangulate(x, valid, R, t, f, c, X0=X)
    e1 = track_residuals(X, x, valid, R, t, f, c)
    info["residual_after_px"] = float(np.nanmean(e1))
    info["dropped_observations"] = int(info["observations"] - valid.sum())
    full = np.zeros_like(tracks.valid)
    full[:, keep] = valid
    return Adjusted(R, t, X, full, info)
