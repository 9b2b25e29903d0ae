"""Tiny hand-written datasets in the ER-NeRF / TalkingGaussian layout (DESIGN §5), built in tmp dirs.

``make_regular(root, **options)`` writes a complete regular directory and returns a ``Spec`` with
what it wrote; ``make_emotional(root, clips)`` writes ``<root>/<subject>/<emotion>/level_<k>/<clip>/``
clips. Every file is written by this helper (no project writer is used), so the readers are tested
against the format, not against themselves.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
from PIL import Image

W, H = 32, 24
FOCAL = 30.0
FACE, MOUTH, HAIR, NECK, TORSO, BG = (0, 0, 255), (100, 100, 100), (0, 0, 0), (0, 255, 0), (255, 0, 0), (255, 255, 255)
AU_HEADER = ["frame", " face_id", " timestamp", " confidence", " success", " AU01_r", " AU02_r", " AU04_r",
             " AU05_r", " AU06_r", " AU07_r", " AU25_r", " AU45_r"]


def look_at_c2w_opengl(eye, target, up=(0.0, 1.0, 0.0)) -> np.ndarray:
    """OpenGL camera-to-world (x right, y up, z backward) of a camera at ``eye`` looking at ``target``."""
    eye, target, up = (np.asarray(v, dtype=np.float64) for v in (eye, target, up))
    z = eye - target
    z /= np.linalg.norm(z)
    x = np.cross(up, z)
    x /= np.linalg.norm(x)
    y = np.cross(z, x)
    m = np.eye(4)
    m[:3, 0], m[:3, 1], m[:3, 2], m[:3, 3] = x, y, z, eye
    return m


def parsing_map(i: int) -> np.ndarray:
    """A label map with every palette colour: rows bands (hair, face, mouth box, neck, torso), bg at the sides."""
    p = np.empty((H, W, 3), np.uint8)
    p[:] = BG
    p[0:5, 4:28] = HAIR
    p[5:15, 4:28] = FACE
    p[10:13, 12:20 + (i % 3)] = MOUTH
    p[15:18, 10:22] = NECK
    p[18:24, 2:30] = TORSO
    return p


@dataclass
class Spec:
    root: Path
    n: int
    n_train: int
    c2w: np.ndarray  # [n,4,4] OpenGL camera-to-world written to the json


def write_wav(path: Path, seconds: float, sr: int = 16000, channels: int = 1, freq: float = 220.0) -> None:
    t = np.arange(int(round(seconds * sr))) / sr
    x = 0.3 * np.sin(2 * np.pi * freq * t)
    if channels > 1:
        x = np.stack([x] * channels, 1)
    sf.write(str(path), x.astype(np.float32), sr, subtype="PCM_16")


def make_regular(root: Path, n: int = 11, *, seed: int = 0, gt: bool = True, torso: bool = True, au: bool = True,
                 expr: bool = True, ds: bool = True, wav: bool = True, bc: bool = True) -> Spec:
    """Write a valid regular dataset with ``n`` frames (ER-NeRF split: first 10/11 train)."""
    rng = np.random.default_rng(seed)
    root = Path(root)
    for d in ("ori_imgs", "parsing") + (("gt_imgs",) if gt else ()) + (("torso_imgs",) if torso else ()):
        (root / d).mkdir(parents=True, exist_ok=True)
    c2w = []
    for i in range(n):
        img = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
        Image.fromarray(img).save(root / "ori_imgs" / f"{i}.jpg", quality=95)
        if gt:
            Image.fromarray(img).save(root / "gt_imgs" / f"{i}.jpg", quality=95)
        Image.fromarray(parsing_map(i)).save(root / "parsing" / f"{i}.png")
        if torso:
            rgba = np.zeros((H, W, 4), np.uint8)
            rgba[15:, :, :3] = 200
            rgba[15:, :, 3] = 255
            Image.fromarray(rgba, "RGBA").save(root / "torso_imgs" / f"{i}.png")
        lms = np.stack([np.linspace(5, 27, 68), np.linspace(4, 20, 68)], 1).round()
        np.savetxt(root / "ori_imgs" / f"{i}.lms", lms, "%d")
        ang = 0.05 * math.sin(i)
        eye = (0.3 * math.sin(ang), 0.0, 1.0 * math.cos(ang))
        c2w.append(look_at_c2w_opengl(eye, (0, 0, 0)))
    c2w = np.stack(c2w)
    n_train = n * 10 // 11
    for split, ids in (("train", range(0, n_train)), ("val", range(n_train, n))):
        d = {"focal_len": FOCAL, "cx": W / 2, "cy": H / 2,
             "frames": [{"img_id": i, "aud_id": i, "transform_matrix": c2w[i].tolist()} for i in ids]}
        (root / f"transforms_{split}.json").write_text(json.dumps(d))
    if bc:
        Image.fromarray(np.full((H, W, 3), 17, np.uint8)).save(root / "bc.jpg", quality=95)
    if wav:
        write_wav(root / "aud.wav", n / 25.0)
    if au:
        rows = [AU_HEADER]
        for i in range(n):
            aus = [f" {v:.2f}" for v in rng.uniform(0, 3, 8)]
            rows.append([str(i + 1), " 0", f" {i / 25:.3f}", " 0.98", " 1"] + aus)
        (root / "au.csv").write_text("\n".join(",".join(r) for r in rows) + "\n")
    if expr:
        np.save(root / "expr.npy", rng.normal(size=(n, 5)).astype(np.float32))
    if ds:
        np.save(root / "aud_ds.npy", rng.normal(size=(n, 16, 29)).astype(np.float32))
    return Spec(root=root, n=n, n_train=n_train, c2w=c2w)


def make_emotional(root: Path, clips=(("happy", 2), ("sad", 1), ("neutral", 1)), subject: str = "M003",
                   n: int = 6) -> list[Path]:
    dirs = []
    for k, (emo, level) in enumerate(clips):
        d = Path(root) / subject / emo / f"level_{level}" / f"{k + 1:03d}"
        make_regular(d, n=n, seed=k, gt=False, torso=False, ds=False)
        (d / "emotion.json").write_text(json.dumps({"emotion": emo, "intensity": level}))
        dirs.append(d)
    return dirs
