"""Shared test configuration: offline environment, the ``gpu`` marker, random Gaussian scenes.

Scenes are generated in camera space (so that their screen-space layout is controlled: pixel
footprints from sub-pixel to larger than the image, positions crossing the image and tile borders,
depths in front of and behind the camera) and then moved to world space with a random rigid camera.
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from dataclasses import dataclass, field, replace

# Under pytest-xdist (`make test`: one worker per core) every worker, and every process its tests start (they
# inherit the environment), computes on one thread: two workers with a thread per core each would contend.
# Set before torch is imported, so that its OpenMP runtime starts with one thread too.
XDIST_WORKER = os.environ.get("PYTEST_XDIST_WORKER")
if XDIST_WORKER:
    os.environ["OMP_NUM_THREADS"] = "1"
    os.environ["MKL_NUM_THREADS"] = "1"

# imported here so that lightning's log handlers bind to the session's stderr, not to the capture stream of
# whichever test imports it first (closed after that test: later logs would print "--- Logging error ---")
import lightning.pytorch  # noqa: F401,E402
import pytest  # noqa: E402
import torch  # noqa: E402

if XDIST_WORKER:
    torch.set_num_threads(1)

# Nothing may reach the network from the test suite (DESIGN §10).
for _k, _v in {
    "WANDB_MODE": "offline",
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
}.items():
    os.environ[_k] = _v


# Hypothesis: the suite (`make test`, CI) runs a fixed, derandomised set of examples, so a run on a
# fresh machine cannot fail on an input no earlier run tried. Explore new inputs with
# `HYPOTHESIS_PROFILE=explore pytest tests/robustness/test_fuzz.py`.
try:
    from hypothesis import settings as _hyp_settings

    _hyp_settings.register_profile("ci", derandomize=True, database=None, print_blob=True)
    _hyp_settings.register_profile("explore", derandomize=False, print_blob=True)
    _hyp_settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
except ImportError:  # hypothesis is a dev dependency; the fuzz tests import it themselves
    pass


# Under pytest-xdist (`--dist loadfile --no-loadscope-reorder`, see the Makefile) a worker that runs out of work
# takes the next file in collection order. These files, the longest first, are collected before all others, so
# that no long file starts late and leaves the other worker idle at the end (seconds per file, fixtures included,
# with 2 workers on 2 cores: the whole suite is ≈ 1220 s of work, test_learning alone ≈ 410 s). Only under xdist
# (a plain run keeps pytest's order), and the same on every worker (xdist requires identical collections).
SLOW_FILES_FIRST = (
    "tests/models/test_learning.py",  # 410 s (a module fixture trains the face stage for ≈ 360 s)
    "tests/robustness/test_interrupted.py",  # 85 s (the kill-and-resume loop)
    "tests/cli/test_evaluators_cli.py",  # 75 s
    "tests/models/test_module.py",  # 70 s
    "tests/preprocess/test_own_video.py",  # 55 s
    "tests/experiments/test_sweep_table.py",  # 55 s
    "tests/metrics/test_syncnet_train.py",  # 45 s
    "tests/cli/test_slurm_launcher.py",  # 35 s
    "tests/cli/test_cli_demo.py",  # 35 s
)


def _slow_first(items) -> None:
    rank = {f: i for i, f in enumerate(SLOW_FILES_FIRST)}
    items.sort(key=lambda item: rank.get(item.nodeid.split("::", 1)[0], len(rank)))  # stable: files stay whole


# Files sharing an expensive session fixture of their directory's conftest form one xdist work unit (so one
# worker builds it once): the metrics evaluators (synth_emo8 and three trained evaluators, ≈ 60 s).
SAME_WORKER = dict.fromkeys(("tests/metrics/test_metrics_efid.py", "tests/metrics/test_metrics_evaluators.py",
                             "tests/metrics/test_metrics_landmarks.py"), "tests/metrics: trained evaluators")


@pytest.hookimpl(optionalhook=True)  # a pytest-xdist hook, called in the controller; unknown without xdist
def pytest_xdist_make_scheduler(config, log):
    """``--dist loadfile`` with the files of :data:`SAME_WORKER` as one unit (other modes: xdist's own)."""
    if config.getvalue("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadFileScheduling

    class _LoadFileSameWorker(LoadFileScheduling):
        def _split_scope(self, nodeid: str) -> str:
            scope = super()._split_scope(nodeid)
            return SAME_WORKER.get(scope, scope)

    return _LoadFileSameWorker(config, log)


def pytest_collection_modifyitems(config, items):
    if XDIST_WORKER:
        _slow_first(items)
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA (torch.cuda.is_available() is False)")
    for item in items:
        if item.get_closest_marker("gpu") is not None:  # not `in item.keywords`: ids can be "gpu" too
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _offline_env(monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


# --------------------------------------------------------------------------------------------------
# Random scenes
# --------------------------------------------------------------------------------------------------

GRAD_NAMES = ("means", "quats", "scales", "opacities", "colors", "background", "viewmat", "K")


@dataclass
class Scene:
    """Inputs of :func:`ua3dtalk.render.rasterize` for one camera."""

    means: torch.Tensor
    quats: torch.Tensor
    scales: torch.Tensor
    opacities: torch.Tensor
    colors: torch.Tensor
    viewmat: torch.Tensor
    K: torch.Tensor
    width: int
    height: int
    background: torch.Tensor | None = None
    sh_degree: int | None = None
    meta: dict = field(default_factory=dict)

    @property
    def n(self) -> int:
        return self.means.shape[0]

    def tensors(self) -> dict:
        d = {k: getattr(self, k) for k in ("means", "quats", "scales", "opacities", "colors", "viewmat", "K")}
        if self.background is not None:
            d["background"] = self.background
        return d

    def to(self, dtype=None, device=None) -> "Scene":
        conv = {k: v.to(dtype=dtype, device=device) for k, v in self.tensors().items()}
        return replace(self, **conv)

    def leaves(self, grad_wrt=GRAD_NAMES) -> dict:
        """Fresh leaf copies of the tensors; those named in ``grad_wrt`` require grad."""
        out = {}
        for k, v in self.tensors().items():
            t = v.detach().clone()
            if k in grad_wrt:
                t.requires_grad_(True)
            out[k] = t
        return out

    def render(self, backend: str, leaves: dict | None = None, **kw):
        from ua3dtalk.render import rasterize

        t = self.tensors() if leaves is None else leaves
        args = dict(
            width=self.width, height=self.height, background=t.get("background"), sh_degree=self.sh_degree,
            backend=backend,
        )
        args.update(kw)
        return rasterize(t["means"], t["quats"], t["scales"], t["opacities"], t["colors"], t["viewmat"],
                         t["K"], **args)


def random_rotation(gen: torch.Generator, dtype=torch.float64, max_angle: float = math.pi) -> torch.Tensor:
    axis = torch.randn(3, generator=gen, dtype=dtype)
    axis = axis / axis.norm()
    ang = (torch.rand((), generator=gen, dtype=dtype) * 2 - 1) * max_angle
    Kx = torch.tensor([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]], dtype=dtype)
    return torch.eye(3, dtype=dtype) + torch.sin(ang) * Kx + (1 - torch.cos(ang)) * Kx @ Kx


def make_scene(
    seed: int = 0,
    n: int = 50,
    width: int = 70,
    height: int = 45,
    *,
    dtype=torch.float32,
    sh_degree: int | None = None,
    sh_coeffs: int | None = None,
    background: bool = True,
    depth_range=(1.5, 8.0),
    behind: float = 0.0,
    sigma_px=(0.05, 12.0),
    large_frac: float = 0.03,
    sigma_px_large=(30.0, 300.0),
    large_opacity_scale: float = 0.3,
    aniso: float = 0.7,
    opacity_range=(0.02, 1.0),
    clamp_frac: float = 0.1,
    tiny_opacity_frac: float = 0.03,
    border: float = 0.3,
    focal: float | None = None,
    camera_angle: float = math.pi,
    uv: torch.Tensor | None = None,
) -> Scene:
    """A random scene (generated in float64, then cast to ``dtype``).

    * screen positions uniform over the image enlarged by ``border`` on each side (so Gaussians cross
      image and tile borders, some centres lie outside the image);
    * view-space depths uniform in ``depth_range``; a fraction ``behind`` is put behind the camera
      (z in [-4, 0.005], i.e. also just in front of the camera but before the default near plane);
    * pixel footprints σ log-uniform in ``sigma_px``, except a fraction ``large_frac`` log-uniform in
      ``sigma_px_large`` (larger than the image; their opacity is scaled by ``large_opacity_scale`` so
      they do not hide everything), with a per-axis anisotropy factor exp(±aniso) and a random
      rotation;
    * opacities uniform in ``opacity_range``, a fraction ``clamp_frac`` in [0.999, 1] (alpha clamping)
      and a fraction ``tiny_opacity_frac`` below 1/255 (never drawn);
    * colours RGB in [0,1], or SH coefficients [N,K,3] when ``sh_degree`` is given (some colours
      are clamped at 0);
    * ``uv`` [N,2] overrides the random screen positions (pixels);
    * a random rigid camera (rotation up to ``camera_angle``) and intrinsics with fx ≠ fy and an
      off-centre principal point.
    """
    g = torch.Generator().manual_seed(seed)
    f64 = torch.float64

    def U(lo, hi, *shape):
        return lo + (hi - lo) * torch.rand(*shape, generator=g, dtype=f64)

    f = float(focal) if focal is not None else 0.9 * max(width, height)
    fx, fy = f * float(U(0.9, 1.1, ())), f * float(U(0.9, 1.1, ()))
    cx, cy = width / 2 + float(U(-3, 3, ())), height / 2 + float(U(-3, 3, ()))
    K = torch.tensor([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]], dtype=f64)

    u = U(-border * width, (1 + border) * width, n)
    v = U(-border * height, (1 + border) * height, n)
    if uv is not None:
        u, v = uv[:, 0].to(f64).clone(), uv[:, 1].to(f64).clone()
    z = U(depth_range[0], depth_range[1], n)
    nb = int(round(behind * n))
    if nb:
        idx = torch.randperm(n, generator=g)[:nb]
        z[idx] = U(-4.0, 0.005, nb)
    zz = torch.where(z.abs() < 1e-3, torch.full_like(z, 1e-3), z)
    x = (u - cx) / fx * zz
    y = (v - cy) / fy * zz
    p_cam = torch.stack([x, y, z], -1)

    sig = torch.exp(U(math.log(sigma_px[0]), math.log(sigma_px[1]), n))  # pixels
    large = torch.rand(n, generator=g, dtype=f64) < large_frac
    sig = torch.where(large, torch.exp(U(math.log(sigma_px_large[0]), math.log(sigma_px_large[1]), n)), sig)
    scales = (sig * zz.abs() / f)[:, None] * torch.exp(U(-aniso, aniso, n, 3))
    quats = torch.randn(n, 4, generator=g, dtype=f64) * 1.5

    opac = U(opacity_range[0], opacity_range[1], n)
    r = torch.rand(n, generator=g, dtype=f64)
    opac = torch.where(r < clamp_frac, U(0.999, 1.0, n), opac)
    opac = torch.where(r > 1 - tiny_opacity_frac, U(0.0, 0.99 / 255, n), opac)
    opac = torch.where(large, opac * large_opacity_scale, opac)

    if sh_degree is None:
        colors = U(0.0, 1.0, n, 3)
    else:
        k = sh_coeffs if sh_coeffs is not None else (sh_degree + 1) ** 2
        colors = torch.randn(n, k, 3, generator=g, dtype=f64) * 0.35
        colors[:, 0] = U(-2.5, 1.6, n, 3)

    R = random_rotation(g, max_angle=camera_angle)
    t = torch.randn(3, generator=g, dtype=f64) * 2.0
    viewmat = torch.eye(4, dtype=f64)
    viewmat[:3, :3], viewmat[:3, 3] = R, t
    means = (p_cam - t) @ R  # R^T (p - t), row-vector form
    bg = U(0.0, 1.0, 3) if background else None

    sc = Scene(means=means, quats=quats, scales=scales, opacities=opac, colors=colors, viewmat=viewmat, K=K,
               width=width, height=height, background=bg, sh_degree=sh_degree,
               meta=dict(seed=seed, p_cam=p_cam))
    return sc.to(dtype=dtype)


@pytest.fixture
def scene_factory():
    """``scene_factory(seed, n, width, height, **options)`` → :class:`Scene` (see :func:`make_scene`)."""
    return make_scene


# --------------------------------------------------------------------------------------------------
# Backends and comparisons
# --------------------------------------------------------------------------------------------------


def require_backend(name: str) -> str:
    """Fail (never skip) when the C++ kernel is missing: CI always has a compiler."""
    if name == "cpu":
        from ua3dtalk.render import cpu_backend_available, cpu_backend_status

        assert cpu_backend_available(), f"the C++ cpu backend is not available: {cpu_backend_status()}"
    return name


@pytest.fixture(params=["torch", "cpu"])
def backend(request):
    """The CPU compositing backends under test (compared against ``dense``)."""
    return require_backend(request.param)


def loss_weights(height: int, width: int, dtype, seed: int = 1234, device="cpu") -> dict:
    """Random weights for a scalar loss touching image, alpha and depth (so every output is tested)."""
    g = torch.Generator().manual_seed(seed)

    def r(c, s=1.0):
        t = s * torch.randn(height, width, c, generator=g, dtype=torch.float64)
        return t.to(dtype=dtype, device=device)

    return {"image": r(3), "alpha": r(1), "depth": r(1, 0.1)}


def weighted_loss(out, w: dict) -> torch.Tensor:
    return (out.image * w["image"]).sum() + (out.alpha * w["alpha"]).sum() + (out.depth * w["depth"]).sum()


def render_with_grads(scene: Scene, backend: str, grad_wrt=GRAD_NAMES, seed: int = 1234, **kw):
    """Render, backpropagate a random weighted loss; return (output, {name: grad})."""
    leaves = scene.leaves(grad_wrt)
    out = scene.render(backend, leaves, **kw)
    w = loss_weights(scene.height, scene.width, scene.means.dtype, seed, device=scene.means.device)
    weighted_loss(out, w).backward()
    grads = {k: v.grad for k, v in leaves.items() if v.requires_grad}
    return out, grads


def assert_rel_close(actual: torch.Tensor, expected: torch.Tensor, rtol: float, floor: float, what: str):
    """|a - e| ≤ rtol·max|e| + floor elementwise (the reference's scale sets the tolerance)."""
    assert actual is not None, f"{what}: gradient is None"
    assert expected is not None, f"{what}: reference gradient is None"
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    assert bool(torch.isfinite(actual.detach()).all()), f"{what}: non-finite values"
    if expected.numel() == 0:
        return
    actual, expected = actual.detach(), expected.detach()
    scale = float(expected.abs().max())
    err = float((actual - expected).abs().max())
    tol = rtol * scale + floor
    assert err <= tol, f"{what}: max abs error {err:.3e} > tol {tol:.3e} (reference max-abs {scale:.3e})"


@pytest.fixture(scope="session")
def load_script():
    """``load_script(name)``: the module ``scripts/<name>.py`` (the scripts are not a package)."""
    import importlib.util

    root = Path(__file__).resolve().parents[1]

    def load(name: str):
        spec = importlib.util.spec_from_file_location(name, root / "scripts" / f"{name}.py")
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        return mod

    return load


@pytest.fixture
def helpers():
    """Namespace with the comparison helpers, for test modules."""

    class H:
        pass

    for fn in (make_scene, require_backend, loss_weights, weighted_loss, render_with_grads, assert_rel_close):
        setattr(H, fn.__name__, staticmethod(fn))
    H.GRAD_NAMES = GRAD_NAMES
    H.Scene = Scene
    return H


# --------------------------------------------------------------------------------------------------
# Synthetic emotional dataset for the model tests (generated once per session)
# --------------------------------------------------------------------------------------------------

SMALL_EMOTIONS = ("neutral", "angry", "happy", "sad")
"""Emotions of :func:`synth_emotional_small` (× intensities 1, 2, 3 = 12 clips of 30 frames of 64²)."""


@pytest.fixture(scope="session")
def synth_emotional_small(tmp_path_factory):
    """A reduced `tiny` emotional subject (seed 0): :data:`SMALL_EMOTIONS` × intensities 1–3 with cached
    log-mel features; the subject directory (``…/synth0``). Read-only: copy it before modifying anything.

    Generated on one torch thread (restored afterwards): the tiny renders are much faster than with
    contended intra-op threads on a loaded machine."""
    from ua3dtalk.data.synth.generate import cache_features, generate_emotional

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        subject = generate_emotional(tmp_path_factory.mktemp("synth_emotional_small"), "tiny", seed=0,
                                     backend="cpu", progress=False, emotions=SMALL_EMOTIONS, intensities=(1, 2, 3))
        cache_features(subject, ["mel"])
    finally:
        torch.set_num_threads(n)
    return subject


@pytest.fixture(scope="session")
def synth_emotional_roles(tmp_path_factory):
    """Like :func:`synth_emotional_small` with 2 clips per emotion × intensity (24 clips), so every clip
    role of the synthetic configs (DESIGN §5.5: evaluator, train, val, test) gets clips of every emotion.
    Read-only."""
    from ua3dtalk.data.synth.generate import cache_features, generate_emotional

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        subject = generate_emotional(tmp_path_factory.mktemp("synth_emotional_roles"), "tiny", seed=0,
                                     backend="cpu", progress=False, emotions=SMALL_EMOTIONS, intensities=(1, 2, 3),
                                     clips_per_level=2)
        cache_features(subject, ["mel"])
    finally:
        torch.set_num_threads(n)
    return subject


@pytest.fixture(scope="session")
def tiny_w2v(tmp_path_factory) -> Path:
    """A tiny random-initialised Wav2Vec2ForCTC saved with save_pretrained (the real loading code runs)."""
    import torch
    from transformers import Wav2Vec2Config, Wav2Vec2ForCTC

    torch.manual_seed(0)
    cfg = Wav2Vec2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=48,
                         conv_dim=(16,) * 7, vocab_size=12, num_conv_pos_embeddings=16,
                         num_conv_pos_embedding_groups=2)
    path = tmp_path_factory.mktemp("models") / "tiny-w2v"
    Wav2Vec2ForCTC(cfg).eval().save_pretrained(str(path))
    return path


@pytest.fixture
def one_thread():
    """Run a test body on one torch thread (much faster than contended intra-op threads on a loaded machine)."""
    from ua3dtalk.utils.threads import torch_threads

    with torch_threads(1):
        yield
