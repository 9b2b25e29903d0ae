"""Differentiable Gaussian rasterization with one API and several backends (DESIGN §7).

>>> from ua3dtalk.render import rasterize, RenderOutput
"""
from .api import BACKENDS, RenderOutput, rasterize
from .cpu_backend import cpu_backend_available, cpu_backend_status
from .projection import project_gaussians, quat_to_rotmat
from .sh import eval_sh_colors, sh_basis

__all__ = [
    "BACKENDS",
    "RenderOutput",
    "rasterize",
    "cpu_backend_available",
    "cpu_backend_status",
    "project_gaussians",
    "quat_to_rotmat",
    "eval_sh_colors",
    "sh_basis",
]
