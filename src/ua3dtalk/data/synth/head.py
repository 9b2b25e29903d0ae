"""A procedural talking head made of 3-D Gaussians with known expression ground truth (DESIGN §6).

Frame: the head's own frame in OpenCV axes (x to the viewer's right, y down, z away from the viewer);
the face looks towards −z, the head centre is the origin, units are metres (head half-width ≈ 9 cm).

Expression coefficients (``EXPR_NAMES``, all ≈ in [0, 1] except where noted) deform the canonical
Gaussians analytically, and the 68 iBUG landmarks are computed from the same parameters, so images,
parsing maps, landmarks and ``expr.npy`` agree exactly.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

EXPR_NAMES = (
    "jaw_open", "lip_round", "lip_spread", "smile", "frown", "brow_raise", "brow_furrow", "eye_open", "cheek", "smirk",
)
EXPR = {n: i for i, n in enumerate(EXPR_NAMES)}
NEUTRAL_EXPR = np.array([0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0], dtype=np.float32)

PARTS = ("skin", "eye", "iris", "brow", "nose", "lips", "mouth", "teeth", "hair", "neck", "torso")
PART = {n: i for i, n in enumerate(PARTS)}
# parsing class of each part (DESIGN §5.1 palette order: face, mouth, neck, torso, hair)
PARSING_CLASSES = ("face", "mouth", "neck", "torso", "hair")
PART_TO_CLASS = {
    "skin": 0, "eye": 0, "iris": 0, "brow": 0, "nose": 0, "lips": 0, "mouth": 1, "teeth": 1, "hair": 4, "neck": 2,
    "torso": 3,
}


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
        self.hair_line = rng.uniform(-0.55, -0.3)  # hair covers y/ry below this (i.e. above the forehead)
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
            r = np.sqrt(t[:, 0]) * np.array([[0.014]]).T[0]
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
            x = sx * (self.eye_x + 0.016 * u)
            y = self.eye_y - 0.022 - 0.004 * (1 - u**2)
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
        # inside mouth (dark cavity) and teeth: a unit disc, scaled by the mouth opening at deform time
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
        self._means0 = np.concatenate(means)
        self._quats = torch.from_numpy(_quat_from_z(np.concatenate(normals))).float()
        self._scales0 = np.concatenate(sc).astype(np.float64)
        self.colors = torch.from_numpy(np.concatenate(cols)).float()
        self.opacities = torch.from_numpy(np.concatenate(ops).copy()).float()
        # per-Gaussian deformation weights of the lower face around the mouth/jaw
        m0 = self._means0
        self._jaw_w = np.clip((m0[:, 1] - self.mouth_y + 0.005) / 0.05, 0, 1) * np.exp(
            -((m0[:, 0] / (0.75 * self.rx)) ** 2)) * (m0[:, 2] < 0.02) * (m0[:, 1] < 0.95 * self.ry)
        self._jaw_w[(self.part == PART["neck"]).numpy() | (self.part == PART["torso"]).numpy()] = 0
        self._cheek_w = np.exp(-(((np.abs(m0[:, 0]) - 0.5 * self.rx) / 0.02) ** 2
                                 + ((m0[:, 1] - 0.25 * self.ry) / 0.02) ** 2))
        self._cheek_w *= (self.part == PART["skin"]).numpy()

    # -- expression ----------------------------------------------------------------------------
    def mouth_geometry(self, e: np.ndarray):
        """Mouth centre y, half-width, opening (gap between lips) and corner lift for coefficients ``e``."""
        jaw = float(e[EXPR["jaw_open"]])
        half_w = self.mouth_w * (1 + 0.3 * e[EXPR["lip_spread"]] - 0.3 * e[EXPR["lip_round"]] + 0.1 * e[EXPR["smile"]])
        opening = 0.028 * jaw * (1 + 0.25 * e[EXPR["lip_round"]])
        lift = 0.008 * (e[EXPR["smile"]] - e[EXPR["frown"]])
        return self.mouth_y + 0.5 * opening, half_w, opening, lift

    @staticmethod
    def lip_gap(opening: float) -> float:
        """Half the vertical gap between the lips: they part as soon as the jaw opens."""
        return 0.5 * opening + 0.002 * min(opening / 0.004, 1.0)

    def _lip_points(self, e, u, upper):
        my, hw, op, lift = self.mouth_geometry(e)
        x = u * hw
        corner = np.abs(u) ** 2
        smirk = 0.006 * e[EXPR["smirk"]] * np.clip(u, 0, None) ** 2
        bow = 0.0035 * (1 - u**2)
        gap = self.lip_gap(op)
        y = np.where(upper, my - gap - bow, my + gap + bow) - lift * corner - smirk
        y = y - 0.003 * e[EXPR["cheek"]] * upper
        z = self._front_z(x, y) - 0.002 - 0.003 * (1 - u**2) - 0.004 * e[EXPR["lip_round"]]
        return np.stack([x, y, z], -1)

    def deform(self, expr) -> HeadGaussians:
        """Gaussians of the head showing expression ``expr`` [len(EXPR_NAMES)]."""
        e = np.asarray(expr, dtype=np.float64)
        m = self._means0.copy()
        s = self._scales0.copy()
        p = self.part.numpy()
        my, hw, op, lift = self.mouth_geometry(e)
        # jaw: lower face follows the lower lip
        y_old = m[:, 1].copy()
        m[:, 1] += self._jaw_w * op * 0.9
        front = (self._jaw_w > 0) & (m[:, 2] < 0)  # slide along the face surface, do not float in front
        m[front, 2] += self._surface_z(m[front, 0], m[front, 1]) - self._surface_z(m[front, 0], y_old[front])
        m[:, 1] -= self._cheek_w * 0.006 * (e[EXPR["cheek"]] + 0.5 * e[EXPR["smile"]])
        # brows
        for sx in (-1, 1):
            sel = (p == PART["brow"]) & (np.sign(m[:, 0]) == sx)
            inner = np.clip(1 - (np.abs(m[sel, 0]) - self.eye_x + 0.016) / 0.032, 0, 1)
            m[sel, 1] += -0.008 * e[EXPR["brow_raise"]] + 0.005 * e[EXPR["brow_furrow"]] * inner
            m[sel, 0] -= sx * 0.003 * e[EXPR["brow_furrow"]] * inner
        # eyes open/close around the eye centre line
        eo = float(np.clip(e[EXPR["eye_open"]], 0.0, 1.5))
        sel = (p == PART["eye"]) | (p == PART["iris"])
        m[sel, 1] = self.eye_y + (m[sel, 1] - self.eye_y) * eo
        s[sel, 1] *= max(eo, 0.02)
        m[sel, 2] += 0.004 * (eo < 0.15)  # fully closed: hide behind the lid (skin)
        # lips
        sel = p == PART["lips"]
        m[sel] = self._lip_points(e, self._lip_u, self._lip_upper)
        # inside mouth: an ellipse between the lips, scaled by the opening; slightly behind the lips
        sel = p == PART["mouth"]
        uv = self._mouth_uv
        ry = self.lip_gap(op) + 0.0005
        x, y = uv[:, 0] * hw * 0.9, my + uv[:, 1] * ry
        m[sel] = np.stack([x, y, self._front_z(x, y)], -1)  # over the skin, under the lips
        s[sel, 1] = np.minimum(s[sel, 1], 0.25 * ry + 1e-5)
        sel = p == PART["teeth"]
        x = self._teeth_u * hw * 0.8
        y = np.full_like(x, my - 0.5 * op + 0.0025 + 0.0015 * min(op / 0.01, 1))
        m[sel] = np.stack([x, y, self._front_z(x, y) - 0.0005], -1)
        s[sel, 1] = min(0.002, 0.25 * ry + 1e-5)
        return HeadGaussians(
            means=torch.from_numpy(m).float(), quats=self._quats, scales=torch.from_numpy(s).float(),
            opacities=self.opacities, colors=self.colors, part=self.part,
        )

    def landmarks3d(self, expr) -> np.ndarray:
        """The 68 iBUG landmarks [68,3] (head frame) for expression ``expr``."""
        e = np.asarray(expr, dtype=np.float64)
        my, hw, op, lift = self.mouth_geometry(e)
        pts = []
        # 0-16 jaw contour: from the right ear (viewer's left) under the chin to the left ear
        a = np.linspace(-0.5 * math.pi * 0.95, 0.5 * math.pi * 0.95, 17)
        x = self.rx * 0.97 * np.sin(a)
        y = self.eye_y + 0.01 + (0.9 * self.ry - self.eye_y) * np.cos(a) ** 1.3
        y = y + np.cos(a) ** 4 * op * 0.9
        z = self._surface_z(x * 0.9, np.minimum(y, 0.9 * self.ry) * 0.9)
        pts.append(np.stack([x, y, z], -1))
        # 17-21 brow on the viewer's left (outer → inner), 22-26 on the right (inner → outer)
        for sx in (-1, 1):
            u = np.linspace(1, -1, 5) if sx < 0 else np.linspace(-1, 1, 5)
            x = sx * (self.eye_x + 0.016 * u)
            inner = np.clip(1 - (np.abs(x) - self.eye_x + 0.016) / 0.032, 0, 1)
            y = (self.eye_y - 0.022 - 0.004 * (1 - u**2) - 0.008 * e[EXPR["brow_raise"]]
                 + 0.005 * e[EXPR["brow_furrow"]] * inner)
            pts.append(np.stack([x, y, self._surface_z(x, y)], -1))
        # 27-30 nose bridge, 31-35 nostrils
        t = np.linspace(0, 1, 4)
        y = self.eye_y + 0.01 + t * (self.mouth_y - self.eye_y - 0.035)
        pts.append(np.stack([0 * t, y, self._surface_z(0 * t, y) - 0.022 * t**1.5], -1))
        x = np.linspace(-0.012, 0.012, 5)
        y = np.full(5, self.mouth_y - 0.022) + 0.002 * (1 - (x / 0.012) ** 2)
        pts.append(np.stack([x, y, self._surface_z(x, y) - 0.01], -1))
        # 36-41 eye on the viewer's left: outer corner, upper lid ×2, inner corner, lower lid ×2;
        # 42-47 on the right: inner corner, upper ×2, outer corner, lower ×2 (iBUG order)
        eo = float(np.clip(e[EXPR["eye_open"]], 0.0, 1.5))
        ang = np.array([0, 1, 2, 3, 4, 5]) * math.pi / 3  # corner, upper, upper, corner, lower, lower
        for sx in (-1, 1):
            x = sx * self.eye_x - 0.014 * np.cos(ang)  # starts at the viewer's-left corner
            y = self.eye_y - 0.007 * np.sin(ang) * eo
            pts.append(np.stack([x, y, self._surface_z(x, y) - 0.002], -1))
        # 48-59 outer lip contour, 60-67 inner
        u_out = np.array([-1, -0.66, -0.33, 0, 0.33, 0.66, 1, 0.66, 0.33, 0, -0.33, -0.66])
        upper = np.array([1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0], bool)
        outer = self._lip_points(e, u_out, upper)
        outer[upper, 1] -= 0.003
        outer[~upper, 1] += 0.003
        pts.append(outer)
        u_in = np.array([-0.9, -0.33, 0, 0.33, 0.9, 0.33, 0, -0.33])
        up_in = np.array([1, 1, 1, 1, 0, 0, 0, 0], bool)
        pts.append(self._lip_points(e, u_in, up_in))
        out = np.concatenate(pts, 0)
        assert out.shape == (68, 3)
        return out
