"""``cpu`` backend: the project's C++ compositing kernel (``csrc/composite.cpp`` with ``csrc/binning.h``).

Same contract and semantics as :func:`.dense.composite_dense` (its plain-PyTorch reference, tested
pairwise in ``tests/render``). The extension is compiled on first use and cached
(:class:`ua3dtalk.utils.cpp_ext.CppExtension`: ATen only, ``-O3 -march=native``, a name that hashes the
source, the flags, the torch version and the CPU).

If the kernel cannot be built (no compiler, no ninja, ...) :func:`cpu_backend_available` warns
once and returns False, and :func:`~ua3dtalk.render.rasterize` falls back to the ``torch`` backend.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch.autograd.function import once_differentiable

from ..utils.cpp_ext import CppExtension

TILE_SIZE = 16
#: the compositing extension (``KERNEL.reset()`` forgets a build or a memoised failure)
KERNEL = CppExtension("ua3dtalk_cpu", Path(__file__).resolve().parent / "csrc" / "composite.cpp",
                      what="cpu compositing kernel", fallback="the `torch` backend")


def load_extension():
    """Build (first use) or load the C++ extension module; raises RuntimeError on failure."""
    return KERNEL.load()


def cpu_backend_available() -> bool:
    """True if the C++ kernel builds and loads (memoised). Warns once (RuntimeWarning) if it does not."""
    return KERNEL.available()


def cpu_backend_status(build: bool = False) -> str:
    """``"built"``, ``"not built"`` (not tried yet in this process) or ``"unavailable: <reason>"``."""
    return KERNEL.status(build)


class _CompositeCPU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, means2d, conics, features, opacities, depths, extents, visible, width, height):
        ext = load_extension()
        dt = means2d.dtype
        means2d, conics, features, opacities = (t.detach().contiguous() for t in (means2d, conics, features, opacities))
        depths, extents = (t.detach().to(dt).contiguous() for t in (depths, extents))  # no gradient: cast freely
        visible = visible.detach().to(torch.bool).contiguous()
        out, T, *state = ext.forward(
            means2d, conics, features, opacities, depths, extents, visible, int(width), int(height), TILE_SIZE
        )
        ctx.save_for_backward(T, *state)
        ctx.meta = (means2d.shape[0], int(width), int(height))
        return out, T

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out, grad_T):
        ext = load_extension()
        n, width, height = ctx.meta
        T, *state = ctx.saved_tensors
        g_m, g_c, g_f, g_o = ext.backward(
            grad_out.contiguous(), grad_T.contiguous(), n, T, *state, width, height, TILE_SIZE
        )
        need = ctx.needs_input_grad
        return (g_m if need[0] else None, g_c if need[1] else None, g_f if need[2] else None,
                g_o if need[3] else None, None, None, None, None, None)


def composite_cpu(means2d, conics, features, opacities, depths, extents, visible, width, height):
    """C++ compositing; same contract as :func:`.dense.composite_dense`: returns (features [H,W,C], T [H,W]).

    Differentiable w.r.t. means2d, conics, features and opacities (not depths/extents/visible:
    depths only order the Gaussians). CPU tensors only.
    """
    for name, t in (("means2d", means2d), ("conics", conics), ("features", features), ("opacities", opacities)):
        if t.device.type != "cpu":
            raise ValueError(f"composite_cpu: `{name}` must be a CPU tensor, got {t.device}")
    return _CompositeCPU.apply(means2d, conics, features, opacities, depths, extents, visible, width, height)


__all__ = ["cpu_backend_available", "cpu_backend_status", "composite_cpu", "load_extension"]
