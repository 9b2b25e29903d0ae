"""``lazy_exports``: a package's public names imported from its submodules on first use (PEP 562), so
that ``import ua3dtalk.metrics`` stays cheap (no torch/lpips/scipy until a name is used)."""
from __future__ import annotations

import importlib
from typing import Callable, Mapping, Sequence


def lazy_exports(package: str, exports: Mapping[str, Sequence[str]], namespace: dict
                 ) -> tuple[list[str], Callable, Callable]:
    """``exports``: submodule (relative to ``package``) → names it provides. Returns ``(__all__,
    __getattr__, __dir__)`` for the package's ``__init__``; a resolved name is cached in ``namespace``
    (the package's ``globals()``), an unknown one raises ``AttributeError`` like a normal module."""
    where = {name: mod for mod, names in exports.items() for name in names}

    def __getattr__(name: str):
        mod = where.get(name)
        if mod is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f".{mod}", package), name)
        namespace[name] = value
        return value

    def __dir__():
        return sorted(set(namespace) | set(where))

    return sorted(where), __getattr__, __dir__
