"""``cpu`` backend: the project's C++ compositing kernel (``csrc/composite.cpp``).

Same contract and semantics as :func:`.dense.composite_dense`. The extension is compiled on first
use with ``torch.utils.cpp_extension.load`` (ATen only, ``-O3 -march=native``) and cached by torch
in its extensions directory under a name that hashes the source, the flags, the torch version and
the CPU, so an edit, a torch upgrade or another machine never picks up a stale binary.

If the kernel cannot be built (no compiler, no ninja, ...) :func:`cpu_backend_available` warns
once and returns False, and :func:`~ua3dtalk.render.rasterize` falls back to the ``torch`` backend.
"""
from __future__ import annotations

import hashlib
import platform
import threading
import warnings
from pathlib import Path

import torch
from torch.autograd.function import once_differentiable

_SOURCE = Path(__file__).resolve().parent / "csrc" / "composite.cpp"
# -ffp-contract=off: forward and backward must evaluate alpha bitwise identically (explicit FMAs
# only). No -ffast-math: NaN/Inf semantics and the order of floating-point sums are kept.
# -fopenmp: at::parallel_for is header code that only runs in parallel when compiled with OpenMP
# (the extension then shares torch's already loaded libgomp.so.1 and its thread pool).
_CFLAGS = ["-O3", "-march=native", "-fopenmp", "-ffp-contract=off", "-fno-math-errno", "-fno-trapping-math"]
_LDFLAGS = ["-fopenmp"]
# Tried when the flags above do not build (e.g. a compiler without OpenMP or -march=native):
# same results, but single-threaded and with the baseline instruction set.
_PORTABLE_CFLAGS = ["-O3", "-fopenmp-simd", "-ffp-contract=off", "-fno-math-errno", "-fno-trapping-math"]
_VARIANTS = ((_CFLAGS, _LDFLAGS), (_PORTABLE_CFLAGS, []))
TILE_SIZE = 16

_lock = threading.Lock()
_ext = None
_error: str | None = None


def _cpu_id() -> str:
    """Something that changes when the binary built with -march=native may not run any more."""
    ident = platform.machine() + platform.processor()
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if line.startswith(("model name", "flags")):
                    ident += line
                if line.startswith("flags"):
                    break
    except OSError:
        pass
    return ident


def _extension_name(cflags, ldflags) -> str:
    h = hashlib.sha256()
    h.update(_SOURCE.read_bytes())
    h.update(" ".join(cflags + ldflags).encode())
    h.update(torch.__version__.encode())
    h.update(_cpu_id().encode())
    return f"ua3dtalk_cpu_{h.hexdigest()[:16]}"


def load_extension():
    """Build (first use) or load the C++ extension module; raises RuntimeError on failure."""
    global _ext, _error
    with _lock:
        if _ext is not None:
            return _ext
        if _error is not None:  # failures are memoised: do not recompile on every call
            raise RuntimeError(f"the ua3dtalk cpu kernel is unavailable ({_error})")
        from torch.utils.cpp_extension import load

        first_exc = None
        for i, (cflags, ldflags) in enumerate(_VARIANTS):
            try:
                _ext = load(name=_extension_name(cflags, ldflags), sources=[str(_SOURCE)], extra_cflags=list(cflags),
                            extra_ldflags=list(ldflags), verbose=False)
            except Exception as exc:  # noqa: BLE001 - compiler/ninja/linker errors come in many types
                first_exc = first_exc or exc
                continue
            if i:
                warnings.warn("ua3dtalk: the cpu compositing kernel was built with portable flags (no -march=native "
                              "/ OpenMP): it runs single-threaded and slower", RuntimeWarning, stacklevel=3)
            return _ext
        reason = " ".join(str(first_exc).split()) or type(first_exc).__name__
        _error = f"{type(first_exc).__name__}: {reason[:300]}"
        raise RuntimeError(f"the ua3dtalk cpu kernel could not be built ({_error})") from first_exc


def cpu_backend_available() -> bool:
    """True if the C++ kernel builds and loads (memoised). Warns once (RuntimeWarning) if it does not."""
    if _ext is not None:
        return True
    if _error is not None:
        return False
    try:
        load_extension()
        return True
    except Exception:  # noqa: BLE001 - any build/load failure means: use the torch backend
        warnings.warn(
            f"ua3dtalk: the cpu compositing kernel could not be built ({_error or 'unknown error'}); "
            "using the `torch` backend instead",
            RuntimeWarning,
            stacklevel=2,
        )
        return False


def cpu_backend_status(build: bool = False) -> str:
    """``"built"``, ``"not built"`` (not tried yet in this process) or ``"unavailable: <reason>"``."""
    if build:
        cpu_backend_available()
    if _ext is not None:
        return "built"
    if _error is not None:
        return f"unavailable: {_error}"
    return "not built"


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
