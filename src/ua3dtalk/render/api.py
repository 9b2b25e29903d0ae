"""The public rendering API: :func:`rasterize` and :class:`RenderOutput` (DESIGN §7).

Pipeline: argument checks → projection and SH in PyTorch autograd (:mod:`.projection`, :mod:`.sh`)
→ compositing by the chosen backend (``dense`` | ``torch`` | ``cpu``) → background blend. The
``gsplat`` and ``inria`` backends hand the whole pipeline to the CUDA libraries and map their
conventions back to ours.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Literal, get_args

import torch

from .projection import project_gaussians
from .sh import eval_sh_colors

Backend = Literal["auto", "dense", "torch", "cpu", "gsplat", "inria"]
BACKENDS = get_args(Backend)
MAX_IMAGE_SIDE = 16384
"""Largest accepted ``width`` / ``height`` (pixels): larger sizes are refused before any allocation."""


@dataclass
class RenderOutput:
    """Result of :func:`rasterize` for one camera.

    image  [H,W,3]  composited colour, background blended with the final transmittance
    alpha  [H,W,1]  1 - final transmittance
    depth  [H,W,1]  alpha-weighted view-space depth Σ_i z_i α_i T_i (not normalised by alpha)
    radii  [N] int32 screen-space radius in pixels, 0 when the Gaussian is culled
    means2d [N,2]   projected means in pixels; after ``backward`` its ``.grad`` holds dL/dmeans2d
                    (pixel units), which adaptive density control reads.
    backend         the backend that actually rendered (``auto`` resolved, fallbacks applied)
    """

    image: torch.Tensor
    alpha: torch.Tensor
    depth: torch.Tensor
    radii: torch.Tensor
    means2d: torch.Tensor
    backend: str = ""


def _check(name: str, t, shape: tuple, dtype, device, finite: bool = True) -> None:
    if not isinstance(t, torch.Tensor):
        raise ValueError(f"rasterize: `{name}` must be a torch.Tensor of shape {shape}, got {type(t).__name__}")
    if t.dim() != len(shape) or any(s is not None and s != d for s, d in zip(shape, t.shape)):
        want = "[" + ",".join("*" if s is None else str(s) for s in shape) + "]"
        raise ValueError(f"rasterize: `{name}` must have shape {want}, got {list(t.shape)}")
    if t.dtype != dtype:
        raise ValueError(f"rasterize: `{name}` has dtype {t.dtype}, expected {dtype} (the dtype of `means`)")
    if t.device != device:
        raise ValueError(f"rasterize: `{name}` is on {t.device}, expected {device} (the device of `means`)")
    if finite and t.numel() and not bool(torch.isfinite(t.detach()).all()):
        raise ValueError(f"rasterize: `{name}` contains NaN or Inf")


def validate_inputs(means, quats, scales, opacities, colors, viewmat, K, width, height, background, sh_degree,
                    near, far) -> int | None:
    """Raise ``ValueError`` naming the argument for any malformed input; return the SH degree (or None)."""
    if not isinstance(means, torch.Tensor):
        raise ValueError(f"rasterize: `means` must be a torch.Tensor [N,3], got {type(means).__name__}")
    if means.dtype not in (torch.float32, torch.float64):
        raise ValueError(f"rasterize: `means` must be float32 or float64, got {means.dtype}")
    dt, dev = means.dtype, means.device
    if dev.type == "meta":  # no data: the value checks below could not run
        raise ValueError("rasterize: `means` is on the 'meta' device; rasterize needs tensors with data")
    _check("means", means, (None, 3), dt, dev)
    n = means.shape[0]
    _check("quats", quats, (n, 4), dt, dev)
    _check("scales", scales, (n, 3), dt, dev)
    _check("opacities", opacities, (n,), dt, dev)
    _check("viewmat", viewmat, (4, 4), dt, dev)
    _check("K", K, (3, 3), dt, dev)
    for name, v in (("width", width), ("height", height)):
        if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
            raise ValueError(f"rasterize: `{name}` must be a positive int, got {v!r}")
        if v > MAX_IMAGE_SIDE:
            raise ValueError(f"rasterize: `{name}` must be at most {MAX_IMAGE_SIDE} pixels, got {v}")
    if n:
        if bool((scales.detach() <= 0).any()):
            raise ValueError("rasterize: `scales` must be > 0 (pass activated scales, e.g. exp(log_scales))")
        if bool((quats.detach().norm(dim=-1) <= 1e-12).any()):
            raise ValueError("rasterize: `quats` contains a zero-norm quaternion")
        o = opacities.detach()
        if bool(((o < 0) | (o > 1)).any()):
            raise ValueError("rasterize: `opacities` must lie in [0,1] (pass activated opacities, e.g. sigmoid)")
    if float(K[0, 0].detach()) <= 0 or float(K[1, 1].detach()) <= 0:
        raise ValueError("rasterize: `K` must have positive focal lengths K[0,0] and K[1,1]")
    if not (isinstance(near, (int, float)) and isinstance(far, (int, float)) and 0 < near < far):
        raise ValueError(f"rasterize: need 0 < near < far, got near={near!r}, far={far!r}")
    if background is not None:
        _check("background", background, (3,), dt, dev)
    if not isinstance(colors, torch.Tensor):
        raise ValueError(f"rasterize: `colors` must be a torch.Tensor, got {type(colors).__name__}")
    if colors.dim() == 2:
        if sh_degree is not None:
            raise ValueError("rasterize: `sh_degree` was given but `colors` is [N,3] RGB; pass SH as [N,K,3]")
        _check("colors", colors, (n, 3), dt, dev)
        return None
    if colors.dim() == 3:
        _check("colors", colors, (n, None, 3), dt, dev)
        k = colors.shape[1]
        if sh_degree is None:
            d = math.isqrt(k) - 1
            if (d + 1) ** 2 != k:
                raise ValueError(f"rasterize: SH `colors` [N,K,3] needs K=(d+1)² coefficients, got K={k}")
            sh_degree = d
        if isinstance(sh_degree, bool) or not isinstance(sh_degree, int) or not 0 <= sh_degree <= 3:
            raise ValueError(f"rasterize: `sh_degree` must be an int in 0..3, got {sh_degree!r}")
        if k < (sh_degree + 1) ** 2:
            raise ValueError(f"rasterize: sh_degree={sh_degree} needs {(sh_degree + 1) ** 2} coefficients, "
                             f"`colors` has {k}")
        return sh_degree
    raise ValueError(f"rasterize: `colors` must be [N,3] RGB or [N,K,3] SH, got shape {list(colors.shape)}")


def cuda_backend_module(backend: str, module: str, needs: str, device: torch.device):
    """The upstream package of a CUDA backend (``gsplat``, ``inria``), imported on first use: ImportError
    saying what to install (``needs``) when it is missing, ValueError for tensors not on CUDA."""
    import importlib

    try:
        mod = importlib.import_module(module)
    except ImportError as e:  # pragma: no cover - needs CUDA
        raise ImportError(f"backend {backend!r} needs {needs}") from e
    if device.type != "cuda":
        raise ValueError(f"rasterize: backend {backend!r} needs CUDA tensors, got {device}")
    return mod


def _resolve_backend(backend: str, device: torch.device) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"rasterize: unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if backend != "auto":
        return backend
    if device.type == "cuda":
        try:
            import gsplat  # noqa: F401

            return "gsplat"
        except ImportError:
            return "torch"
    from .cpu_backend import cpu_backend_available

    return "cpu" if device.type == "cpu" and cpu_backend_available() else "torch"


def rasterize(
    means: torch.Tensor,
    quats: torch.Tensor,
    scales: torch.Tensor,
    opacities: torch.Tensor,
    colors: torch.Tensor,
    viewmat: torch.Tensor,
    K: torch.Tensor,
    width: int,
    height: int,
    background: torch.Tensor | None = None,
    sh_degree: int | None = None,
    near: float = 0.01,
    far: float = 1e10,
    backend: str = "auto",
) -> RenderOutput:
    """Render N 3-D Gaussians seen by one camera (semantics: DESIGN §7, :mod:`.projection`).

    Args:
        means: [N,3] world positions.
        quats: [N,4] rotations (w, x, y, z), normalised inside.
        scales: [N,3] standard deviations along the local axes (> 0, already activated).
        opacities: [N] in [0,1] (already activated).
        colors: [N,3] RGB, or [N,K,3] SH coefficients with ``sh_degree`` d ≤ 3, K ≥ (d+1)²
            (colour = SH + 0.5, clamped at 0).
        viewmat: [4,4] world→camera, OpenCV axes (x right, y down, z forward).
        K: [3,3] intrinsics; pixel (r, c) is sampled at (c+0.5, r+0.5).
        width, height: image size in pixels.
        background: [3] colour behind the Gaussians, or None (black).
        near, far: view-space depth range; Gaussians outside are culled.
        backend: ``auto`` (gsplat on CUDA if installed, else ``cpu`` if the C++ kernel builds, else
            ``torch``), ``dense``, ``torch``, ``cpu``, ``gsplat``, ``inria``.

    All tensor inputs are differentiable; float32 and float64 are supported (float64 for gradcheck).
    Raises ``ValueError`` naming the argument for wrong shapes, dtypes, devices, NaN/Inf, non-positive
    scales, zero-norm quaternions, opacities outside [0,1] and non-positive image sizes.
    """
    sh_deg = validate_inputs(means, quats, scales, opacities, colors, viewmat, K, width, height, background,
                             sh_degree, near, far)
    name = _resolve_backend(backend, means.device)
    if name == "gsplat":
        from .gsplat_backend import rasterize_gsplat

        return rasterize_gsplat(means, quats, scales, opacities, colors, viewmat, K, width, height, background,
                                sh_deg, near, far)
    if name == "inria":
        from .inria_backend import rasterize_inria

        return rasterize_inria(means, quats, scales, opacities, colors, viewmat, K, width, height, background,
                               sh_deg, near, far)

    proj = project_gaussians(means, quats, scales, opacities, viewmat, K, width, height, near, far)
    if proj.means2d.requires_grad:
        proj.means2d.retain_grad()
    rgb = colors if sh_deg is None else eval_sh_colors(colors, sh_deg, means, viewmat)
    features = torch.cat([rgb, proj.depths[:, None]], dim=-1)  # depth composited as a 4th channel
    if name == "dense":
        from .dense import composite_dense as composite
    elif name == "torch":
        from .torch_backend import composite_torch as composite
    else:  # cpu
        from .cpu_backend import composite_cpu, cpu_backend_available

        if means.device.type != "cpu":
            raise ValueError(f"rasterize: backend 'cpu' needs CPU tensors, got {means.device}")
        if cpu_backend_available():
            composite = composite_cpu
        else:
            from .torch_backend import composite_torch as composite

            _warn_once("rasterize: the C++ cpu kernel is unavailable; using the 'torch' backend instead "
                       "(see ua3dtalk.render.cpu_backend_status())")
            name = "torch"
    feat, T = composite(proj.means2d, proj.conics, features, opacities, proj.depths, proj.extents, proj.visible,
                        width, height)
    T = T[..., None]
    image = feat[..., :3]
    if background is not None:
        image = image + T * background
    return RenderOutput(image=image, alpha=1.0 - T, depth=feat[..., 3:4], radii=proj.radii, means2d=proj.means2d,
                        backend=name)


def _warn_once(msg: str, _seen=set()) -> None:  # noqa: B006 - deliberate module-level memo
    if msg not in _seen:
        _seen.add(msg)
        warnings.warn(msg, RuntimeWarning, stacklevel=3)
