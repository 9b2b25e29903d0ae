"""Real-face test material: a photograph animated into a talking-head video with known motion.

The photo is scikit-image's ``data.astronaut()`` (512², a real, frontal face; shipped inside the
scikit-image wheel). Each frame applies, in photo coordinates,

1. a **mouth opening**: below the lip line the lower lip and chin are pushed down by
   ``open`` × a parabolic profile across the mouth (0 at the corners), fading to 0 at y = 200; the
   gap that opens between the lips is painted dark (inside of the mouth) — an exact, invertible warp;
2. a **head rotation and translation** of a 2.5-D head: an ellipsoidal depth map (the face bulges
   towards the camera, the nose 22 mm more) rotated by R = R_y(yaw) R_x(pitch) R_z(roll) about the head centre
   (the convention of :func:`ua3dtalk.data.synth.camera.euler_to_rot`, OpenCV camera axes),
   orthographically projected and shifted; blended to no motion outside the head, so the background
   and the suit stay static as with a fixed camera;

then crops the square (96, 0)–(352, 256) and resizes it to ``size``. Backward warping (fixed-point
inversion of the head motion, exact inversion of the mouth warp) with bilinear sampling.

Optionally (``hand=(a, b)``) a hand rests on the subject's right cheek and jaw in frames a … b−1: a skin-coloured
palm and four fingers drawn over the frame, sliding in from the side over 4 frames and out again, covering the jaw
line and reaching the corner of the mouth — the occluder of a real recording (``AnimationTruth.hand``).

Optionally (``expressive=True``) the face changes expression independently of the speech: a track
``expression [N,2]`` = (brows, lip corners) in [−1, 1] holds one of five expressions for 1–3 s at a time (neutral,
happy = corners up, surprised = brows up, sad = brows a little up and corners down, angry = brows down and corners
a little down), with smooth 8-frame transitions. Brows move by up to ``BROW_PX`` and the lip corners by up to
``CORNER_PX`` (up and outwards), smooth Gaussian displacements applied in the photo before the mouth opening
(inverted by fixed-point iteration). Test material for whether an avatar reproduces expressions the audio does
not predict (docs/history/2026-12-06-expressive-face.md).

Motion: yaw/pitch/roll = sinusoids of amplitude ``rot_amp`` × (8°, 5°, 6°), translations
± ``shift_amp`` × (6, 4) px of the photo, mouth opening following the syllable envelope of the
synthetic audio (``max_open`` px); all returned in :class:`AnimationTruth`.

Hand-measured reference points on the photo (pixel-centre coordinates, 512² photo): eye centres
(203.0, 103.0) and (247.0, 104.5), the line between the upper and lower teeth at y = 148.5 (mouth
centre x = 223.5), chin (221.5, 178.5).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

PHOTO_EYES = np.array([[203.0, 103.0], [247.0, 104.5]])
PHOTO_LIP_LINE = 148.5  # between the upper and the lower teeth of the smile
PHOTO_MOUTH_X = 223.5
PHOTO_MOUTH_HALF_WIDTH = 22.0
PHOTO_CHIN = np.array([221.5, 178.5])
HEAD_CENTRE = np.array([226.0, 108.0])
HEAD_AXES = np.array([80.0, 95.0])  # semi-axes of the moving head region incl. hair (x, y), photo pixels
FACE_AXES = np.array([56.0, 85.0])  # semi-axes of the depth ellipsoid (a face is narrower than the hair)
HEAD_DEPTH = 70.0  # depth of the ellipsoid (px; 0.72 px/mm here: ≈ 97 mm)
NOSE = np.array([225.5, 122.0])  # nose bump: +16 px (≈ 22 mm) towards the camera, σ 9 px
NOSE_HEIGHT, NOSE_SIGMA = 16.0, 9.0
CROP = (96, 0, 256)  # x, y, side in photo pixels
MOUTH_BOTTOM = 200.0
INSIDE_MOUTH_RGB = np.array([60.0, 22.0, 28.0])
BROWS = np.array([[201.0, 89.0], [249.0, 90.0]])  # brow centres, photo px
BROW_SIGMA = np.array([15.0, 7.0])
BROW_PX = 6.0
CORNERS = np.array([[PHOTO_MOUTH_X - PHOTO_MOUTH_HALF_WIDTH, PHOTO_LIP_LINE],
                    [PHOTO_MOUTH_X + PHOTO_MOUTH_HALF_WIDTH, PHOTO_LIP_LINE]])
CORNER_SIGMA = 7.0
CORNER_PX = 5.0
EXPRESSIONS = {"neutral": (0.0, 0.0), "happy": (0.2, 1.0), "surprised": (1.0, 0.0), "sad": (0.4, -1.0),
               "angry": (-1.0, -0.4)}
"""(brows, lip corners) of each expression of an expressive clip; +1 = raised by BROW_PX / CORNER_PX."""


@dataclass
class AnimationTruth:
    """Known motion of an animated clip (N frames, output pixel units where stated).

    yaw, pitch, roll   [N] degrees (head rotation applied in camera axes)
    rotations          [N,3,3] the applied rotations R_y(yaw) R_x(pitch) R_z(roll)
    shift              [N,2] translation (output pixels)
    mouth_open         [N] lip gap at the mouth centre (output pixels)
    eyes               [N,2,2] eye centres (output pixels), mouth [N,2] centre of the opening
    size               output side; audio [S] float32 16 kHz (None when not generated)
    hand               [N] float in [0,1]: how far the hand has slid over the face (0 = not in the frame)
    expression         [N,2] (brows, lip corners) in [−1,1] (zeros unless ``expressive``); expression_names [N]
    """

    yaw: np.ndarray
    pitch: np.ndarray
    roll: np.ndarray
    rotations: np.ndarray
    shift: np.ndarray
    mouth_open: np.ndarray
    eyes: np.ndarray
    mouth: np.ndarray
    size: int
    audio: Optional[np.ndarray] = None
    hand: Optional[np.ndarray] = None
    expression: Optional[np.ndarray] = None
    expression_names: Optional[list] = None


def astronaut() -> np.ndarray:
    """scikit-image's astronaut photo, uint8 [512,512,3]."""
    from skimage import data

    return np.ascontiguousarray(data.astronaut())


def rot(yaw: float, pitch: float, roll: float) -> np.ndarray:
    """R_y(yaw) R_x(pitch) R_z(roll), angles in degrees."""
    from ..data.synth.camera import euler_to_rot

    return euler_to_rot(math.radians(yaw), math.radians(pitch), math.radians(roll))


def speech_envelope(n_frames: int, fps: int = 25, seed: int = 0) -> np.ndarray:
    """A syllable-like envelope in [0,1] per frame (≈ 4 syllables/s with pauses)."""
    rng = np.random.default_rng(seed)
    t = np.arange(n_frames) / fps
    env = np.clip(np.sin(2 * math.pi * 3.7 * t + rng.uniform(0, 6)), 0, None) ** 1.5
    slow = 0.5 + 0.5 * np.clip(np.sin(2 * math.pi * 0.45 * t + rng.uniform(0, 6)) + 0.4, 0, 1)
    return env * slow


def synth_audio(envelope: np.ndarray, fps: int = 25, sr: int = 16000, seed: int = 0) -> np.ndarray:
    """Tone + noise audio (float32, 16 kHz) whose loudness follows the per-frame envelope."""
    rng = np.random.default_rng(seed)
    n = int(len(envelope) * sr / fps)
    t = np.arange(n) / sr
    env = np.interp(t, np.arange(len(envelope)) / fps, envelope)
    f0 = 150 + 20 * np.sin(2 * math.pi * 0.7 * t)
    phase = 2 * math.pi * np.cumsum(f0) / sr
    voice = 0.5 * np.sin(phase) + 0.25 * np.sin(2 * phase) + 0.12 * np.sin(3 * phase)
    x = env * (voice + 0.15 * rng.standard_normal(n)) * 0.6
    return x.astype(np.float32)


class PhotoAnimator:
    """Renders frames of the animated photo (see the module doc)."""

    def __init__(self, photo: Optional[np.ndarray] = None, size: int = 256):
        self.photo = astronaut() if photo is None else np.ascontiguousarray(photo)
        self.size = int(size)
        x0, y0, s = CROP
        scale = s / self.size
        g = (np.arange(self.size) + 0.5) * scale - 0.5  # output pixel centres → photo pixel indices
        self.gy, self.gx = np.meshgrid(g + y0, g + x0, indexing="ij")
        self.scale = scale

    # ---------------------------------------------------------------- warps (photo pixel coordinates)
    @staticmethod
    def _head_disp(x, y, R, T):
        """Forward head displacement of source points (x, y) → (dx, dy), weighted by the head mask."""
        u = (x - HEAD_CENTRE[0]) / FACE_AXES[0]
        v = (y - HEAD_CENTRE[1]) / FACE_AXES[1]
        z = -HEAD_DEPTH * np.sqrt(np.clip(1 - u * u - v * v, 0, None))
        z = z - NOSE_HEIGHT * np.exp(-(((x - NOSE[0]) ** 2 + (y - NOSE[1]) ** 2) / (2 * NOSE_SIGMA**2)))
        P = np.stack([x - HEAD_CENTRE[0], y - HEAD_CENTRE[1], z], -1)
        Q = P @ R.T
        r2 = ((x - HEAD_CENTRE[0]) / HEAD_AXES[0]) ** 2 + ((y - HEAD_CENTRE[1]) / HEAD_AXES[1]) ** 2
        m = np.clip((1.35 - np.sqrt(r2)) / 0.35, 0, 1)
        m = m * m * (3 - 2 * m)
        return m * (Q[..., 0] - P[..., 0] + T[0]), m * (Q[..., 1] - P[..., 1] + T[1])

    @staticmethod
    def _expr_disp(x, y, expr):
        """Forward expression displacement of photo points (x, y) → (dx, dy) for ``expr`` = (brows, corners)."""
        b, c = float(expr[0]), float(expr[1])
        dx, dy = np.zeros_like(x), np.zeros_like(y)
        if b:
            for bx, by in BROWS:
                g = np.exp(-0.5 * (((x - bx) / BROW_SIGMA[0]) ** 2 + ((y - by) / BROW_SIGMA[1]) ** 2))
                dy = dy - b * BROW_PX * g
        if c:
            for k, (cx, cy) in enumerate(CORNERS):
                g = np.exp(-0.5 * ((x - cx) ** 2 + (y - cy) ** 2) / CORNER_SIGMA**2)
                dx = dx + (1 if k else -1) * 0.4 * c * CORNER_PX * g
                dy = dy - c * CORNER_PX * g
        return dx, dy

    @staticmethod
    def _invert(disp, qx, qy, iterations: int):
        """Points p with p + disp(p) = q, by the fixed point p = q − disp(p) (smooth, small displacements)."""
        px, py = qx.copy(), qy.copy()
        for _ in range(iterations):
            dx, dy = disp(px, py)
            px, py = qx - dx, qy - dy
        return px, py

    def _expr_inverse(self, x, y, expr):
        """Backward expression warp: expressed photo points → neutral photo points."""
        if expr is None or not np.any(expr):
            return x, y
        return self._invert(lambda px, py: self._expr_disp(px, py, expr), x, y, 8)

    @staticmethod
    def _mouth_profile(x):
        return np.clip(1 - ((x - PHOTO_MOUTH_X) / PHOTO_MOUTH_HALF_WIDTH) ** 2, 0, 1)

    def _mouth_inverse(self, x, y, open_px):
        """Backward mouth warp: output (x, y) → source y, and the mask of the opened gap."""
        a = open_px * self._mouth_profile(x)
        L = MOUTH_BOTTOM - PHOTO_LIP_LINE
        ys = np.where(y >= PHOTO_LIP_LINE + a, (y - MOUTH_BOTTOM * a / L) / np.maximum(1 - a / L, 1e-6), y)
        ys = np.where(y > MOUTH_BOTTOM, y, ys)
        gap = (y >= PHOTO_LIP_LINE) & (y < PHOTO_LIP_LINE + a) & (a > 0.3)
        ys = np.where(gap, PHOTO_LIP_LINE, ys)
        return ys, gap

    def mouth_forward(self, x, y, open_px):
        a = open_px * self._mouth_profile(x)
        L = MOUTH_BOTTOM - PHOTO_LIP_LINE
        dy = np.where((y >= PHOTO_LIP_LINE) & (y <= MOUTH_BOTTOM), a * (MOUTH_BOTTOM - y) / L, 0.0)
        return y + dy

    def forward(self, pts: np.ndarray, R: np.ndarray, T: np.ndarray, open_px: float,
                expr: Optional[np.ndarray] = None) -> np.ndarray:
        """Photo points [K,2] → output pixels [K,2] (expression, mouth warp, head motion, crop and resize)."""
        x, y = pts[:, 0].astype(np.float64), pts[:, 1].astype(np.float64)
        if expr is not None:
            ex, ey = self._expr_disp(x, y, expr)
            x, y = x + ex, y + ey
        y = self.mouth_forward(x, y, open_px)
        dx, dy = self._head_disp(x, y, R, T)
        qx, qy = x + dx, y + dy
        x0, y0, _ = CROP
        return np.stack([(qx + 0.5 - x0) / self.scale, (qy + 0.5 - y0) / self.scale], -1)

    def _unwarp_head(self, R: np.ndarray, T: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Photo coordinates (x, y) [size,size] of every output pixel before the head motion."""
        return self._invert(lambda px, py: self._head_disp(px, py, R, T), self.gx, self.gy, 6)

    def opening(self, R: np.ndarray, T: np.ndarray, open_px: float) -> np.ndarray:
        """bool [size,size]: the output pixels of the frame that show the dark gap of the opened mouth."""
        px, py = self._unwarp_head(R, T)
        return self._mouth_inverse(px, py, open_px)[1]

    def render(self, R: np.ndarray, T: np.ndarray, open_px: float, expr: Optional[np.ndarray] = None) -> np.ndarray:
        """One frame uint8 [size,size,3]; ``expr`` = (brows, lip corners) in [−1,1] or None (neutral)."""
        from scipy.ndimage import map_coordinates

        px, py = self._unwarp_head(R, T)
        sy, gap = self._mouth_inverse(px, py, open_px)
        sx, sy = self._expr_inverse(px, sy, expr)
        out = np.empty((self.size, self.size, 3), np.float32)
        for c in range(3):
            out[..., c] = map_coordinates(self.photo[..., c].astype(np.float32), [sy, sx], order=1, mode="nearest")
        if gap.any():
            depth = np.clip((py - PHOTO_LIP_LINE) / np.maximum(open_px * self._mouth_profile(px), 1e-6), 0, 1)
            shade = (0.35 + 0.65 * np.sin(np.pi * depth))[..., None]
            dark = INSIDE_MOUTH_RGB * (1.2 - 0.4 * shade)
            out = np.where(gap[..., None], dark, out)
        return np.clip(out + 0.5, 0, 255).astype(np.uint8)


HAND_RGB = np.array([222.0, 170.0, 138.0])
HAND_PALM = (np.array([178.0, 168.0]), np.array([26.0, 34.0]), 0.35)  # centre, semi-axes, angle (rad), photo px
HAND_FINGERS = [(np.array([192.0 + 7.0 * k, 130.0 + 3.0 * k]), np.array([5.5, 20.0]), -0.25 + 0.08 * k)
                for k in range(4)]


def hand_coverage(gx: np.ndarray, gy: np.ndarray, amount: float) -> np.ndarray:
    """Coverage in [0,1] of photo points (gx, gy) by the hand slid ``amount`` ∈ [0,1] of the way in (from the left:
    the subject's right), with a 1-px soft edge."""
    if amount <= 0:
        return np.zeros_like(gx)
    dx = -70.0 * (1.0 - amount)
    cov = np.zeros_like(gx)
    for c, ax, ang in (HAND_PALM, *HAND_FINGERS):
        ca, sa = math.cos(ang), math.sin(ang)
        x, y = gx - (c[0] + dx), gy - c[1]
        u, v = (ca * x + sa * y) / ax[0], (-sa * x + ca * y) / ax[1]
        r = np.sqrt(u * u + v * v)
        cov = np.maximum(cov, np.clip((1.0 - r) * min(ax) + 0.5, 0, 1))
    return cov


def hand_amounts(n_frames: int, hand: Optional[tuple[int, int]], ramp: int = 4) -> np.ndarray:
    """[N] how far the hand is in, per frame: 0 outside [a, b), ramping over ``ramp`` frames at both ends."""
    out = np.zeros(n_frames)
    if hand is None:
        return out
    a, b = int(hand[0]), int(hand[1])
    if not 0 <= a < b <= n_frames:
        raise ValueError(f"hand=({a}, {b}) must satisfy 0 ≤ a < b ≤ n_frames={n_frames}")
    i = np.arange(n_frames)
    up, down = (i - a + 1) / ramp, (b - i) / ramp
    return np.where((i >= a) & (i < b), np.clip(np.minimum(up, down), 0, 1), 0.0)


def expression_track(n_frames: int, seed: int = 0, fps: int = 25, ramp: int = 8) -> tuple[np.ndarray, list]:
    """[N,2] (brows, lip corners) and the expression name per frame: :data:`EXPRESSIONS` held for 1–3 s each
    (a random order in which consecutive expressions differ), blended over ``ramp`` frames (cosine)."""
    rng = np.random.default_rng(seed + 1000)
    names = list(EXPRESSIONS)
    seq, lab, cur = [], [], None
    while len(seq) < n_frames:
        nxt = str(rng.choice([k for k in names if k != cur]))
        hold = int(rng.integers(fps, 3 * fps + 1))
        seq += [EXPRESSIONS[nxt]] * hold
        lab += [nxt] * hold
        cur = nxt
    target = np.asarray(seq[:n_frames], np.float64)
    out = target.copy()
    for i in range(1, n_frames):  # cosine blend from the previous expression at each change
        if lab[i] != lab[i - 1]:
            prev = out[i - 1].copy()
            for k in range(min(ramp, n_frames - i)):
                if lab[i + k] != lab[i]:
                    break
                w = 0.5 - 0.5 * math.cos(math.pi * (k + 1) / ramp)
                out[i + k] = (1 - w) * prev + w * target[i + k]
    return out, lab[:n_frames]


def motion(n_frames: int, rot_amp: float = 1.0, shift_amp: float = 1.0, max_open: float = 7.0, seed: int = 0,
           fps: int = 25) -> dict:
    """The per-frame motion parameters (degrees, photo pixels) and the speech envelope."""
    t = np.arange(n_frames) / fps
    env = speech_envelope(n_frames, fps, seed)
    return {
        "yaw": rot_amp * 8.0 * np.sin(2 * math.pi * t / 2.3),
        "pitch": rot_amp * 5.0 * np.sin(2 * math.pi * t / 1.7 + 1.0),
        "roll": rot_amp * 6.0 * np.sin(2 * math.pi * t / 2.9 + 2.0),
        "tx": shift_amp * 6.0 * np.sin(2 * math.pi * t / 3.1 + 0.5),
        "ty": shift_amp * 4.0 * np.sin(2 * math.pi * t / 2.6 + 2.5),
        "open": max_open * env,
        "envelope": env,
    }


def animate(n_frames: int = 75, size: int = 256, *, rot_amp: float = 1.0, shift_amp: float = 1.0,
            max_open: float = 7.0, seed: int = 0, photo: Optional[np.ndarray] = None,
            hand: Optional[tuple[int, int]] = None, expressive: bool = False):
    """Frames (a generator of uint8 [size,size,3]) and the :class:`AnimationTruth` of a clip; ``hand=(a, b)``: a
    hand over the face in frames a … b−1; ``expressive``: expressions independent of the speech (module doc)."""
    an = PhotoAnimator(photo, size)
    mo = motion(n_frames, rot_amp, shift_amp, max_open, seed)
    if expressive:
        ex, ex_names = expression_track(n_frames, seed)
    else:
        ex, ex_names = np.zeros((n_frames, 2)), ["neutral"] * n_frames
    hands = hand_amounts(n_frames, hand)
    Rs = np.stack([rot(a, b, c) for a, b, c in zip(mo["yaw"], mo["pitch"], mo["roll"])])
    T = np.stack([mo["tx"], mo["ty"]], -1)
    eyes, mouth = [], []
    for i in range(n_frames):
        eyes.append(an.forward(PHOTO_EYES, Rs[i], T[i], mo["open"][i], ex[i]))
        centre = np.array([[PHOTO_MOUTH_X, PHOTO_LIP_LINE + 0.5 * mo["open"][i]]])
        # the centre of the opening moves with the head only (it is not part of the mouth warp)
        x, y = centre[:, 0], centre[:, 1]
        dx, dy = an._head_disp(x, y, Rs[i], T[i])
        x0, y0, _ = CROP
        mouth.append(np.stack([(x + dx + 0.5 - x0) / an.scale, (y + dy + 0.5 - y0) / an.scale], -1)[0])
    truth = AnimationTruth(yaw=mo["yaw"], pitch=mo["pitch"], roll=mo["roll"], rotations=Rs, shift=T / an.scale,
                           mouth_open=mo["open"] / an.scale, eyes=np.stack(eyes), mouth=np.stack(mouth), size=size,
                           audio=synth_audio(mo["envelope"], seed=seed), hand=hands, expression=ex,
                           expression_names=ex_names)

    def frames():
        for i in range(n_frames):
            img = an.render(Rs[i], T[i], mo["open"][i], ex[i])
            if hands[i] > 0:  # drawn over the frame, moving with the head's translation
                cov = hand_coverage(an.gx - T[i][0], an.gy - T[i][1], float(hands[i]))[..., None]
                shade = 0.85 + 0.15 * np.clip((an.gy - 120.0) / 90.0, 0, 1)[..., None]
                img = np.clip(img * (1 - cov) + HAND_RGB * shade * cov + 0.5, 0, 255).astype(np.uint8)
            yield img

    return frames(), truth


def write_animated_video(path: str | Path, n_frames: int = 75, size: int = 256, *, audio: bool = True,
                         fps: int = 25, **kw) -> AnimationTruth:
    """Write an animated-photo mp4 (H.264, with the synthetic speech as AAC unless ``audio=False``)."""
    import tempfile

    import soundfile as sf

    from ..utils.io import write_video

    frames, truth = animate(n_frames, size, **kw)
    path = Path(path)
    if not audio:
        write_video(path, frames, fps=fps)
        return truth
    with tempfile.TemporaryDirectory() as td:
        wav = Path(td) / "a.wav"
        sf.write(str(wav), truth.audio, 16000)
        write_video(path, frames, fps=fps, audio_path=wav)
    return truth
