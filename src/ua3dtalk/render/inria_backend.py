"""``inria`` backend (CUDA): adapter for ``diff_gaussian_rasterization`` (3DGS / TalkingGaussian fork).

Mapping to our semantics (DESIGN §7):

* The Inria kernel samples pixel i at integer coordinate i (``ndc2Pix``), we sample at i+0.5, and it
  has no principal point of its own; both are absorbed into the projection matrix we pass: the
  row for x is ``(2 f_x/W)·x + (2 c_x/W - 1)·z`` so that its pixel coordinate equals
  ``f_x x/z + c_x - 0.5``.
* Two differences from DESIGN §7 remain, fixed in the upstream kernel: α is capped at 0.99 (ours and
  gsplat's: 0.999), and J is evaluated at view directions clamped to ±1.3·tan(fov/2) about the optical
  axis (ours and gsplat's: about the principal point's frustum) — equal when the principal point is the
  image centre and no α exceeds 0.99.
* ``means2D`` gradients come out in NDC units (d/dndc = d/dpixel · W/2); they are converted back to
  pixels and exposed through ``RenderOutput.means2d.grad``.
* The upstream kernel culls z ≤ 0.2 (hard-coded) regardless of ``near``; TalkingGaussian's fork returns
  ``(color, radii, depth, alpha)``, the original ``(color, radii)`` (then alpha/depth are rendered by
  a second pass with constant colours).
Imported only when this backend is used.
"""
from __future__ import annotations

import torch

from .api import RenderOutput, cuda_backend_module


def _projection(K, width, height, near, far, dtype, device):
    fx, fy, cx, cy = K[0, 0], K[1, 1], K[0, 2], K[1, 2]
    P = torch.zeros(4, 4, dtype=dtype, device=device)
    P[0, 0] = 2 * fx / width
    P[0, 2] = 2 * cx / width - 1
    P[1, 1] = 2 * fy / height
    P[1, 2] = 2 * cy / height - 1
    P[3, 2] = 1.0
    P[2, 2] = far / (far - near)
    P[2, 3] = -(far * near) / (far - near)
    return P


def rasterize_inria(means, quats, scales, opacities, colors, viewmat, K, width, height, background, sh_degree,
                    near, far) -> RenderOutput:
    dgr = cuda_backend_module("inria", "diff_gaussian_rasterization",
                              "diff_gaussian_rasterization (build it from source with CUDA)", means.device)
    GaussianRasterizationSettings, GaussianRasterizer = dgr.GaussianRasterizationSettings, dgr.GaussianRasterizer
    f32 = torch.float32
    far_ = min(far, 1e4)
    P = _projection(K.to(f32), width, height, near, far_, f32, means.device)
    # the kernel expects row-vector (transposed) matrices, as 3DGS passes them
    view_t = viewmat.to(f32).T.contiguous()
    full_t = (P @ viewmat.to(f32)).T.contiguous()
    campos = (-viewmat[:3, :3].T @ viewmat[:3, 3]).to(f32)
    bg = background if background is not None else torch.zeros(3, dtype=means.dtype, device=means.device)
    settings = GaussianRasterizationSettings(
        image_height=height, image_width=width,
        tanfovx=float(width / (2 * K[0, 0])), tanfovy=float(height / (2 * K[1, 1])),
        bg=bg.to(f32), scale_modifier=1.0, viewmatrix=view_t, projmatrix=full_t,
        sh_degree=sh_degree or 0, campos=campos, prefiltered=False, debug=False,
    )
    raster = GaussianRasterizer(settings)
    screen = torch.zeros(means.shape[0], 3, dtype=f32, device=means.device, requires_grad=True)
    kw = dict(means3D=means.to(f32), means2D=screen, opacities=opacities.to(f32)[:, None], scales=scales.to(f32),
              rotations=quats.to(f32))
    if sh_degree is None:
        kw["colors_precomp"] = colors.to(f32)
    else:
        kw["shs"] = colors.to(f32)
    res = raster(**kw)
    image, radii = res[0], res[1]
    if len(res) >= 4:
        depth, alpha = res[2], res[3]
    else:  # original kernel: render depth and alpha as colours in a second pass
        ones = torch.ones_like(means[:, :1]).to(f32)
        z = (means.to(f32) @ viewmat[:3, :3].to(f32).T + viewmat[:3, 3].to(f32))[:, 2:3]
        settings2 = settings._replace(bg=torch.zeros(3, dtype=f32, device=means.device), sh_degree=0)
        extra = GaussianRasterizer(settings2)(
            means3D=kw["means3D"], means2D=torch.zeros_like(screen), opacities=kw["opacities"], scales=kw["scales"],
            rotations=kw["rotations"], colors_precomp=torch.cat([z, ones, ones * 0], -1))[0]
        depth, alpha = extra[0:1], extra[1:2]
    with torch.no_grad():  # our pixel coordinates of the means (the kernel keeps its own)
        pc = means @ viewmat[:3, :3].T + viewmat[:3, 3]
        z = pc[:, 2].clamp_min(1e-12)
        uv = torch.stack([K[0, 0] * pc[:, 0] / z + K[0, 2], K[1, 1] * pc[:, 1] / z + K[1, 2]], -1)
    means2d = uv.clone().requires_grad_(True)

    def _to_pixels(g):  # NDC-unit gradient → pixel units
        means2d.grad = torch.stack([g[:, 0] * 2.0 / width, g[:, 1] * 2.0 / height], -1).to(means.dtype)

    if screen.requires_grad:
        screen.register_hook(_to_pixels)
    return RenderOutput(image=image.permute(1, 2, 0).to(means.dtype), alpha=alpha.permute(1, 2, 0).to(means.dtype),
                        depth=depth.permute(1, 2, 0).to(means.dtype), radii=radii.to(torch.int32), means2d=means2d,
                        backend="inria")
