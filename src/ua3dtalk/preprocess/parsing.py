"""Parsing maps (DESIGN §5.1 palette) from the landmarks plus image cues, and the background plate.

Labels are indices into :data:`ua3dtalk.data.formats.PARTS` (background 0, face 1, mouth 2, hair 3,
neck 4, torso 5) and are written with the palette colours (face (0,0,255), inside mouth
(100,100,100), neck (0,255,0), torso (255,0,0), hair (0,0,0), background (255,255,255)).

How a frame is parsed (:func:`parse_frame`), with the face frame of :class:`FaceGeometry`
(``up`` from the chin to the brows, ``right`` along the jaw, so rolled heads work):

* **person vs background** — a static camera is assumed (as in every talking-head dataset): the
  background plate ``bg`` (:class:`BackgroundModel`) is the per-pixel robust mean over sampled frames
  of the pixels outside a generous person prior built from the landmarks (head ellipse, neck and
  torso below the chin). A pixel is person when it differs from the plate by more than a threshold
  set from the plate's own noise (≥ ``min_threshold`` grey levels). Where the plate was never seen
  (always behind the person) it is extrapolated from the nearest seen pixels and compared with a
  1.5× threshold. The mask is cleaned (opening, largest components touching the face, holes filled)
  and the face polygon is always person.
* **face** — the polygon of the jaw contour (0–16) closed over the forehead: the brows (17–26)
  raised by 0.45 × the brow–chin distance (less at the temples). Forehead pixels whose colour is far
  from the skin (a colour model of the cheeks and nose, YCbCr) are hair (fringe).
* **inside mouth** — the inner-lip polygon (60–67) grown by the dark pixels of the opening
  (:func:`inside_mouth_mask`): a detector's inner-lip points on an open mouth often sit in the middle
  of the dark gap, and the part of the gap outside their polygon would otherwise be face.
* **hair** — person pixels above the chin inside the head ellipse that are not face.
* **neck** — person pixels in a band under the chin (±0.32 jaw widths, down to 0.6 eye–chin
  distances); **torso** — every other person pixel.

This is a geometric approximation of a face-parsing network; a BiSeNet checkpoint
(:mod:`ua3dtalk.preprocess.bisenet`) can replace it when given.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
from scipy import ndimage as ndi

from ..data.formats import PALETTE, PARTS

LABEL = {p: i for i, p in enumerate(PARTS)}
PALETTE_RGB = np.array([PALETTE[p] for p in PARTS], np.uint8)
"""[6,3] palette colour of each label (index into PARTS)."""


@dataclass
class FaceGeometry:
    """Face frame from 68 landmarks: ``origin`` (eye midpoint), unit ``up`` / ``right`` axes (image
    coordinates), ``width`` (jaw 0→16), ``d`` (eye-midpoint → chin distance), ``chin`` (point 8)."""

    lms: np.ndarray
    origin: np.ndarray
    up: np.ndarray
    right: np.ndarray
    width: float
    d: float
    chin: np.ndarray

    @classmethod
    def from_landmarks(cls, lms: np.ndarray) -> "FaceGeometry":
        lms = np.asarray(lms, np.float64)
        eyes = lms[36:48].mean(0)
        brows = lms[17:27].mean(0)
        chin = lms[8]
        up = brows - chin
        up /= max(np.linalg.norm(up), 1e-6)
        right = np.array([-up[1], up[0]])  # image coords: y down, so (−u_y, u_x) points right when up=(0,−1)
        if right @ (lms[16] - lms[0]) < 0:
            right = -right
        width = float(np.linalg.norm(lms[16] - lms[0]))
        d = float(np.linalg.norm(chin - eyes))
        return cls(lms, eyes, up, right, max(width, 1.0), max(d, 1.0), chin)

    def coords(self, H: int, W: int) -> tuple[np.ndarray, np.ndarray]:
        """Per-pixel coordinates in the face frame [H,W] each: ``a`` along ``right``, ``v`` along
        −``up`` (downwards), relative to ``origin``, for pixel centres (c+0.5, r+0.5)."""
        ys = np.arange(H, dtype=np.float32)[:, None] + 0.5 - self.origin[1]
        xs = np.arange(W, dtype=np.float32)[None, :] + 0.5 - self.origin[0]
        a = xs * np.float32(self.right[0]) + ys * np.float32(self.right[1])
        v = -(xs * np.float32(self.up[0]) + ys * np.float32(self.up[1]))
        return a, v

    def face_polygon(self) -> np.ndarray:
        """[K,2] polygon: jaw 0–16, then the raised brows 26 → 17 (forehead)."""
        lms = self.lms
        brow_chin = float(np.linalg.norm(lms[17:27].mean(0) - self.chin))
        lift = 0.45 * brow_chin * np.array([0.55, 0.8, 0.95, 1.0, 1.0, 1.0, 1.0, 0.95, 0.8, 0.55])
        brows = lms[17:27] + lift[:, None] * self.up[None]
        # widen the forehead towards the temples (outer brow ends are inside the head outline)
        brows[0] = brows[0] - 0.06 * self.width * self.right
        brows[-1] = brows[-1] + 0.06 * self.width * self.right
        return np.concatenate([lms[0:17], brows[::-1]], 0)

    def v_of(self, p: np.ndarray) -> float:
        return float(-(p - self.origin) @ self.up)

    def a_of(self, p: np.ndarray) -> float:
        return float((p - self.origin) @ self.right)


def polygon_mask(poly: np.ndarray, H: int, W: int) -> np.ndarray:
    """Rasterise a polygon [K,2] (pixel coordinates) to a bool mask [H,W]."""
    from PIL import Image, ImageDraw

    im = Image.new("L", (W, H), 0)
    pts = [(float(x) - 0.5, float(y) - 0.5) for x, y in poly]  # PIL addresses pixel centres by integers
    ImageDraw.Draw(im).polygon(pts, fill=1, outline=1)
    return np.asarray(im, dtype=bool)


def head_ellipse(g: FaceGeometry, a: np.ndarray, v: np.ndarray, grow: float = 1.0) -> np.ndarray:
    """Head (incl. hair volume) as an ellipse in the face frame: centre 0.25 d above the eyes, semi-axes
    0.75 × jaw width across and 1.25 d along the face."""
    ca, cv = 0.0, -0.25 * g.d
    ra, rv = 0.75 * g.width * grow, 1.25 * g.d * grow
    return ((a - ca) / ra) ** 2 + ((v - cv) / rv) ** 2 <= 1.0


def person_prior(g: FaceGeometry, H: int, W: int, grow: float = 1.0) -> np.ndarray:
    """Where the person may be: the head ellipse (× 1.2 ``grow``) plus, below the chin, a band that
    widens from the neck (± 0.5 jaw widths) by 3.5 jaw widths per eye–chin distance towards the
    shoulders (bool [H,W]); ``grow`` > 1 makes it more generous."""
    a, v = g.coords(H, W)
    head = head_ellipse(g, a, v, 1.2 * grow)
    chin_v = g.v_of(g.chin)
    below = v > chin_v - 0.2 * g.d
    half = g.width * grow * (0.5 + 3.5 * np.clip((v - chin_v) / g.d, 0, None))
    return head | (below & (np.abs(a) < half))


# --------------------------------------------------------------------------------------------------
# background plate
# --------------------------------------------------------------------------------------------------


class BackgroundModel:
    """Per-pixel background estimate from frames where the pixel is outside the person.

    Feed frames with :meth:`add` (uint8 [H,W,3] + a bool mask of pixels that are background in it),
    then :meth:`finish`. Robust mean: a plain mean, then the mean of the samples within 3 MADs of it
    (2 passes over the stored samples; at most ``max_samples`` frames are stored, evenly spread by the
    caller). Attributes after ``finish``: ``plate`` float32 [H,W,3] (0–255), ``known`` bool [H,W] (seen
    at least ``min_count`` times), ``filled`` float32 [H,W,3] (plate extrapolated from the nearest known
    pixel where unknown), ``noise`` (robust std of the samples around the plate, grey levels).
    """

    def __init__(self, H: int, W: int, min_count: int = 2):
        self.H, self.W, self.min_count = H, W, min_count
        self.samples: list[np.ndarray] = []
        self.masks: list[np.ndarray] = []

    def add(self, img: np.ndarray, bg_mask: np.ndarray) -> None:
        self.samples.append(np.asarray(img, np.uint8))
        self.masks.append(np.asarray(bg_mask, bool))

    def finish(self) -> "BackgroundModel":
        H, W = self.H, self.W
        if not self.samples:
            self.plate = np.full((H, W, 3), 255, np.float32)
            self.known = np.zeros((H, W), bool)
            self.filled = self.plate
            self.filled_u8 = np.full((H, W, 3), 255, np.uint8)
            self.noise = 4.0
            return self
        S = np.stack(self.samples).astype(np.float32)  # [K,H,W,3]
        M = np.stack(self.masks)[..., None].astype(np.float32)
        cnt = M.sum(0)
        mean = (S * M).sum(0) / np.maximum(cnt, 1)
        dev = np.abs(S - mean[None]).max(-1, keepdims=True)
        mad = np.median(dev[M[..., 0] > 0]) if (M > 0).any() else 4.0
        keep = M * (dev <= max(3.0 * 1.4826 * mad, 6.0))
        cnt2 = keep.sum(0)
        plate = np.where(cnt2 > 0, (S * keep).sum(0) / np.maximum(cnt2, 1), mean)
        self.known = cnt[..., 0] >= self.min_count
        self.plate = plate.astype(np.float32)
        self.noise = float(max(1.4826 * mad, 1.0))
        self.filled = fill_unknown(self.plate, self.known)
        self.filled_u8 = np.clip(self.filled + 0.5, 0, 255).astype(np.uint8)
        self.samples, self.masks = [], []
        return self


def fill_unknown(img: np.ndarray, known: np.ndarray, blur: float = 2.0) -> np.ndarray:
    """Fill pixels where ``known`` is False with the nearest known pixel's value, then smooth the
    filled area a little (σ = ``blur`` px). All unknown → mid-grey."""
    if known.all():
        return img.astype(np.float32)
    if not known.any():
        return np.full(img.shape, 127.0, np.float32)
    idx = ndi.distance_transform_edt(~known, return_distances=False, return_indices=True)
    out = img[idx[0], idx[1]].astype(np.float32)
    if blur > 0:
        sm = ndi.gaussian_filter(out, (blur, blur, 0))
        out = np.where(known[..., None], out, sm)
    return out


# --------------------------------------------------------------------------------------------------
# one frame
# --------------------------------------------------------------------------------------------------


def _ycbcr(img: np.ndarray) -> np.ndarray:
    f = img.astype(np.float32)
    y = 0.299 * f[..., 0] + 0.587 * f[..., 1] + 0.114 * f[..., 2]
    cb = 128 - 0.168736 * f[..., 0] - 0.331264 * f[..., 1] + 0.5 * f[..., 2]
    cr = 128 + 0.5 * f[..., 0] - 0.418688 * f[..., 1] - 0.081312 * f[..., 2]
    return np.stack([y, cb, cr], -1)


def skin_mask_polys(lms: np.ndarray) -> list[np.ndarray]:
    """Cheek and nose-bridge polygons (skin samples, free of eyes, brows, lips)."""
    return [lms[[2, 3, 4, 48, 31, 39]], lms[[14, 13, 12, 54, 35, 42]], lms[[27, 39, 31, 35, 42]]]


def parse_frame(img: np.ndarray, lms: np.ndarray, bg: Optional[BackgroundModel] = None, *,
                min_threshold: float = 18.0, work_size: int = 256) -> np.ndarray:
    """Label map uint8 [H,W] (index into :data:`PARTS`) of one frame from its landmarks [68,2] and the
    background plate (see the module doc). Without ``bg`` the person is the landmark prior shape.

    The person/hair/neck/torso layout is computed on a grid subsampled to about ``work_size`` pixels
    (integer factor k) and upsampled; face, inside mouth and the fringe test use full resolution.
    """
    H, W = img.shape[:2]
    lms = np.asarray(lms, np.float64)
    k = max(1, int(round(max(H, W) / float(work_size))))
    g = FaceGeometry.from_landmarks(lms)
    gk = FaceGeometry.from_landmarks(lms / k)
    Hk, Wk = -(-H // k), -(-W // k)
    a, v = gk.coords(Hk, Wk)
    face_k = polygon_mask(gk.face_polygon(), Hk, Wk)
    loose = person_prior(gk, Hk, Wk, grow=1.4)
    if bg is not None:
        thr = max(min_threshold, 4.0 * bg.noise)
        sub = img[::k, ::k]
        ref = bg.filled_u8[::k, ::k]
        diff = (np.maximum(sub, ref) - np.minimum(sub, ref)).max(-1)
        known = bg.known[::k, ::k]
        # never-seen plate: inside the head it is the person (hair), elsewhere compare with the
        # plate extrapolated from the nearest seen pixels
        head_in = head_ellipse(gk, a, v, 1.1) & (v < gk.v_of(gk.chin) + 0.1 * gk.d)
        fg = np.where(known, diff > thr, head_in | (diff > 1.5 * thr))
        fg &= loose
    else:
        fg = person_prior(gk, Hk, Wk, grow=1.0)
    it = 2  # on the ~256-px working grid
    fg = ndi.binary_opening(fg, iterations=it)
    fg = ndi.binary_closing(fg, iterations=2 * it, border_value=0) | fg
    fg |= face_k
    lab, n = ndi.label(fg)
    if n > 1:
        keep = np.unique(lab[face_k & (lab > 0)])
        sizes = ndi.sum(fg, lab, index=np.arange(1, n + 1))
        big = np.nonzero(sizes >= 0.25 * sizes.max())[0] + 1  # large parts (e.g. torso cut off by a hand)
        fg = np.isin(lab, np.union1d(keep, big))
    fg = ndi.binary_fill_holes(fg)

    out = np.zeros((Hk, Wk), np.uint8)  # background
    out[fg] = LABEL["torso"]
    chin_v = gk.v_of(gk.chin)
    head = head_ellipse(gk, a, v, 1.3) & (v < chin_v)
    out[fg & head] = LABEL["hair"]
    neck = (np.abs(a - gk.a_of(gk.chin)) < 0.32 * gk.width) & (v > chin_v - 0.5 * gk.d) & (v < chin_v + 0.6 * gk.d)
    out[fg & neck & ~face_k] = LABEL["neck"]
    if k > 1:
        out = np.repeat(np.repeat(out, k, 0), k, 1)[:H, :W]
    out = np.ascontiguousarray(out)

    # full resolution: face polygon, fringe (non-skin forehead pixels → hair), inside mouth
    poly = g.face_polygon()
    face = polygon_mask(poly, H, W)
    brow_v = min(g.v_of(p) for p in lms[17:27])
    x0, x1 = int(max(0, np.floor(poly[:, 0].min()))), int(min(W, np.ceil(poly[:, 0].max()) + 1))
    y0, y1 = int(max(0, np.floor(poly[:, 1].min()))), int(min(H, np.ceil(poly[:, 1].max()) + 1))
    out[face] = LABEL["face"]
    skin_y = None
    if x1 > x0 and y1 > y0:
        skin = np.zeros((H, W), bool)
        for p in skin_mask_polys(lms):
            skin |= polygon_mask(p, H, W)
        box = (slice(y0, y1), slice(x0, x1))
        ycc = _ycbcr(img[box])
        sk = ycc[skin[box]] if skin[box].sum() >= 20 else ycc[face[box]]
        if len(sk):
            med = np.median(sk, 0)
            skin_y = float(med[0])
            spread = np.maximum(1.4826 * np.median(np.abs(sk - med), 0), np.array([12.0, 4.0, 4.0]))
            dist = np.sqrt((((ycc - med) / (spread * np.array([2.5, 1.0, 1.0]))) ** 2).sum(-1))
            _, v_full = _coords_box(g, y0, y1, x0, x1)
            fringe = face[box] & (v_full < brow_v) & (dist > 3.5)
            sub = out[box]
            sub[fringe] = LABEL["hair"]
    out[inside_mouth_mask(img, lms, skin_y)] = LABEL["mouth"]
    return out


def inside_mouth_mask(img: np.ndarray, lms: np.ndarray, skin_y: Optional[float] = None, *,
                      dark: float = 0.55, grow: float = 0.06) -> np.ndarray:
    """Inside of the mouth bool [H,W] of one frame (uint8 [H,W,3]) from its 68 landmarks: the inner-lip polygon
    (60–67) plus the dark pixels of the opening — luma below ``dark`` × the skin's median luma ``skin_y`` (the
    cheeks' when None) inside the outer-lip polygon (48–59) grown by ``grow`` × the mouth width, connected to
    the inner-lip polygon or to each other across it, and grown by one pixel to take the gap's anti-aliased
    edge. Teeth stay where the polygon puts them; only the cavity, which is what an opening reveals, is
    added."""
    H, W = img.shape[:2]
    inner = polygon_mask(lms[60:68], H, W)
    outer_pts = lms[48:60]
    width = float(np.linalg.norm(lms[54] - lms[48]))
    if not np.isfinite(width) or width < 4:
        return inner
    pad = max(1.0, grow * width) + 2
    x0, x1 = int(max(0, np.floor(outer_pts[:, 0].min() - pad))), int(min(W, np.ceil(outer_pts[:, 0].max() + pad)))
    y0, y1 = int(max(0, np.floor(outer_pts[:, 1].min() - pad))), int(min(H, np.ceil(outer_pts[:, 1].max() + pad)))
    if x1 <= x0 or y1 <= y0:
        return inner
    box = (slice(y0, y1), slice(x0, x1))
    if skin_y is None:
        skin = np.zeros((H, W), bool)
        for p in skin_mask_polys(lms):
            skin |= polygon_mask(p, H, W)
        if skin.sum() < 20:
            return inner
        skin_y = float(np.median(_ycbcr(img[skin])[:, 0]))
    outer = polygon_mask(outer_pts - np.array([x0, y0]), y1 - y0, x1 - x0)
    outer = ndi.binary_dilation(outer, iterations=max(1, int(round(grow * width))))
    cavity = outer & (_ycbcr(img[box])[..., 0] < dark * skin_y)
    seed = inner[box]
    lab, n = ndi.label(cavity | seed)
    if n == 0:
        return inner
    keep = np.unique(lab[seed])
    grown = np.isin(lab, keep[keep > 0]) & cavity
    grown = ndi.binary_dilation(grown) & outer
    out = inner.copy()
    out[box] |= grown
    return out


def _coords_box(g: FaceGeometry, y0: int, y1: int, x0: int, x1: int):
    ys = np.arange(y0, y1, dtype=np.float32)[:, None] + 0.5 - g.origin[1]
    xs = np.arange(x0, x1, dtype=np.float32)[None, :] + 0.5 - g.origin[0]
    a = xs * np.float32(g.right[0]) + ys * np.float32(g.right[1])
    v = -(xs * np.float32(g.up[0]) + ys * np.float32(g.up[1]))
    return a, v


def background_pixels(labels: np.ndarray, margin: int = 3) -> np.ndarray:
    """Pixels that are background and at least ``margin`` px away from the person (bool [H,W]): the
    samples of the background plate (edges of the person are blurred in the frames)."""
    bg = labels == LABEL["background"]
    if margin <= 0:
        return bg
    return ndi.minimum_filter(bg.view(np.uint8), size=2 * margin + 1, mode="nearest").view(bool)


def colorize(labels: np.ndarray) -> np.ndarray:
    """Label map [H,W] → RGB [H,W,3] in the palette."""
    return PALETTE_RGB[labels]
