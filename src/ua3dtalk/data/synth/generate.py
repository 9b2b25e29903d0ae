"""Write synthetic talking-head datasets in the DESIGN §5 layouts with known ground truth.

``generate_subject`` writes one regular subject directory (§5.1); ``generate_emotional`` writes one
identity × 8 emotions × 3 intensities × ``clips_per_level`` clips (§5.2; the preset's default, 3 for
``small``). Everything is deterministic given the seed.
Files written per clip: ``aud.wav``, ``ori_imgs/<i>.jpg`` + ``<i>.lms``, ``gt_imgs/<i>.jpg``,
``parsing/<i>.png``, ``torso_imgs/<i>.png``, ``bc.jpg``, ``transforms_{train,val}.json``, ``au.csv``,
``expr.npy`` [N,K] (the expression coefficients of ``head.EXPR_NAMES``), ``expr_emotion.npy`` [N,K] (the
additive emotion part of ``expr.npy``: ``expr - expr_emotion`` is the same clip with a neutral face; all
zeros for neutral clips), ``pose.npy`` (ground-truth head pose, float32, exactly the pose rendered),
``synth.json`` (generator metadata), and for emotional clips ``emotion.json``; audio features are added
by :func:`ua3dtalk.data.audio` extractors.
:func:`render_neutral_twin` re-renders a written clip with the emotion removed (same pose, camera,
background, speech articulation and blinks), e.g. to check that an emotion classifier reads the face.

A subject directory appears only when complete: it is built in a hidden staging directory next to it
and moved into place at the end (:func:`ua3dtalk.utils.io.atomic_directory`; an existing subject
directory is replaced as a whole), so an interrupted generation never leaves a partial dataset that a
later run would take for a finished one. Inside the staging directory files are written plainly.
"""
from __future__ import annotations

import io
import json
import os
import zlib
from dataclasses import asdict, dataclass, fields, replace
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from scipy.io import wavfile
from tqdm import tqdm

from ...constants import EMOTIONS
from ...render import rasterize
from ...render.projection import project_gaussians
from ...utils.io import atomic_directory
from ...utils.threads import torch_threads
from .camera import as_torch, head_viewmat, intrinsics, viewmat_to_transform
from .head import EXPR, EXPR_NAMES, PART_TO_CLASS, PARTS, ProceduralHead
from .speech import EMOTIONAL_EXPR, FPS, SR, expression_track, head_pose_track, synth_speech

# parsing palette (DESIGN §5.1), indexed like head.PARSING_CLASSES, then background
PALETTE = np.array([[0, 0, 255], [100, 100, 100], [0, 255, 0], [255, 0, 0], [0, 0, 0], [255, 255, 255]], np.uint8)


@dataclass(frozen=True)
class Preset:
    resolution: int
    gaussians: int
    seconds: float  # regular subject length
    clip_seconds: float  # emotional clip length
    quality: int = 92
    clips_per_level: int = 1  # emotional clips per emotion × intensity (default of generate_emotional)


PRESETS = {
    "tiny": Preset(64, 2500, 3.0, 1.2),
    "small": Preset(128, 8000, 20.0, 3.0, clips_per_level=3),
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
    Image.fromarray(img).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def _write_bytes(path: Path, data: bytes) -> None:
    """Every file of a clip is written through here (plainly: the subject is staged as a whole)."""
    with open(path, "wb") as f:
        f.write(data)


def _write_text(path: Path, text: str) -> None:
    _write_bytes(path, text.encode("utf-8"))


def _write_json(path: Path, obj) -> None:
    _write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def _write_npy(path: Path, arr: np.ndarray) -> None:
    buf = io.BytesIO()
    np.save(buf, arr)
    _write_bytes(path, buf.getvalue())


def background_image(size: int, rng: np.random.Generator) -> np.ndarray:
    """A smooth two-colour gradient [H,W,3] float in [0,1]."""
    c0, c1 = rng.uniform(0.3, 0.95, 3), rng.uniform(0.3, 0.95, 3)
    yy, xx = np.mgrid[0:size, 0:size] / max(size - 1, 1)
    a = np.clip(0.6 * yy + 0.4 * xx + 0.05 * np.sin(6 * xx), 0, 1)[..., None]
    return (1 - a) * c0 + a * c1


def _to8(x: np.ndarray) -> np.ndarray:
    return (np.clip(x, 0, 1) * 255 + 0.5).astype(np.uint8)


def _compositor(backend: str):
    """The compositing function of a CPU backend (one projection, any number of channels), or None for
    backends that only render through :func:`rasterize` (gsplat, inria)."""
    from ...render.api import _resolve_backend

    name = _resolve_backend(backend, torch.device("cpu"))
    if name == "cpu":
        from ...render.cpu_backend import composite_cpu, cpu_backend_available

        if cpu_backend_available():
            return composite_cpu
        name = "torch"
    if name == "torch":
        from ...render.torch_backend import composite_torch

        return composite_torch
    if name == "dense":
        from ...render.dense import composite_dense

        return composite_dense
    return None


class ClipRenderer:
    """Renders images, parsing maps and torso layers of one head from a camera.

    On the CPU backends the Gaussians are projected once and composited in passes of at most four
    channels (the C++ kernel's fast path): colour + face weight, then the mouth, neck and hair
    weights (torso = alpha − the others; background = transmittance) for the parsing map, then the
    torso/neck Gaussians alone for the torso layer. Other backends render through :func:`rasterize`."""

    def __init__(self, head: ProceduralHead, size: int, backend: str = "auto"):
        self.head, self.size, self.backend = head, size, backend
        self.K = as_torch(intrinsics(size))
        cls = torch.tensor([PART_TO_CLASS[p] for p in PARTS])[head.part]
        onehot = torch.nn.functional.one_hot(cls, 6).float()  # 5 classes + padding channel
        self.face = onehot[:, 0:1].contiguous()
        self.others = onehot[:, [1, 2, 4]].contiguous()  # mouth, neck, hair
        self.cls_a, self.cls_b = onehot[:, 0:3].contiguous(), onehot[:, 3:6].contiguous()
        self.torso_sel = (cls == 2) | (cls == 3)
        self.torso_idx = self.torso_sel.nonzero()[:, 0]
        self.composite = _compositor(backend)

    def _r(self, g, colors, vm, sel=None):
        args = [g.means, g.quats, g.scales, g.opacities, colors]
        if sel is not None:
            args = [a[sel] for a in args]
        return rasterize(*args, vm, self.K, self.size, self.size, backend=self.backend)

    @torch.no_grad()
    def render(self, expr: np.ndarray, viewmat: np.ndarray, bg: np.ndarray, parsing: bool = True,
               torso: bool = True):
        """(rgb uint8 [H,W,3], parsing uint8 [H,W,3] | None, torso uint8 [H,W,4] | None, alpha [H,W])."""
        g = self.head.deform(expr)
        vm = as_torch(viewmat)
        if self.composite is None:
            return self._render_passes(g, vm, bg, parsing, torso)
        S = self.size
        pr = project_gaussians(g.means, g.quats, g.scales, g.opacities, vm, self.K, S, S)
        args = (pr.means2d, pr.conics, g.opacities, pr.depths, pr.extents, pr.visible)

        def comp(feats, idx=None):
            a = args if idx is None else tuple(x[idx] for x in args)
            f, T = self.composite(a[0], a[1], feats, *a[2:], S, S)
            return f.numpy(), T.numpy()[..., None]

        f, T = comp(torch.cat([g.colors, self.face], -1) if parsing else g.colors)
        rgb = _to8(f[..., :3] + T * bg)
        labels = None
        if parsing:
            o, _ = comp(self.others)  # same Gaussians, same transmittance
            torso_w = 1 - T - f[..., 3:4] - o.sum(-1, keepdims=True)
            w = np.concatenate([f[..., 3:4], o[..., 0:2], torso_w, o[..., 2:3], T], -1)  # PALETTE order
            labels = PALETTE[w.argmax(-1)]
        tor = None
        if torso:
            ft, Tt = comp(g.colors[self.torso_idx], self.torso_idx)
            a = 1 - Tt
            tor = _to8(np.concatenate([ft / np.clip(a, 1e-6, None), a], -1))
        return rgb, labels, tor, 1 - T[..., 0]

    def _render_passes(self, g, vm, bg, parsing, torso):
        out = self._r(g, g.colors, vm)
        rgb = out.image.numpy() + (1 - out.alpha.numpy()) * bg
        labels = None
        if parsing:
            a = self._r(g, self.cls_a, vm).image
            b = self._r(g, self.cls_b, vm).image
            weights = torch.cat([a, b[..., :2], 1 - out.alpha], -1)  # [H,W,6] incl. background
            labels = PALETTE[weights.argmax(-1).numpy()]
        tor = None
        if torso:
            t = self._r(g, g.colors, vm, self.torso_sel)
            tor = _to8(np.concatenate([t.image.numpy() / np.clip(t.alpha.numpy(), 1e-6, None), t.alpha.numpy()], -1))
        return _to8(rgb), labels, tor, out.alpha.numpy()[..., 0]


def project_landmarks(head: ProceduralHead, expr, viewmat: np.ndarray, K: np.ndarray) -> np.ndarray:
    p = head.landmarks3d(expr) @ viewmat[:3, :3].T + viewmat[:3, 3]
    return (p[:, :2] / p[:, 2:3]) * np.array([K[0, 0], K[1, 1]]) + K[:2, 2]


def _viewmats(pose: np.ndarray) -> list[np.ndarray]:
    return [head_viewmat(*pose[i, :3], shift=pose[i, 3:]) for i in range(len(pose))]


def write_clip(out: Path, head: ProceduralHead, preset: Preset, seconds: float, rng: np.random.Generator,
               f0: float, emotion: str = "neutral", intensity: int = 1, bg: np.ndarray | None = None,
               backend: str = "auto", extra_meta: dict | None = None, progress: bool = True) -> Path:
    """Write one clip in the regular layout (DESIGN §5.1) into ``out``; returns ``out``.

    Files are written plainly (not one by one atomically): the callers build the whole subject in a
    staging directory. ``rng`` seeds four independent streams (speech, expression, head pose,
    background), so the pose, blinks, idle motion and the emotion's onset timing of a given ``rng`` do
    not depend on the emotion. ``bg`` None: a background drawn from the clip's stream (re-creatable
    by :func:`render_neutral_twin`); callers passing the identity's background say so with
    ``extra_meta={"background": "identity"}``."""
    out = Path(out)
    size = preset.resolution
    n = int(round(seconds * FPS))
    seeds = [int(s) for s in rng.integers(0, 2**63 - 1, size=4)]
    r_speech, r_expr, r_pose, r_bg = (np.random.default_rng(s) for s in seeds)
    utt = synth_speech(n / FPS, r_speech, f0_base=f0, emotion=emotion, intensity=intensity)
    expr, expr_emotion = expression_track(utt, n, r_expr, emotion, intensity, parts=True)
    pose = head_pose_track(n, r_pose).astype(np.float32)  # rendered as stored
    K = intrinsics(size)
    meta_bg = {"background": "given"}
    if bg is None:
        bg, meta_bg = background_image(size, r_bg), {"background": "seed", "background_seed": seeds[3]}
    rend = ClipRenderer(head, size, backend)
    for d in ("ori_imgs", "gt_imgs", "parsing", "torso_imgs"):
        (out / d).mkdir(parents=True, exist_ok=True)
    frames, mouth_area = [], np.zeros(n)
    for i, vm in enumerate(tqdm(_viewmats(pose), desc=f"synth {out.name}", unit="frame", disable=not progress,
                                leave=False)):
        rgb, parsing, torso, _ = rend.render(expr[i], vm, bg)
        jpg = _jpg(rgb, preset.quality)
        _write_bytes(out / "ori_imgs" / f"{i}.jpg", jpg)
        _write_bytes(out / "gt_imgs" / f"{i}.jpg", jpg)
        _write_bytes(out / "parsing" / f"{i}.png", _png(parsing))
        _write_bytes(out / "torso_imgs" / f"{i}.png", _png(torso))
        lms = project_landmarks(head, expr[i], vm, K)
        _write_text(out / "ori_imgs" / f"{i}.lms", "".join(f"{x:.4f} {y:.4f}\n" for x, y in lms))
        mouth_area[i] = (parsing == PALETTE[1]).all(-1).mean()
        frames.append({"img_id": i, "aud_id": i, "transform_matrix": viewmat_to_transform(vm).tolist()})
    _write_bytes(out / "bc.jpg", _jpg(_to8(bg), preset.quality))
    wav = io.BytesIO()
    wavfile.write(wav, SR, (np.clip(utt.audio, -1, 1) * 32767).astype(np.int16))
    _write_bytes(out / "aud.wav", wav.getvalue())
    n_val = max(1, n // 11)
    cam = {"focal_len": float(K[0, 0]), "cx": float(K[0, 2]), "cy": float(K[1, 2])}
    _write_json(out / "transforms_train.json", {**cam, "frames": frames[: n - n_val]})
    _write_json(out / "transforms_val.json", {**cam, "frames": frames[n - n_val:]})
    au45 = np.clip((1.0 - expr[:, EXPR["eye_open"]] / max(float(np.median(expr[:, EXPR["eye_open"]])), 1e-3)) * 5, 0, 5)
    rows = [" frame, timestamp, confidence, success, AU45_r"]
    rows += [f"{i + 1}, {i / FPS:.3f}, 0.98, 1, {a:.3f}" for i, a in enumerate(au45)]
    _write_text(out / "au.csv", "\n".join(rows) + "\n")
    _write_npy(out / "expr.npy", expr)
    _write_npy(out / "expr_emotion.npy", expr_emotion)
    _write_npy(out / "pose.npy", pose)
    meta = {"generator": "ua3dtalk-synth", "preset": asdict(preset), "expr_names": list(EXPR_NAMES),
            "expr_emotional": list(EMOTIONAL_EXPR),
            "num_frames": n, "fps": FPS, "emotion": emotion, "intensity": intensity, "identity_seed": head.seed,
            "gaussians": len(head.part), "mouth_area": mouth_area.round(6).tolist(), **meta_bg, **(extra_meta or {})}
    _write_json(out / "synth.json", meta)
    return out


@lru_cache(maxsize=4)
def _head(seed: int, gaussians: int) -> ProceduralHead:
    return ProceduralHead(seed, gaussians)


def _identity(seed: int, preset: Preset):
    rng = np.random.default_rng(_seed("identity", seed))
    head = _head(seed, preset.gaussians)
    f0 = float(rng.uniform(100, 220))
    bg = background_image(preset.resolution, rng)
    return head, f0, bg


def _preset_from_meta(d: dict) -> Preset:
    names = {f.name for f in fields(Preset)}
    return Preset(**{k: v for k, v in d.items() if k in names})


def render_clip(clip_dir: str | Path, expr: np.ndarray | None = None, backend: str = "auto"
                ) -> tuple[np.ndarray, np.ndarray]:
    """Re-render a generated clip from its ``synth.json``, ``pose.npy`` and ``expr`` [N,K] (default: the
    clip's ``expr.npy``): (frames uint8 [N,H,W,3], landmarks float32 [N,68,2]), exactly as the generator
    rendered them before JPEG encoding (same identity, camera, background, pose). Deterministic."""
    clip = Path(clip_dir)
    meta = json.loads((clip / "synth.json").read_text())
    preset = _preset_from_meta(meta["preset"])
    head, _, bg = _identity(int(meta["identity_seed"]), preset)
    kind = meta.get("background", "identity")
    if kind == "seed":
        bg = background_image(preset.resolution, np.random.default_rng(int(meta["background_seed"])))
    elif kind != "identity":
        raise ValueError(f"{clip}: the clip's background ({kind!r}) cannot be re-created; only clips written by "
                         "generate_subject/generate_emotional (or write_clip without bg) can be re-rendered")
    pose = np.load(clip / "pose.npy")
    expr = np.load(clip / "expr.npy") if expr is None else np.asarray(expr, np.float32)
    if expr.shape != (len(pose), len(EXPR_NAMES)):
        raise ValueError(f"{clip}: expression shape {expr.shape}, expected {(len(pose), len(EXPR_NAMES))}")
    K = intrinsics(preset.resolution)
    rend = ClipRenderer(head, preset.resolution, backend)
    frames = np.empty((len(pose), preset.resolution, preset.resolution, 3), np.uint8)
    lms = np.empty((len(pose), 68, 2), np.float32)
    with torch_threads(1):
        for i, vm in enumerate(_viewmats(pose)):
            frames[i] = rend.render(expr[i], vm, bg, parsing=False, torso=False)[0]
            lms[i] = project_landmarks(head, expr[i], vm, K)
    return frames, lms


def render_neutral_twin(clip_dir: str | Path, backend: str = "auto") -> tuple[np.ndarray, np.ndarray]:
    """The clip re-rendered with a neutral face: ``expr.npy - expr_emotion.npy`` with the clip's own pose,
    camera, background, speech articulation and blinks (identity and preset from ``synth.json``).

    Returns (frames uint8 [N,H,W,3], landmarks float32 [N,68,2]); deterministic; ≈ 20 ms per 128² frame
    (one torch thread: one projection and one colour pass per frame, no files written).
    For a neutral clip it equals the clip as rendered (before JPEG encoding)."""
    clip = Path(clip_dir)
    expr = np.load(clip / "expr.npy")
    path = clip / "expr_emotion.npy"
    if path.is_file():
        emo = np.load(path)
    elif json.loads((clip / "synth.json").read_text()).get("emotion", "neutral") == "neutral":
        emo = np.zeros_like(expr)
    else:
        raise FileNotFoundError(f"{path}: missing (the clip was generated before expr_emotion.npy existed; "
                                "regenerate it)")
    return render_clip(clip, expr - emo, backend)


def generate_subject(out: str | Path, preset: str = "tiny", seed: int = 0, resolution: int | None = None,
                     backend: str = "auto", progress: bool = True) -> Path:
    """Regular layout: ``out/<subject>/`` with one long clip of the identity ``seed``."""
    p = _preset(preset, resolution)
    head, f0, bg = _identity(seed, p)
    subject = Path(out) / f"synth{seed}"
    rng = np.random.default_rng(_seed("regular", seed))
    with atomic_directory(subject) as stage, torch_threads(1):  # a killed run never leaves a partial dataset
        write_clip(stage, head, p, p.seconds, rng, f0, bg=bg, backend=backend, progress=progress,
                   extra_meta={"subject": subject.name, "background": "identity"})
    return subject


def generate_emotional(out: str | Path, preset: str = "tiny", seed: int = 0, resolution: int | None = None,
                       backend: str = "auto", progress: bool = True, emotions=EMOTIONS, intensities=(1, 2, 3),
                       clips_per_level: int | None = None, workers: int | None = None) -> Path:
    """Emotional layout: ``out/<subject>/<emotion>/level_<k>/<clip>/`` + ``emotion.json`` per clip, with
    ``clips_per_level`` clips (``001``, ``002``, …; different utterances, poses and onset timings) per
    emotion and intensity (default: the preset's ``clips_per_level``, 1 for tiny, 3 for small).

    Clips are rendered on one torch thread each (the small renders are fastest that way, even more so
    on a loaded machine), by ``workers`` processes (default: 2 when there are ≥ 2 CPUs and at least
    2000 frames to render, else 1 — starting a worker costs a few seconds). The result does not
    depend on ``workers``. Workers are spawned processes: a script calling this with ``workers`` > 1
    needs the usual ``if __name__ == "__main__":`` guard; they end when the calling process dies."""
    p = _preset(preset, resolution)
    cpl = p.clips_per_level if clips_per_level is None else clips_per_level
    if isinstance(cpl, bool) or int(cpl) != cpl or int(cpl) < 1:
        raise ValueError(f"clips_per_level must be ≥ 1, got {clips_per_level!r}")
    subject = Path(out) / f"synth{seed}"
    jobs = [(e, k, c) for e in emotions for k in intensities for c in range(1, int(cpl) + 1)]
    if workers is None:
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        workers = min(2, cpus) if len(jobs) * round(p.clip_seconds * FPS) >= 2000 else 1
    if int(workers) < 1:
        raise ValueError(f"workers must be ≥ 1, got {workers!r}")
    with atomic_directory(subject) as stage:  # a killed run never leaves a partial dataset under `subject`
        args = [(stage, subject.name, seed, p, backend, e, k, c) for e, k, c in jobs]
        with tqdm(total=len(args), desc="synth emotional clips", unit="clip", disable=not progress) as bar:
            if int(workers) == 1 or len(args) <= 1:
                for a in args:
                    _emotional_clip(a)
                    bar.update()
            else:
                _run_workers(args, int(workers), bar)
    return subject


def _run_workers(args: list, workers: int, bar) -> None:
    """:func:`_emotional_clip` for every job in ``workers`` spawned processes; the first error is raised
    after the running jobs end (the queued ones are cancelled)."""
    import multiprocessing
    from concurrent.futures import FIRST_EXCEPTION, ProcessPoolExecutor, wait

    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"), initializer=_exit_with_parent,
                             initargs=(os.getpid(),)) as ex:
        futs = [ex.submit(_emotional_clip, a) for a in args]
        try:
            for f in futs:
                f.add_done_callback(lambda _: bar.update())
            done, _ = wait(futs, return_when=FIRST_EXCEPTION)
            for f in done:
                f.result()  # re-raise a worker's error
        except BaseException:
            ex.shutdown(wait=True, cancel_futures=True)
            raise


def _exit_with_parent(parent: int) -> None:
    """Worker initializer: end the worker when the generating process is gone (killed by a signal, the
    pool's workers would otherwise wait forever on its queue)."""
    import threading
    import time

    def watch():
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, daemon=True, name="exit-with-parent").start()


def _emotional_clip(args) -> None:
    """Write one clip of :func:`generate_emotional` (also in a worker process)."""
    stage, name, seed, p, backend, e, k, c = args
    head, f0, bg = _identity(seed, p)
    clip = Path(stage) / e / f"level_{k}" / f"{c:03d}"
    # clip 1 keeps the seed of the one-clip layout (a 1-clip run gives clip 001 of a larger one)
    rng = np.random.default_rng(_seed("emotional", seed, e, k) if c == 1 else _seed("emotional", seed, e, k, c))
    with torch_threads(1):
        write_clip(clip, head, p, p.clip_seconds, rng, f0, emotion=e, intensity=k, bg=bg, backend=backend,
                   progress=False, extra_meta={"subject": name, "background": "identity"})
    _write_json(clip / "emotion.json", {"emotion": e, "intensity": k})


def _preset(name: str, resolution: int | None) -> Preset:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    p = PRESETS[name]
    if resolution is not None:
        if resolution < 16:
            raise ValueError(f"--resolution must be ≥ 16, got {resolution}")
        p = replace(p, resolution=resolution)
    return p


def clip_dirs(subject: str | Path) -> list[Path]:
    """Every clip directory (one holding ``aud.wav``) under a generated subject, sorted."""
    subject = Path(subject)
    if (subject / "aud.wav").is_file():
        return [subject]
    return sorted(p.parent for p in subject.rglob("aud.wav"))


def cache_features(subject: str | Path, extractors=("mel",), model: str | Path | None = None,
                   layer: str | int | None = None) -> list[Path]:
    """Compute and cache audio features (``aud_<name>.npy``) for every clip of a generated subject.

    ``extractors``: kinds ("mel", "wav2vec2") or extractor objects; ``model`` / ``layer`` configure the
    "wav2vec2" kinds (a hub id in the local cache or a ``save_pretrained`` directory, e.g. the tiny random
    model of :func:`ua3dtalk.data.tiny_wav2vec2.save_tiny_wav2vec2`; default
    ``facebook/wav2vec2-base-960h`` logits). Every extractor is built before any clip is processed (a
    missing model fails first). Returns the cache files."""
    from ..audio import extract_features
    from ..extractors import make_extractor

    exs = [make_extractor(k, **({"model": None if model is None else str(model), "layer": layer}
                                 if k in ("wav2vec2", "w2v") else {}))
           if isinstance(k, str) else k for k in extractors]
    out = []
    for ex in exs:
        for clip in tqdm(clip_dirs(subject), desc=f"features {ex.name}", unit="clip", leave=False):
            out.append(extract_features(clip, ex))
    return out
