"""A procedural talking head made of 3-D Gaussians with known expression ground truth (DESIGN §6).

Frame: the head's own frame in OpenCV axes (x to the viewer's right, y down, z away from the viewer);
the face looks towards −z, the head centre is the origin, units are metres (head half-width ≈ 9 cm).

Expression coefficients (``EXPR_NAMES``) deform the canonical Gaussians analytically, and the 68 iBUG
landmarks are computed from the same parameters (the same helper functions), so images, parsing maps,
landmarks and ``expr.npy`` agree exactly. The first three coefficients are the speech articulation
(jaw opening, lip rounding, lip spreading), ``eye_open`` is the lid aperture that blinks close (its
complement is AU45); the others are facial action units (FACS, :data:`EXPR_AU`) from which the
emotion prototypes of :mod:`.speech` are built. All are ≈ in [0, 1] at full strength; ``lid_raise``
may be negative (drooping upper lids), and ``smile`` / the brow raisers / ``cheek_raise`` slightly
negative (slow idle motion).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

EXPR_NAMES = (
    "jaw_open", "lip_round", "lip_spread", "smile", "frown", "brow_inner_up", "brow_lower", "eye_open",
    "cheek_raise", "smirk", "brow_outer_up", "lid_raise", "lid_tighten", "nose_wrinkle", "lip_stretch",
    "lip_tighten", "lower_lip_down", "chin_raise",
)
EXPR = {n: i for i, n in enumerate(EXPR_NAMES)}
EXPR_AU = {
    "jaw_open": "AU26/27 jaw drop (+ speech)", "lip_round": "speech (AU18/22-like)", "lip_spread": "speech",
    "smile": "AU12 lip corner puller", "frown": "AU15 lip corner depressor", "brow_inner_up": "AU1 inner brow raiser",
    "brow_lower": "AU4 brow lowerer", "eye_open": "lid aperture (1 − AU45 blink)", "cheek_raise": "AU6 cheek raiser",
    "smirk": "unilateral AU12+AU14 (viewer's right corner)", "brow_outer_up": "AU2 outer brow raiser",
    "lid_raise": "AU5 upper lid raiser (negative: AU41/43 droop)", "lid_tighten": "AU7 lid tightener",
    "nose_wrinkle": "AU9 nose wrinkler (+AU10 upper lip raise)", "lip_stretch": "AU20 lip stretcher",
    "lip_tighten": "AU23/24 lip tightener/presser", "lower_lip_down": "AU16 lower lip depressor",
    "chin_raise": "AU17 chin raiser",
}
"""The facial action unit (FACS) each coefficient stands for."""
NEUTRAL_EXPR = np.zeros(len(EXPR_NAMES), dtype=np.float32)
NEUTRAL_EXPR[EXPR["eye_open"]] = 1.0

PARTS = ("skin", "eye", "iris", "brow", "nose", "lips", "mouth", "teeth", "hair", "neck", "torso")
PART = {n: i for i, n in enumerate(PARTS)}
# parsing class of each part (DESIGN §5.1 palette order: face, mouth, neck, torso, hair)
PARSING_CLASSES = ("face", "mouth", "neck", "torso", "hair")
PART_TO_CLASS = {
    "skin": 0, "eye": 0, "iris": 0, "brow": 0, "nose": 0, "lips": 0, "mouth": 1, "teeth": 1, "hair": 4, "neck": 2,
    "torso": 3,
}

# -- magnitudes of the action units at coefficient 1 (metres) -------------------------------------
BROW_INNER_UP = 0.014  # AU1: medial brow raise
BROW_OUTER_UP = 0.013  # AU2: lateral brow raise
BROW_LOWER = 0.012  # AU4: brow lowering (medial end)
BROW_TOGETHER = 0.004  # AU4: brows pulled towards the midline
EYE_HALF_H = 0.007  # neutral half-aperture of the eye
SMILE_LIFT, SMILE_WIDEN = 0.014, 0.32  # AU12: corner lift, relative widening
FROWN_DROP = 0.011  # AU15: corner depression
STRETCH_WIDEN, STRETCH_DROP = 0.45, 0.003  # AU20
TIGHTEN_NARROW, TIGHTEN_THIN = 0.28, 0.65  # AU23/24: relative narrowing, lip thinning
SMIRK_LIFT, SMIRK_OUT = 0.018, 0.010  # unilateral AU12+14
NOSE_LIFT, UPPER_LIP_RAISE = 0.006, 0.006  # AU9/10
LOWER_LIP_DROP = 0.009  # AU16
CHIN_RAISE = 0.005  # AU17: chin boss and lower lip pushed up
CHEEK_LIFT = 0.007  # AU6


@dataclass
class HeadGaussians:
    """Activated Gaussian parameters ready for :func:`ua3dtalk.render.rasterize` (N Gaussians).

    means [N,3], quats [N,4] (wxyz), scales [N,3], opacities [N], colors [N,3] RGB in [0,1],
    part [N] long index into ``PARTS``.
    """

    means: torch.Tensor
    quats: torch.Tensor
    scales: torch.Tensor
    opacities: torch.Tensor
    colors: torch.Tensor
    part: torch.Tensor

    def __len__(self) -> int:
        return self.means.shape[0]


@dataclass
class MouthShape:
    """The mouth of one expression (metres, head frame; see :meth:`ProceduralHead.mouth_shape`)."""

    my: float  # y of the lip meeting line at the centre
    hw: float  # half width
    op: float  # jaw opening
    gap: float  # half the vertical gap between the lips
    lift: float  # bilateral corner lift (+ = up)
    lift_r: float  # extra lift of the viewer's right corner (smirk)
    out_r: float  # extra outward pull of the viewer's right corner
    up_raise: float  # upper lip raise at the centre (AU10)
    lo_drop: float  # lower lip depression at the centre (AU16)
    thick: float  # lip thickness factor (1 neutral, < 1 pressed)
    push: float  # forward push of the lips (+ = towards the viewer)
    chin: float = 0.0  # chin raise (AU17, metres)

    def x(self, u):
        return u * self.hw + self.out_r * np.clip(u, 0, None) ** 1.2

    def mid(self, u):
        """y of the line where the lips meet (closed mouth) at u ∈ [-1, 1]."""
        return self.my - self.lift * u**2 - self.lift_r * np.clip(u, 0, None) ** 1.2 - 0.6 * self.chin * (1 - u**2)

    def bow(self, u):
        return 0.0035 * (1 - u**2) * self.thick

    def inner_up(self, u):
        """y of the inner edge of the upper lip."""
        return self.mid(u) - self.gap - self.up_raise * (1 - u**2)

    def inner_lo(self, u):
        return self.mid(u) + self.gap + self.lo_drop * (1 - u**2)


def _fib_sphere(n: int, rng: np.random.Generator) -> np.ndarray:
    i = np.arange(n) + 0.5
    phi = np.arccos(1 - 2 * i / n)
    theta = math.pi * (1 + 5**0.5) * i + rng.uniform(0, 2 * math.pi)
    return np.stack([np.cos(theta) * np.sin(phi), np.sin(theta) * np.sin(phi), np.cos(phi)], -1)


def _quat_from_z(normals: np.ndarray) -> np.ndarray:
    """Quaternions (wxyz) rotating +z onto each unit normal (so a flat Gaussian lies on the surface)."""
    z = np.array([0.0, 0.0, 1.0])
    axis = np.cross(np.broadcast_to(z, normals.shape), normals)
    s = np.linalg.norm(axis, axis=-1, keepdims=True)
    c = normals @ z
    ang = np.arctan2(s[:, 0], c)
    axis = np.where(s > 1e-9, axis / np.maximum(s, 1e-9), np.array([1.0, 0.0, 0.0]))
    return np.concatenate([np.cos(ang / 2)[:, None], axis * np.sin(ang / 2)[:, None]], -1)


def _bump(x, y, cx, cy, sx, sy):
    return np.exp(-0.5 * (((x - cx) / sx) ** 2 + ((y - cy) / sy) ** 2))


class ProceduralHead:
    """Canonical Gaussians of one identity plus the analytic expression deformation.

    Args:
        seed: identity seed (shape proportions, skin/hair/iris colours, hair style).
        n_gaussians: approximate total number of Gaussians (the parts are scaled proportionally).
    """

    def __init__(self, seed: int = 0, n_gaussians: int = 4000):
        rng = np.random.default_rng(seed)
        self.seed = seed
        self.rx, self.ry, self.rz = 0.085 * rng.uniform(0.92, 1.08), 0.112 * rng.uniform(0.94, 1.06), 0.1
        self.skin_rgb = np.array([0.93, 0.74, 0.62]) * rng.uniform(0.55, 1.05) + rng.normal(0, 0.03, 3)
        self.hair_rgb = rng.choice([[0.12, 0.08, 0.05], [0.35, 0.22, 0.1], [0.8, 0.65, 0.35], [0.05, 0.05, 0.05],
                                    [0.55, 0.2, 0.1]]) * rng.uniform(0.8, 1.2)
        self.iris_rgb = rng.choice([[0.25, 0.15, 0.08], [0.2, 0.4, 0.65], [0.25, 0.45, 0.25]])
        self.lip_rgb = np.clip(self.skin_rgb * np.array([1.0, 0.6, 0.6]) + np.array([0.05, -0.05, -0.02]), 0, 1)
        # hair covers y/ry below this (above the forehead), high enough for fully raised brows
        self.hair_line = rng.uniform(-0.85, -0.62)
        self.mouth_y = 0.52 * self.ry * rng.uniform(0.95, 1.05)
        self.mouth_w = 0.024 * rng.uniform(0.9, 1.15)
        self.eye_y = -0.12 * self.ry
        self.eye_x = 0.36 * self.rx * rng.uniform(0.93, 1.07)
        self._build(rng, n_gaussians)

    # -- canonical geometry --------------------------------------------------------------------
    def _surface_z(self, x, y):
        """z of the front ellipsoid surface at (x, y) (negative: towards the camera)."""
        r = 1 - (x / self.rx) ** 2 - (y / self.ry) ** 2
        return -self.rz * np.sqrt(np.clip(r, 1e-4, None))

    def _front_z(self, x, y):
        """z for mouth parts: in front of the skin splats whose centres lie above them (Gaussians are
        sorted by centre depth, and the face surface recedes towards the chin)."""
        return np.minimum(self._surface_z(x, y), self._surface_z(x, y - 0.018)) - 0.001

    def _brow_base(self, u):
        """Canonical brow curve at u ∈ [-1 (inner), 1 (outer)]: (|x|, y)."""
        return self.eye_x + 0.016 * u, self.eye_y - 0.022 - 0.004 * (1 - u**2)

    def _build(self, rng, n):
        parts, means, normals, sc, cols, ops = [], [], [], [], [], []

        def add(part, m, nrm, s, c, o):
            k = len(m)
            parts.append(np.full(k, PART[part]))
            means.append(m)
            normals.append(nrm)
            sc.append(np.broadcast_to(s, (k, 3)) if np.ndim(s) == 1 else s)
            cols.append(np.clip(np.broadcast_to(c, (k, 3)), 0, 1))
            ops.append(np.broadcast_to(o, (k,)))

        ns = max(int(n * 0.52), 200)
        d = _fib_sphere(ns, rng)
        m = d * np.array([self.rx, self.ry, self.rz])
        nrm = d / np.array([self.rx, self.ry, self.rz]) ** 2
        nrm /= np.linalg.norm(nrm, axis=-1, keepdims=True)
        spacing = math.sqrt(4 * math.pi * self.rx * self.ry / ns)
        hair = (d[:, 1] < self.hair_line) | (d[:, 2] > 0.25) | ((d[:, 1] < 0.1) & (np.abs(d[:, 0]) > 0.9))
        shade = 0.72 + 0.28 * np.clip(-nrm[:, 2], 0, 1)[:, None]
        skin_c = self.skin_rgb * shade + rng.normal(0, 0.015, (ns, 3))
        hair_c = self.hair_rgb * (0.8 + 0.4 * rng.random((ns, 1)))
        s_skin = np.array([0.75 * spacing, 0.75 * spacing, 0.12 * spacing])
        add("skin", m[~hair], nrm[~hair], s_skin, skin_c[~hair], 0.97)
        hm = m[hair] * 1.04
        add("hair", hm, nrm[hair], s_skin * np.array([1.3, 1.3, 2.0]), hair_c[hair], 0.98)

        # eyes: sclera disc, iris, pupil
        ne = max(int(n * 0.025), 12)
        for sx in (-1, 1):
            t = rng.random((ne, 2))
            r = np.sqrt(t[:, 0]) * 0.014
            a = 2 * math.pi * t[:, 1]
            x = sx * self.eye_x + r * np.cos(a)
            y = self.eye_y + 0.5 * r * np.sin(a)
            z = self._surface_z(x, y) - 0.002
            add("eye", np.stack([x, y, z], -1), np.tile([0, 0, -1.0], (ne, 1)), np.array([0.004, 0.003, 0.001]),
                np.array([0.95, 0.95, 0.92]), 0.95)
            x = sx * self.eye_x + rng.normal(0, 0.002, ne // 2)
            y = self.eye_y + rng.normal(0, 0.002, ne // 2)
            add("iris", np.stack([x, y, self._surface_z(x, y) - 0.0035], -1), np.tile([0, 0, -1.0], (ne // 2, 1)),
                np.array([0.0028, 0.0028, 0.001]), np.array(self.iris_rgb) * 0.6, 0.98)
        # brows
        nb = max(int(n * 0.02), 10)
        for sx in (-1, 1):
            u = np.linspace(-1, 1, nb)
            ax, y = self._brow_base(u)
            x = sx * ax
            add("brow", np.stack([x, y, self._surface_z(x, y) - 0.002], -1), np.tile([0, 0, -1.0], (nb, 1)),
                np.array([0.0035, 0.0018, 0.001]), self.hair_rgb * 0.8, 0.95)
        # nose ridge and tip
        nn = max(int(n * 0.04), 16)
        u = rng.random(nn)
        y = self.eye_y + 0.01 + u * (self.mouth_y - self.eye_y - 0.03)
        x = rng.normal(0, 0.004, nn) * (0.5 + u)
        z = self._surface_z(x, y) - 0.022 * u**1.5 - 0.002
        add("nose", np.stack([x, y, z], -1), np.tile([0, 0, -1.0], (nn, 1)), np.array([0.006, 0.007, 0.004]),
            self.skin_rgb * 0.88, 0.9)
        nose_u = u
        # inside mouth (dark cavity) and teeth: a unit disc, mapped between the lips at deform time
        nm = max(int(n * 0.06), 24)
        t = rng.random((nm, 2))
        r, a = np.sqrt(t[:, 0]), 2 * math.pi * t[:, 1]
        self._mouth_uv = np.stack([r * np.cos(a), r * np.sin(a)], -1)
        add("mouth", np.zeros((nm, 3)), np.tile([0, 0, -1.0], (nm, 1)), np.array([0.004, 0.004, 0.002]),
            np.array([0.16, 0.03, 0.04]), 0.99)
        nt = max(int(n * 0.02), 8)
        self._teeth_u = np.linspace(-0.75, 0.75, nt)
        add("teeth", np.zeros((nt, 3)), np.tile([0, 0, -1.0], (nt, 1)), np.array([0.0035, 0.002, 0.001]),
            np.array([0.96, 0.95, 0.9]), 0.97)
        # lips: upper and lower arcs of a parametric mouth outline
        nl = max(int(n * 0.06), 24)
        self._lip_u = np.concatenate([np.linspace(-1, 1, nl // 2), np.linspace(-1, 1, nl - nl // 2)])
        self._lip_upper = np.arange(nl) < nl // 2
        add("lips", np.zeros((nl, 3)), np.tile([0, 0, -1.0], (nl, 1)), np.array([0.004, 0.0032, 0.002]),
            self.lip_rgb, 0.97)
        # neck and torso
        nk = max(int(n * 0.1), 30)
        t = rng.random((nk, 2))
        ang = math.pi * (0.5 + t[:, 0])  # front half-cylinder
        y = 0.7 * self.ry + t[:, 1] * 0.12
        x, z = 0.05 * np.cos(ang), -0.045 * np.abs(np.sin(ang)) + 0.02
        add("neck", np.stack([x, y, z], -1), np.stack([np.cos(ang), 0 * ang, -np.abs(np.sin(ang))], -1),
            np.array([0.01, 0.012, 0.002]), self.skin_rgb * 0.8, 0.97)
        nto = max(n - sum(len(p) for p in parts), 30)
        t = rng.random((nto, 2))
        x = (t[:, 0] - 0.5) * 0.34
        y = 0.17 + 1.6 * x**2 + t[:, 1] * 0.15
        shirt = rng.uniform(0.1, 0.8, 3)
        add("torso", np.stack([x, y, 0.0 * x - 0.01], -1), np.tile([0, 0, -1.0], (nto, 1)),
            np.array([0.014, 0.014, 0.003]), shirt, 0.99)

        self.part = torch.from_numpy(np.concatenate(parts)).long()
        p = self.part.numpy()
        self._means0 = np.concatenate(means)
        self._quats = torch.from_numpy(_quat_from_z(np.concatenate(normals))).float()
        self._scales0 = np.concatenate(sc).astype(np.float64)
        self._colors0 = np.concatenate(cols)
        self.colors = torch.from_numpy(self._colors0).float()
        self.opacities = torch.from_numpy(np.concatenate(ops).copy()).float()
        m0 = self._means0
        x0, y0 = m0[:, 0], m0[:, 1]
        skin = (p == PART["skin"]) & (m0[:, 2] < 0)  # the face side of the skin
        # per-Gaussian deformation weights of the lower face around the mouth/jaw
        lower = (m0[:, 2] < 0.02) & (y0 < 0.95 * self.ry) & (p != PART["neck"]) & (p != PART["torso"])
        self._jaw_w, self._chin_w = (w * lower for w in self._lower_face_weights(x0, y0))
        # AU6: the cheeks (and the lower lids, see eye_aperture) rise
        self._cheek_w = _bump(np.abs(x0), y0, 0.5 * self.rx, 0.25 * self.ry, 0.022, 0.02) * skin
        # skin around the mouth corners follows the corners (nasolabial region), left and right
        cy = self.mouth_y
        self._corner_w = [_bump(x0, y0, s * self.mouth_w, cy, 0.011, 0.012) * 0.7 * skin for s in (-1, 1)]
        # AU9: skin beside the nose base rises with the nostrils; wrinkles darken the nose bridge
        self._nasal_w = _bump(np.abs(x0), y0, 0.012, self.mouth_y - 0.022, 0.01, 0.01) * skin
        self._nose_u = np.zeros(len(p))
        self._nose_u[p == PART["nose"]] = nose_u
        self._bridge_w = (_bump(x0, y0, 0.0, self.eye_y + 0.006, 0.007, 0.006) * skin
                          + 0.5 * _bump(x0, y0, 0.0, self.eye_y + 0.012, 0.008, 0.008) * (p == PART["nose"]))
        # AU4: vertical furrows between the brows
        self._glabella_w = _bump(np.abs(x0), y0, 0.006, self.eye_y - 0.02, 0.003, 0.007) * skin
        # AU1/2: horizontal forehead lines (a cosine pattern over the forehead)
        fy = self.eye_y - 0.045
        self._forehead_w = (_bump(x0, y0, 0.0, fy, 0.03, 0.012) * skin
                            * (0.5 + 0.5 * np.cos(2 * math.pi * (y0 - fy) / 0.009)))
        # brows: position along the brow (inner → outer) and side
        self._brow_sel = p == PART["brow"]
        self._brow_u = (np.abs(x0[self._brow_sel]) - self.eye_x) / 0.016
        self._brow_side = np.sign(x0[self._brow_sel])

    # -- shared analytic pieces (Gaussians and landmarks use the same ones) --------------------------
    def _lower_face_weights(self, x, y):
        """How much a point of the lower face follows the jaw opening and the chin raise (AU17).

        The mandible: below a line through the mouth that rises towards the ears, with a motion that
        grows with the distance from the jaw hinge (a rotation about the ears, seen from the front)."""
        ax = np.clip(np.abs(x) / self.rx, 0, 1)
        top = self.mouth_y - 0.005 - ax**2 * (self.mouth_y - 0.035 - self.eye_y)
        hinge = self.eye_y + 0.02
        jaw = np.clip((y - top) / 0.045, 0, 1) * np.clip((y - hinge) / (0.9 * self.ry - hinge), 0, 1)
        chin = np.clip((y - self.mouth_y - 0.008) / 0.025, 0, 1) * np.exp(-((x / (0.3 * self.rx)) ** 2))
        return jaw, chin

    def lower_face_shift(self, x, y, ms: "MouthShape"):
        """Vertical shift of lower-face points (canonical x, y) by the jaw opening and the chin raise."""
        jaw, chin = self._lower_face_weights(x, y)
        return jaw * ms.op * 0.9 - chin * ms.chin

    def brow_offset(self, u, e):
        """(outward dx, dy) of brow points at u ∈ [-1 (inner), 1 (outer)] for coefficients ``e``."""
        wi, wo = 0.5 * (1 - u), 0.5 * (1 + u)
        dy = (-BROW_INNER_UP * e[EXPR["brow_inner_up"]] * (0.2 + 0.8 * wi)
              - BROW_OUTER_UP * e[EXPR["brow_outer_up"]] * (0.25 + 0.75 * wo)
              + BROW_LOWER * e[EXPR["brow_lower"]] * (0.45 + 0.55 * wi)
              + 0.004 * e[EXPR["nose_wrinkle"]] * wi
              + 0.0015 * e[EXPR["cheek_raise"]] * wo)
        dx = -BROW_TOGETHER * (e[EXPR["brow_lower"]] + 0.3 * e[EXPR["nose_wrinkle"]]) * (0.3 + 0.7 * wi)
        dx = dx + 0.002 * e[EXPR["brow_outer_up"]] * wo
        return dx, dy

    @staticmethod
    def eye_aperture(e) -> tuple[float, float]:
        """(upper, lower) lid aperture factors (1 = neutral half-height ``EYE_HALF_H`` above/below)."""
        eo = float(np.clip(e[EXPR["eye_open"]], 0.0, 1.5))
        up = 1 + 0.8 * e[EXPR["lid_raise"]] - 0.2 * e[EXPR["lid_tighten"]] - 0.12 * e[EXPR["cheek_raise"]] \
            - 0.1 * e[EXPR["brow_lower"]]
        lo = 1 + 0.1 * e[EXPR["lid_raise"]] - 0.6 * e[EXPR["lid_tighten"]] - 0.5 * e[EXPR["cheek_raise"]] \
            - 0.2 * e[EXPR["nose_wrinkle"]]
        return eo * float(np.clip(up, 0.05, 1.8)), eo * float(np.clip(lo, 0.05, 1.5))

    def mouth_shape(self, e: np.ndarray) -> MouthShape:
        """The mouth for coefficients ``e`` (articulation and action units combined)."""
        jaw = float(e[EXPR["jaw_open"]])
        hw = self.mouth_w * max(0.5, 1 + 0.3 * e[EXPR["lip_spread"]] - 0.3 * e[EXPR["lip_round"]]
                                + SMILE_WIDEN * e[EXPR["smile"]] + STRETCH_WIDEN * e[EXPR["lip_stretch"]]
                                - TIGHTEN_NARROW * e[EXPR["lip_tighten"]] + 0.06 * e[EXPR["frown"]])
        op = 0.028 * max(jaw, 0.0) * (1 + 0.25 * e[EXPR["lip_round"]])
        chin = CHIN_RAISE * max(e[EXPR["chin_raise"]], 0.0)
        lift = SMILE_LIFT * e[EXPR["smile"]] - FROWN_DROP * e[EXPR["frown"]] - STRETCH_DROP * e[EXPR["lip_stretch"]]
        return MouthShape(
            my=self.mouth_y + 0.5 * op, hw=hw, op=op, gap=self.lip_gap(op), lift=lift,
            lift_r=SMIRK_LIFT * e[EXPR["smirk"]], out_r=SMIRK_OUT * e[EXPR["smirk"]],
            up_raise=UPPER_LIP_RAISE * max(e[EXPR["nose_wrinkle"]], 0.0),
            lo_drop=LOWER_LIP_DROP * max(e[EXPR["lower_lip_down"]], 0.0),
            chin=chin,
            thick=1 - TIGHTEN_THIN * float(np.clip(e[EXPR["lip_tighten"]], 0, 1)),
            push=0.004 * e[EXPR["lip_round"]])

    @staticmethod
    def lip_gap(opening: float) -> float:
        """Half the vertical gap between the lips: they part as soon as the jaw opens."""
        return 0.5 * opening + 0.002 * min(opening / 0.004, 1.0)

    def _lip_points(self, ms: MouthShape, u, upper):
        """Centre lines of the upper/lower lip Gaussians at u."""
        x = ms.x(u)
        y = np.where(upper, ms.inner_up(u) - ms.bow(u), ms.inner_lo(u) + ms.bow(u))
        z = self._front_z(x, y) - 0.002 - 0.003 * (1 - u**2) - ms.push
        return np.stack([x, y, z], -1)

    def _corner_shift(self, ms: MouthShape, e):
        """Displacement of the two mouth corners (viewer's left, right) by the expression, jaw excluded."""
        hw0 = self.mouth_w * (1 + 0.3 * e[EXPR["lip_spread"]] - 0.3 * e[EXPR["lip_round"]])
        out = []
        for s in (-1.0, 1.0):
            dx = ms.x(s) - s * hw0
            dy = ms.mid(s) - ms.my
            out.append((dx, dy))
        return out

    def nose_lift(self, t, e):
        """Upward shift of nose points at t ∈ [0 (bridge top), 1 (tip)] (AU9)."""
        return NOSE_LIFT * max(e[EXPR["nose_wrinkle"]], 0.0) * t**2

    # -- expression ----------------------------------------------------------------------------
    def deform(self, expr) -> HeadGaussians:
        """Gaussians of the head showing expression ``expr`` [len(EXPR_NAMES)]."""
        e = np.asarray(expr, dtype=np.float64)
        m = self._means0.copy()
        s = self._scales0.copy()
        p = self.part.numpy()
        ms = self.mouth_shape(e)
        # jaw: lower face follows the lower lip; mouth corners drag the skin around them
        m[:, 1] += self._jaw_w * ms.op * 0.9 - self._chin_w * ms.chin
        for w, (dx, dy) in zip(self._corner_w, self._corner_shift(ms, e)):
            m[:, 0] += w * dx
            m[:, 1] += w * dy
        m[:, 1] -= self._cheek_w * CHEEK_LIFT * (e[EXPR["cheek_raise"]] + 0.4 * e[EXPR["smile"]]
                                                + 0.3 * e[EXPR["nose_wrinkle"]])
        m[:, 1] -= self._nasal_w * NOSE_LIFT * 0.8 * max(e[EXPR["nose_wrinkle"]], 0.0)
        # nose (AU9: the lower nose rises, the wings flare)
        sel = p == PART["nose"]
        m[sel, 1] -= self.nose_lift(self._nose_u[sel], e)
        m[sel, 0] *= 1 + 0.25 * max(e[EXPR["nose_wrinkle"]], 0.0) * self._nose_u[sel] ** 2
        # brows
        sel = self._brow_sel
        dx, dy = self.brow_offset(self._brow_u, e)
        m[sel, 0] += self._brow_side * dx
        m[sel, 1] += dy
        # eyes: sclera opens/closes around the eye centre line (upper and lower lids separately); the
        # iris only gets covered
        up, lo = self.eye_aperture(e)
        for part, cap in (("eye", False), ("iris", True)):
            sel = p == PART[part]
            dy = m[sel, 1] - self.eye_y
            f = np.where(dy < 0, up, lo)
            f = np.minimum(f, 1.0) if cap else f
            m[sel, 1] = self.eye_y + dy * f
            s[sel, 1] *= max(min(up, lo, 1.0) if cap else min(0.5 * (up + lo), 1.0), 0.02)
        # everything moved so far slides along the face surface (neither floats in front of it nor sinks)
        m0 = self._means0
        moved = ((m[:, 0] != m0[:, 0]) | (m[:, 1] != m0[:, 1])) & (m0[:, 2] < 0)
        m[moved, 2] += self._surface_z(m[moved, 0], m[moved, 1]) - self._surface_z(m0[moved, 0], m0[moved, 1])
        if min(up, lo) < 0.15 or up + lo < 0.35:  # (almost) closed eyes: hide behind the lid (skin)
            m[(p == PART["eye"]) | (p == PART["iris"]), 2] += 0.004
        # lips
        sel = p == PART["lips"]
        m[sel] = self._lip_points(ms, self._lip_u, self._lip_upper)
        s[sel, 1] *= 0.45 + 0.55 * ms.thick  # pressed lips look thinner
        # inside mouth: the disc mapped between the inner lip edges; slightly behind the lips
        sel = p == PART["mouth"]
        uv = self._mouth_uv
        a, b = ms.inner_up(uv[:, 0]) - 0.0005, ms.inner_lo(uv[:, 0]) + 0.0005
        x, y = ms.x(uv[:, 0]) * 0.9, 0.5 * (a + b) + uv[:, 1] * 0.5 * (b - a)
        m[sel] = np.stack([x, y, self._front_z(x, y)], -1)  # over the skin, under the lips
        s[sel, 1] = np.minimum(s[sel, 1], 0.125 * (b - a) + 1e-5)
        # upper teeth: fixed to the skull, shown when the jaw drops or the upper lip rises
        sel = p == PART["teeth"]
        ut = self._teeth_u
        a, b = ms.inner_up(ut) - 0.0005, ms.inner_lo(ut) + 0.0005
        x = ms.x(ut) * 0.8
        y = np.minimum(self.mouth_y + 0.0025 + 0.0015 * min(ms.op / 0.01, 1), a + 0.0035)
        m[sel] = np.stack([x, y, self._front_z(x, y) - 0.0005], -1)
        s[sel, 1] = np.minimum(0.002, 0.125 * (b - a) + 1e-5)
        # wrinkles and furrows (colour only)
        colors = self.colors
        shade = (0.3 * max(e[EXPR["nose_wrinkle"]], 0.0) * self._bridge_w
                 + 0.25 * max(e[EXPR["brow_lower"]], 0.0) * self._glabella_w
                 + 0.12 * max(e[EXPR["brow_inner_up"]] + e[EXPR["brow_outer_up"]], 0.0) * self._forehead_w)
        if shade.any():
            colors = torch.from_numpy(self._colors0 * (1 - np.clip(shade, 0, 0.6))[:, None]).float()
        return HeadGaussians(
            means=torch.from_numpy(m).float(), quats=self._quats, scales=torch.from_numpy(s).float(),
            opacities=self.opacities, colors=colors, part=self.part,
        )

    def landmarks3d(self, expr) -> np.ndarray:
        """The 68 iBUG landmarks [68,3] (head frame) for expression ``expr``."""
        e = np.asarray(expr, dtype=np.float64)
        ms = self.mouth_shape(e)
        pts = []
        # 0-16 jaw contour: from the right ear (viewer's left) under the chin to the left ear
        a = np.linspace(-0.5 * math.pi * 0.95, 0.5 * math.pi * 0.95, 17)
        x = self.rx * 0.97 * np.sin(a)
        y = self.eye_y + 0.01 + (0.9 * self.ry - self.eye_y) * np.cos(a) ** 1.3
        y = y + self.lower_face_shift(x, y, ms)
        z = self._surface_z(x * 0.9, np.minimum(y, 0.9 * self.ry) * 0.9)
        pts.append(np.stack([x, y, z], -1))
        # 17-21 brow on the viewer's left (outer → inner), 22-26 on the right (inner → outer)
        for sx in (-1, 1):
            u = np.linspace(1, -1, 5) if sx < 0 else np.linspace(-1, 1, 5)
            ax, y = self._brow_base(u)
            dx, dy = self.brow_offset(u, e)
            x, y = sx * (ax + dx), y + dy
            pts.append(np.stack([x, y, self._surface_z(x, y)], -1))
        # 27-30 nose bridge, 31-35 nostrils
        t = np.linspace(0, 1, 4)
        y = self.eye_y + 0.01 + t * (self.mouth_y - self.eye_y - 0.035) - self.nose_lift(t, e)
        pts.append(np.stack([0 * t, y, self._surface_z(0 * t, y) - 0.022 * t**1.5], -1))
        x = np.linspace(-0.012, 0.012, 5) * (1 + 0.25 * max(e[EXPR["nose_wrinkle"]], 0.0))
        y = np.full(5, self.mouth_y - 0.022) + 0.002 * (1 - (x / 0.012) ** 2) - self.nose_lift(1.0, e)
        pts.append(np.stack([x, y, self._surface_z(x, y) - 0.01], -1))
        # 36-41 eye on the viewer's left: outer corner, upper lid ×2, inner corner, lower lid ×2;
        # 42-47 on the right: inner corner, upper ×2, outer corner, lower ×2 (iBUG order)
        up, lo = self.eye_aperture(e)
        ang = np.array([0, 1, 2, 3, 4, 5]) * math.pi / 3  # corner, upper, upper, corner, lower, lower
        sn = np.sin(ang)
        for sx in (-1, 1):
            x = sx * self.eye_x - 0.014 * np.cos(ang)  # starts at the viewer's-left corner
            y = self.eye_y - EYE_HALF_H * sn * np.where(sn > 0, up, lo)
            pts.append(np.stack([x, y, self._surface_z(x, y) - 0.002], -1))
        # 48-59 outer lip contour (corners where the lips meet), 60-67 inner (the inner lip edges)
        u_out = np.array([-1, -0.66, -0.33, 0, 0.33, 0.66, 1, 0.66, 0.33, 0, -0.33, -0.66])
        upper = np.array([1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0], bool)
        outer = self._lip_points(ms, u_out, upper)
        edge = 0.004 * ms.thick * (1 - u_out**2) ** 0.5
        outer[:, 1] += np.where(upper, -edge, edge)
        for i in (0, 6):  # corners: on the meeting line
            outer[i, 1] = ms.mid(u_out[i])
        pts.append(outer)
        u_in = np.array([-0.95, -0.33, 0, 0.33, 0.95, 0.33, 0, -0.33])
        up_in = np.array([1, 1, 1, 1, 1, 0, 0, 0], bool)
        y = np.where(up_in, ms.inner_up(u_in), ms.inner_lo(u_in))
        y[[0, 4]] = 0.5 * (ms.inner_up(u_in[[0, 4]]) + ms.inner_lo(u_in[[0, 4]]))
        x = ms.x(u_in)
        z = self._front_z(x, y) - 0.002 - 0.003 * (1 - u_in**2) - ms.push
        pts.append(np.stack([x, y, z], -1))
        out = np.concatenate(pts, 0)
        assert out.shape == (68, 3)
        return out
