"""Non-finite values stop training, named (DESIGN §4): :class:`NonFiniteLossError` and the checks of the
:class:`~ua3dtalk.models.module.UA3DTalk` training step (losses, parameters, gradients)."""
from __future__ import annotations

from typing import Optional, Sequence

import torch


class NonFiniteLossError(FloatingPointError):
    """Raised when a loss or an output becomes NaN/Inf; the message names the step and the tensor."""


def check_all_finite(named: Sequence[tuple[str, Optional[torch.Tensor]]], step: int, prefix: str = "") -> None:
    """:func:`check_finite` of many tensors at the cost of one pass: the 2-norms of all tensors in one
    multi-tensor kernel (a NaN or Inf anywhere makes its tensor's norm non-finite) and one host sync;
    only when one is non-finite are the tensors checked one by one to name the culprit."""
    named = [(n, t) for n, t in named if t is not None and t.numel()]
    if not named:
        return
    tensors = [t.detach() for _, t in named]
    norms = torch.stack(torch._foreach_norm(tensors, 2)) if hasattr(torch, "_foreach_norm") else \
        torch.stack([t.norm() for t in tensors])
    if bool(torch.isfinite(norms).all()):
        return
    for n, t in named:
        if not bool(torch.isfinite(t.detach()).all()):
            check_finite(prefix + n, t, step)
    # every element finite but the float32 norm overflowed (values beyond ~1e19): that is a blow-up too
    n, t = named[int((~torch.isfinite(norms)).nonzero()[0])]
    raise NonFiniteLossError(f"step {step}: `{prefix}{n}` has exploded (max |value| "
                             f"{float(t.detach().abs().max()):.3g}); training stopped before the optimizer step, "
                             "the last checkpoint is intact")


def check_finite(name: str, t: torch.Tensor, step: int) -> None:
    finite = torch.isfinite(t.detach())
    if not bool(finite.all()):
        bad = t.detach()[~finite]
        raise NonFiniteLossError(f"step {step}: `{name}` is not finite ({bad.numel()} of {t.numel()} values, e.g. "
                                 f"{bad.flatten()[:4].tolist()}); training stopped before the optimizer step, "
                                 "the last checkpoint is intact")
