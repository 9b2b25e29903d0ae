"""Build-on-first-use loading of the project's C++ extensions (ATen only, no CUDA).

Each kernel is one ``.cpp`` file compiled by ``torch.utils.cpp_extension.load`` (ninja) the first time
it is needed and cached by torch in its extensions directory under a name that hashes the source, the
shared headers (``utils/csrc``), the flags, the torch version and the CPU — so an edit, a torch
upgrade or another machine never picks up a stale binary. Two flag sets are tried: the fast one
(``-O3 -march=native``, OpenMP) and a portable one (baseline instruction set, single-threaded); a
failure of both is memoised, and :meth:`CppExtension.available` warns once and returns False so that
callers fall back to their plain-PyTorch reference.

Used by :mod:`ua3dtalk.render.cpu_backend` (compositing) and :mod:`ua3dtalk.models.deformation.kernels`
(ensemble statistics).
"""
from __future__ import annotations

import hashlib
import platform
import threading
import warnings
from pathlib import Path

#: headers shared by every kernel (``#include "ua_math.h"``)
INCLUDE_DIR = Path(__file__).resolve().parent / "csrc"

# -ffp-contract=off: results must not depend on the compiler's choice of fused multiply-adds (the
# compositing's forward and backward evaluate alpha bitwise identically). No -ffast-math: NaN/Inf
# semantics and the order of floating-point sums are kept. -fopenmp: at::parallel_for is header code
# that only runs in parallel when compiled with OpenMP (the extension then shares torch's libgomp).
CFLAGS = ("-O3", "-march=native", "-fopenmp", "-ffp-contract=off", "-fno-math-errno", "-fno-trapping-math")
LDFLAGS = ("-fopenmp",)
# Tried when the flags above do not build (e.g. a compiler without OpenMP or -march=native):
# same results, but single-threaded and with the baseline instruction set.
PORTABLE_CFLAGS = ("-O3", "-fopenmp-simd", "-ffp-contract=off", "-fno-math-errno", "-fno-trapping-math")
VARIANTS = ((CFLAGS, LDFLAGS), (PORTABLE_CFLAGS, ()))


def cpu_id() -> str:
    """Something that changes when a binary built with -march=native may not run any more."""
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


class CppExtension:
    """One C++ extension: ``source`` compiled with :data:`INCLUDE_DIR` on the include path.

    ``prefix`` names the cached build (``<prefix>_<hash>``); ``what`` is how messages call it
    (e.g. ``"cpu compositing kernel"``); ``fallback`` what callers use instead (for the warning).
    """

    def __init__(self, prefix: str, source: Path, what: str, fallback: str) -> None:
        self.prefix, self.source, self.what, self.fallback = prefix, Path(source), what, fallback
        self._lock = threading.Lock()
        self._ext = None
        self._error: str | None = None

    def name(self, cflags, ldflags) -> str:
        import torch

        h = hashlib.sha256()
        h.update(self.source.read_bytes())
        for hdr in sorted(INCLUDE_DIR.glob("*.h")) + sorted(self.source.parent.glob("*.h")):
            h.update(hdr.name.encode())
            h.update(hdr.read_bytes())
        h.update(" ".join(tuple(cflags) + tuple(ldflags)).encode())
        h.update(torch.__version__.encode())
        h.update(cpu_id().encode())
        return f"{self.prefix}_{h.hexdigest()[:16]}"

    def load(self):
        """Build (first use) or load the extension module; raises RuntimeError on failure."""
        with self._lock:
            if self._ext is not None:
                return self._ext
            if self._error is not None:  # failures are memoised: do not recompile on every call
                raise RuntimeError(f"the ua3dtalk {self.what} is unavailable ({self._error})")
            from torch.utils.cpp_extension import load

            first_exc = None
            for i, (cflags, ldflags) in enumerate(VARIANTS):
                try:
                    self._ext = load(name=self.name(cflags, ldflags), sources=[str(self.source)],
                                     extra_cflags=list(cflags), extra_ldflags=list(ldflags),
                                     extra_include_paths=[str(INCLUDE_DIR)], verbose=False)
                except Exception as exc:  # noqa: BLE001 - compiler/ninja/linker errors come in many types
                    first_exc = first_exc or exc
                    continue
                if i:
                    warnings.warn(f"ua3dtalk: the {self.what} was built with portable flags (no -march=native "
                                  "/ OpenMP): it runs single-threaded and slower", RuntimeWarning, stacklevel=3)
                return self._ext
            reason = " ".join(str(first_exc).split()) or type(first_exc).__name__
            self._error = f"{type(first_exc).__name__}: {reason[:300]}"
            raise RuntimeError(f"the ua3dtalk {self.what} could not be built ({self._error})") from first_exc

    def available(self) -> bool:
        """True if the extension builds and loads (memoised). Warns once (RuntimeWarning) if it does not."""
        if self._ext is not None:
            return True
        if self._error is not None:
            return False
        try:
            self.load()
            return True
        except Exception:  # noqa: BLE001 - any build/load failure means: use the reference
            warnings.warn(f"ua3dtalk: the {self.what} could not be built ({self._error or 'unknown error'}); "
                          f"using {self.fallback} instead", RuntimeWarning, stacklevel=3)
            return False

    def status(self, build: bool = False) -> str:
        """``"built"``, ``"not built"`` (not tried yet in this process) or ``"unavailable: <reason>"``."""
        if build:
            self.available()
        if self._ext is not None:
            return "built"
        if self._error is not None:
            return f"unavailable: {self._error}"
        return "not built"

    def reset(self) -> None:
        """Forget the loaded module and any memoised failure (tests)."""
        with self._lock:
            self._ext, self._error = None, None


#: every C++ kernel of the project: (module, attribute) of its :class:`CppExtension`
KERNELS = (("ua3dtalk.render.cpu_backend", "KERNEL"), ("ua3dtalk.models.deformation.kernels", "KERNEL"))


def _status(module: str, attr: str) -> str:
    import importlib

    return getattr(importlib.import_module(module), attr).status(build=True)


def main() -> int:
    """``python -m ua3dtalk.utils.cpp_ext`` (``make setup``): build every kernel, one process each (two
    compilers at once on two cores), and print each one's status. Exit 0 also when one cannot be built
    (its fallback is used, with a warning)."""
    import subprocess
    import sys

    procs = [(m, subprocess.Popen([sys.executable, "-c", f"from ua3dtalk.utils.cpp_ext import _status; "
                                   f"print(_status({m!r}, {a!r}))"], stdout=subprocess.PIPE, text=True))
             for m, a in KERNELS]
    for m, p in procs:
        lines = (p.communicate()[0] or "").strip().splitlines()
        print(f"{m}: {lines[-1] if lines else 'unavailable'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
