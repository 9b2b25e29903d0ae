"""Write synthetic talking-head datasets in the DESIGN §5 layouts with known ground truth.

``generate_subject`` writes one regular subject directory (§5.1); ``generate_emotional`` writes one
identity × 8 emotions × 3 intensities (§5.2). Everything is deterministic given the seed.
Files written per clip: ``aud.wav``, ``ori_imgs/<i>.jpg`` + ``<i>.lms``, ``gt_imgs/<i>.jpg``,
``parsing/<i>.png``, ``torso_imgs/<i>.png``, ``bc.jpg``, ``transforms_{train,val}.json``, ``au.csv``,
``expr.npy``, ``pose.npy`` (ground-truth head pose), ``synth.json`` (generator metadata), and for
emotional clips ``emotion.json``; audio features are added by :func:`ua3dtalk.data.audio` extractors.
A subject directory appears only when complete: it is built in a hidden staging directory next to it
and moved into place at the end (:func:`ua3dtalk.utils.io.atomic_directory`; an existing subject
directory is replaced as a whole), so an interrupted generation never leaves a partial dataset that a
later run would take for a finished one.
"""
from __future__ import annotations

import io
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from scipy.io import wavfile
from tqdm import tqdm

from ...render import rasterize
from ...utils.io import atomic_directory, atomic_save_npy, atomic_write_bytes, atomic_write_json, atomic_write_text
from .camera import as_torch, head_viewmat, intrinsics, viewmat_to_transform
from .head import EXPR, EXPR_NAMES, PART_TO_CLASS, PARTS, ProceduralHead
from .speech import EMOTIONS, FPS, SR, expression_track, head_pose_track, synth_speech

# parsing palette (DESIGN §5.1), indexed like head.PARSING_CLASSES, then background
PALETTE = np.array([[0, 0, 255], [100, 100, 100], [0, 255, 0], [255, 0, 0], [0, 0, 0], [255, 255, 255]], np.uint8)


@dataclass(frozen=True)
class Preset:
    resolution: int
    gaussians: int
    seconds: float  # regular subject length
    clip_seconds: float  # emotional clip length
    quality: int = 92


PRESETS = {
    "tiny": Preset(64, 2500, 3.0, 1.2),
    "small": Preset(128, 8000, 20.0, 4.0),
    "bench": Preset(512, 30000, 300.0, 10.0),
}


def _seed(*parts) -> int:
    return zlib.crc32("/".join(map(str, parts)).encode())


def _jpg(img: np.ndarray, quality: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def _png(img: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    return buf.getvalue()


def background_image(size: int, rng: np.random.Generator) -> np.ndarray:
    """A smooth two-colour gradient [H,W,3] float in [0,1]."""
    c0, c1 = rng.uniform(0.3, 0.95, 3), rng.uniform(0.3, 0.95, 3)
    yy, xx = np.mgrid[0:size, 0:size] / max(size - 1, 1)
    a = np.clip(0.6 * yy + 0.4 * xx + 0.05 * np.sin(6 * xx), 0, 1)[..., None]
    return (1 - a) * c0 + a * c1


class ClipRenderer:
    """Renders images, parsing maps and torso layers of one head from a camera."""

    def __init__(self, head: ProceduralHead, size: int, backend: str = "auto"):
        self.head, self.size, self.backend = head, size, backend
        self.K = as_torch(intrinsics(size))
        cls = torch.tensor([PART_TO_CLASS[p] for p in PARTS])[head.part]
        onehot = torch.nn.functional.one_hot(cls, 6).float()  # 5 classes + padding channel
        self.cls_a, self.cls_b = onehot[:, 0:3].contiguous(), onehot[:, 3:6].contiguous()
        self.torso_sel = (cls == 2) | (cls == 3)

    def _r(self, g, colors, vm, sel=None):
        args = [g.means, g.quats, g.scales, g.opacities, colors]
        if sel is not None:
            args = [a[sel] for a in args]
        return rasterize(*args, vm, self.K, self.size, self.size, backend=self.backend)

    @torch.no_grad()
    def render(self, expr: np.ndarray, viewmat: np.ndarray, bg: np.ndarray):
        g = self.head.deform(expr)
        vm = as_torch(viewmat)
        out = self._r(g, g.colors, vm)
        rgb = out.image.numpy() + (1 - out.alpha.numpy()) * bg
        a = self._r(g, self.cls_a, vm).image
        b = self._r(g, self.cls_b, vm).image
        weights = torch.cat([a, b[..., :2], 1 - out.alpha], -1)  # [H,W,6] incl. background
        labels = weights.argmax(-1).numpy()
        t = self._r(g, g.colors, vm, self.torso_sel)
        torso = np.concatenate([t.image.numpy() / np.clip(t.alpha.numpy(), 1e-6, None), t.alpha.numpy()], -1)
        to8 = lambda x: (np.clip(x, 0, 1) * 255 + 0.5).astype(np.uint8)  # noqa: E731
        return to8(rgb), PALETTE[labels], to8(torso), out.alpha.numpy()[..., 0]


def project_landmarks(head: ProceduralHead, expr, viewmat: np.ndarray, K: np.ndarray) -> np.ndarray:
    p = head.landmarks3d(expr) @ viewmat[:3, :3].T + viewmat[:3, 3]
    return (p[:, :2] / p[:, 2:3]) * np.array([K[0, 0], K[1, 1]]) + K[:2, 2]


def write_clip(out: Path, head: ProceduralHead, preset: Preset, seconds: float, rng: np.random.Generator,
               f0: float, emotion: str = "neutral", intensity: int = 1, bg: np.ndarray | None = None,
               backend: str = "auto", extra_meta: dict | None = None, progress: bool = True) -> Path:
    """Write one clip in the regular layout (DESIGN §5.1) into ``out``; returns ``out``."""
    out = Path(out)
    size = preset.resolution
    n = int(round(seconds * FPS))
    utt = synth_speech(n / FPS, rng, f0_base=f0, emotion=emotion, intensity=intensity)
    expr = expression_track(utt, n, rng, emotion, intensity)
    pose = head_pose_track(n, rng, emotion)
    K = intrinsics(size)
    bg = background_image(size, rng) if bg is None else bg
    rend = ClipRenderer(head, size, backend)
    frames, mouth_area = [], np.zeros(n)
    for i in tqdm(range(n), desc=f"synth {out.name}", unit="frame", disable=not progress, leave=False):
        vm = head_viewmat(*pose[i, :3], shift=pose[i, 3:])
        rgb, parsing, torso, _ = rend.render(expr[i], vm, bg)
        atomic_write_bytes(out / "ori_imgs" / f"{i}.jpg", _jpg(rgb, preset.quality))
        atomic_write_bytes(out / "gt_imgs" / f"{i}.jpg", _jpg(rgb, preset.quality))
        atomic_write_bytes(out / "parsing" / f"{i}.png", _png(parsing))
        atomic_write_bytes(out / "torso_imgs" / f"{i}.png", _png(torso))
        lms = project_landmarks(head, expr[i], vm, K)
        atomic_write_text(out / "ori_imgs" / f"{i}.lms", "".join(f"{x:.4f} {y:.4f}\n" for x, y in lms))
        mouth_area[i] = (parsing == PALETTE[1]).all(-1).mean()
        frames.append({"img_id": i, "aud_id": i, "transform_matrix": viewmat_to_transform(vm).tolist()})
    atomic_write_bytes(out / "bc.jpg", _jpg((np.clip(bg, 0, 1) * 255).astype(np.uint8), preset.quality))
    wav = io.BytesIO()
    wavfile.write(wav, SR, (np.clip(utt.audio, -1, 1) * 32767).astype(np.int16))
    atomic_write_bytes(out / "aud.wav", wav.getvalue())
    n_val = max(1, n // 11)
    cam = {"focal_len": float(K[0, 0]), "cx": float(K[0, 2]), "cy": float(K[1, 2])}
    atomic_write_json(out / "transforms_train.json", {**cam, "frames": frames[: n - n_val]})
    atomic_write_json(out / "transforms_val.json", {**cam, "frames": frames[n - n_val:]})
    au45 = np.clip((1.0 - expr[:, EXPR["eye_open"]] / max(float(np.median(expr[:, EXPR["eye_open"]])), 1e-3)) * 5, 0, 5)
    rows = [" frame, timestamp, confidence, success, AU45_r"]
    rows += [f"{i + 1}, {i / FPS:.3f}, 0.98, 1, {a:.3f}" for i, a in enumerate(au45)]
    atomic_write_text(out / "au.csv", "\n".join(rows) + "\n")
    atomic_save_npy(out / "expr.npy", expr)
    atomic_save_npy(out / "pose.npy", pose.astype(np.float32))
    meta = {"generator": "ua3dtalk-synth", "preset": asdict(preset), "expr_names": list(EXPR_NAMES),
            "num_frames": n, "fps": FPS, "emotion": emotion, "intensity": intensity, "identity_seed": head.seed,
            "gaussians": len(head.part), "mouth_area": mouth_area.round(6).tolist(), **(extra_meta or {})}
    atomic_write_json(out / "synth.json", meta)
    return out


def _identity(seed: int, preset: Preset):
    rng = np.random.default_rng(_seed("identity", seed))
    head = ProceduralHead(seed, preset.gaussians)
    f0 = float(rng.uniform(100, 220))
    bg = background_image(preset.resolution, rng)
    return head, f0, bg


def generate_subject(out: str | Path, preset: str = "tiny", seed: int = 0, resolution: int | None = None,
                     backend: str = "auto", progress: bool = True) -> Path:
    """Regular layout: ``out/<subject>/`` with one long clip of the identity ``seed``."""
    p = _preset(preset, resolution)
    head, f0, bg = _identity(seed, p)
    subject = Path(out) / f"synth{seed}"
    rng = np.random.default_rng(_seed("regular", seed))
    with atomic_directory(subject) as stage:  # a killed run never leaves a partial dataset under `subject`
        write_clip(stage, head, p, p.seconds, rng, f0, bg=bg, backend=backend, progress=progress,
                   extra_meta={"subject": subject.name})
    return subject


def generate_emotional(out: str | Path, preset: str = "tiny", seed: int = 0, resolution: int | None = None,
                       backend: str = "auto", progress: bool = True, emotions=EMOTIONS, intensities=(1, 2, 3),
                       clips_per_level: int = 1) -> Path:
    """Emotional layout: ``out/<subject>/<emotion>/level_<k>/<clip>/`` + ``emotion.json`` per clip, with
    ``clips_per_level`` clips (``001``, ``002``, …; different utterances) per emotion and intensity."""
    if int(clips_per_level) < 1:
        raise ValueError(f"clips_per_level must be ≥ 1, got {clips_per_level!r}")
    p = _preset(preset, resolution)
    head, f0, bg = _identity(seed, p)
    subject = Path(out) / f"synth{seed}"
    jobs = [(e, k, c) for e in emotions for k in intensities for c in range(1, int(clips_per_level) + 1)]
    with atomic_directory(subject) as stage:  # a killed run never leaves a partial dataset under `subject`
        for e, k, c in tqdm(jobs, desc="synth emotional clips", unit="clip", disable=not progress):
            clip = stage / e / f"level_{k}" / f"{c:03d}"
            # clip 1 keeps the seed of the one-clip layout (datasets generated before stay identical)
            rng = np.random.default_rng(_seed("emotional", seed, e, k) if c == 1 else _seed("emotional", seed, e, k, c))
            write_clip(clip, head, p, p.clip_seconds, rng, f0, emotion=e, intensity=k, bg=bg, backend=backend,
                       progress=False, extra_meta={"subject": subject.name})
            atomic_write_json(clip / "emotion.json", {"emotion": e, "intensity": k})
    return subject


def _preset(name: str, resolution: int | None) -> Preset:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    p = PRESETS[name]
    if resolution is not None:
        if resolution < 16:
            raise ValueError(f"--resolution must be ≥ 16, got {resolution}")
        p = Preset(resolution, p.gaussians, p.seconds, p.clip_seconds, p.quality)
    return p


def clip_dirs(subject: str | Path) -> list[Path]:
    """Every clip directory (one holding ``aud.wav``) under a generated subject, sorted."""
    subject = Path(subject)
    if (subject / "aud.wav").is_file():
        return [subject]
    return sorted(p.parent for p in subject.rglob("aud.wav"))


def cache_features(subject: str | Path, extractors=("mel",)) -> None:
    """Compute and cache audio features (``aud_<name>.npy``) for every clip of a generated subject."""
    from ..audio import extract_features, make_extractor

    for kind in extractors:
        ex = make_extractor(kind)
        for clip in tqdm(clip_dirs(subject), desc=f"features {kind}", unit="clip", leave=False):
            extract_features(clip, ex)
