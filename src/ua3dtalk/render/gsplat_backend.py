"""``gsplat`` backend (CUDA): delegates the whole pipeline to ``gsplat.rasterization``.

Mapping to our semantics (DESIGN §7), which take gsplat's conventions: pixel (r, c) sampled at
(c+0.5, r+0.5); ``eps2d=0.3`` as the low-pass blur; J evaluated at view directions clamped to the
frustum around the principal point widened by 0.3·tan(fov/2) (``projection.jacobian_limits``); α capped
at 0.999; activated scales and opacities. ``render_mode="RGB+D"`` returns the accumulated
(alpha-weighted, unnormalised) depth like ours. The background is blended here with the final
transmittance. ``meta["means2d"]`` is in pixels, so its gradient has the same units as our
``means2d.grad``. gsplat ≥ 1.4 bins with the same opacity-aware extent as ours (capped at 3.33σ ≥ the
extent of any opacity ≤ 1); older versions cut at 3σ, which differs for opacities above 0.35. It stops
compositing on T ≤ 1e-4 where we stop on T < 1e-4 (equal but on a set of measure zero).
``tests/render/test_gpu_backends.py`` compares it with ``dense`` on CUDA, clamps included.
Imported only when this backend is used.
"""
from __future__ import annotations

import torch

from .api import RenderOutput, cuda_backend_module


def rasterize_gsplat(means, quats, scales, opacities, colors, viewmat, K, width, height, background, sh_degree,
                     near, far) -> RenderOutput:
    rasterization = cuda_backend_module("gsplat", "gsplat", "the gsplat package: pip install 'ua3dtalk[gpu]'",
                                        means.device).rasterization
    colors_out, alphas, meta = rasterization(
        means, quats, scales, opacities, colors, viewmat[None], K[None], width, height,
        near_plane=near, far_plane=far, sh_degree=sh_degree, render_mode="RGB+D", eps2d=0.3, packed=False,
        rasterize_mode="classic",
    )
    g_means2d = meta["means2d"]  # [1,N,2], pixels
    means2d = g_means2d[0].detach().clone().requires_grad_(g_means2d.requires_grad)
    if g_means2d.requires_grad:  # expose the gradient on the [N,2] leaf we return
        def _copy_grad(g):
            means2d.grad = g[0].detach().clone()

        g_means2d.register_hook(_copy_grad)
    radii = meta["radii"][0]
    if radii.dim() == 2:  # newer gsplat: per-axis radii
        radii = radii.max(-1).values
    image = colors_out[0, ..., :3]
    alpha = alphas[0]
    if background is not None:
        image = image + (1.0 - alpha) * background
    return RenderOutput(image=image, alpha=alpha, depth=colors_out[0, ..., 3:4], radii=radii.to(torch.int32),
                        means2d=means2d, backend="gsplat")
