"""Reading and checking weight files (shared by :mod:`ua3dtalk.models.prior` and
:mod:`ua3dtalk.models.emotion`).

Formats accepted by :func:`read_state_dict`:

* ``*.safetensors`` — a flat ``{name: tensor}`` mapping (``safetensors.torch.load_file``);
* anything else — a file written by ``torch.save`` that loads with ``torch.load(weights_only=True)``:
  a flat ``{name: tensor}`` state dict, or a dict holding one under ``"state_dict"`` (Lightning
  checkpoints). Nothing else is unpickled.

A missing file is a :class:`FileNotFoundError` naming the file (and where it comes from, when the
caller says so); an unreadable file, or weights that do not fit the module, are a
:class:`WeightsError` that names the file and lists the missing, unexpected and mis-shaped keys.
"""
from __future__ import annotations

from pathlib import Path
from typing import Mapping, Optional, Union

import torch
from torch import nn

from ...utils.state_dict import format_keys, mismatch_lines, state_dict_diff

PathLike = Union[str, Path]

__all__ = ["WeightsError", "read_state_dict", "write_state_dict", "load_checked", "describe_mismatch"]


class WeightsError(ValueError):
    """A weights file could not be read, or does not match the module it is loaded into."""


def read_state_dict(path: PathLike, origin: str = "") -> dict[str, torch.Tensor]:
    """Read a flat ``{name: tensor}`` state dict from ``path`` (see the module docstring).

    ``origin`` is appended to the error for a missing file (e.g. "written by
    PriorExtraction.save_pretrained").
    """
    p = Path(path).expanduser()
    if not p.is_file():
        what = "is a directory, expected a file" if p.is_dir() else "not found"
        hint = f" ({origin})" if origin else ""
        raise FileNotFoundError(f"weights file {str(p)!r} {what}{hint}")
    try:
        if p.suffix == ".safetensors":
            from safetensors.torch import load_file

            obj = load_file(str(p), device="cpu")
        else:
            obj = torch.load(str(p), map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 — re-raised with the file name
        raise WeightsError(f"could not read weights file {str(p)!r}: {type(e).__name__}: {e}") from e
    if isinstance(obj, Mapping) and "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping):
        raise WeightsError(f"weights file {str(p)!r} holds a {type(obj).__name__}, expected a state dict "
                           "(a mapping of parameter names to tensors)")
    bad = [k for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise WeightsError(f"weights file {str(p)!r}: entries that are not tensors: {format_keys(bad)}")
    return {str(k): v for k, v in obj.items()}


def write_state_dict(state: Mapping[str, torch.Tensor], path: PathLike) -> Path:
    """Write ``state`` as safetensors (suffix ``.safetensors``) or with ``torch.save`` (any other
    suffix); returns the path. Tensors are made contiguous and moved to the CPU."""
    p = Path(path).expanduser()
    p.parent.mkdir(parents=True, exist_ok=True)
    flat = {k: v.detach().to("cpu").contiguous() for k, v in state.items()}
    tmp = p.with_name(p.name + ".tmp")
    if p.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(flat, str(tmp))
    else:
        torch.save(flat, str(tmp))
    tmp.replace(p)  # atomic on POSIX: a reader never sees a half-written file
    return p


def describe_mismatch(module: nn.Module, state: Mapping[str, torch.Tensor]) -> Optional[str]:
    """``None`` when ``state`` fits ``module.state_dict()`` exactly (same keys and shapes), otherwise
    a message listing the missing, unexpected and mis-shaped keys."""
    own = module.state_dict()
    missing, unexpected, shaped = state_dict_diff(own, state)
    shapes = [f"{k} (file {tuple(state[k].shape)}, model {tuple(own[k].shape)})" for k in shaped]
    if not (missing or unexpected or shapes):
        return None
    return "; ".join(mismatch_lines(missing, unexpected, shapes))


def load_checked(module: nn.Module, state: Mapping[str, torch.Tensor], path: PathLike, what: str = "") -> None:
    """Load ``state`` into ``module`` (strict), raising :class:`WeightsError` that names ``path`` and
    lists every mismatched key when the state does not fit."""
    msg = describe_mismatch(module, state)
    if msg is not None:
        name = f" into {what}" if what else ""
        raise WeightsError(f"weights file {str(path)!r} does not fit{name}: {msg}")
    own = module.state_dict()
    module.load_state_dict({k: v.to(dtype=own[k].dtype) for k, v in state.items()}, strict=True)
