"""Losses of Prior Extraction: audio–visual InfoNCE and the content/style decorrelation penalty."""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from .checks import expect

__all__ = ["info_nce", "decorrelation_penalty"]


def info_nce(audio: torch.Tensor, visual: torch.Tensor, temperature: float = 0.07,
             negatives: Optional[torch.Tensor] = None, symmetric: bool = True) -> torch.Tensor:
    """InfoNCE between audio and visual (lip) embeddings of the same frames.

    Row ``i`` of ``audio`` is the positive of row ``i`` of ``visual``; every other row of the batch
    is a negative (frames of the same clip shifted in time are the hard negatives: put neighbouring
    frames in one batch, or pass them in ``negatives``). Embeddings are L2-normalised here, logits are
    cosine similarities divided by ``temperature``.

    Args:
        audio: [B,D] audio embeddings.
        visual: [B,D] visual embeddings of the same frames.
        temperature: softmax temperature τ.
        negatives: optional [B,M,D] extra visual negatives per row (e.g. the lip targets of frames
            i±k of the same clip), appended to row ``i``'s candidates in the audio→visual direction.
        symmetric: average the audio→visual and visual→audio cross-entropies (the latter over the
            batch only), as in CLIP.

    Returns:
        scalar loss (mean over rows); ``log(B + M)`` for uninformative embeddings, → 0 when aligned.
    """
    d = expect(audio, "info_nce audio", ("B", "D"))
    expect(visual, "info_nce visual", ("B", "D"), d)
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    a = F.normalize(audio, dim=-1)
    v = F.normalize(visual, dim=-1)
    logits = a @ v.t() / temperature  # [B,B]
    target = torch.arange(a.shape[0], device=a.device)
    if negatives is not None:
        expect(negatives, "info_nce negatives", ("B", None, "D"), d)
        n = F.normalize(negatives, dim=-1)
        extra = torch.einsum("bd,bmd->bm", a, n) / temperature  # [B,M]
        a2v = F.cross_entropy(torch.cat([logits, extra], dim=1), target)
    else:
        a2v = F.cross_entropy(logits, target)
    if not symmetric:
        return a2v
    return 0.5 * (a2v + F.cross_entropy(logits.t(), target))


def decorrelation_penalty(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Squared cross-correlation between two feature sets, normalised so that identical features
    give ≈ 1 (or more) and independent ones ≈ ``max(Da, Db)/B``.

    Each feature is standardised over the batch (zero mean, unit variance); ``C = z_aᵀ z_b / B`` is
    the [Da,Db] cross-correlation matrix and the penalty is ``‖C‖_F² / min(Da, Db)``.

    The standardisation is exact (``eps`` is relative to each feature's own variance and only guards
    against division by zero), so the penalty is invariant to the scale of every feature: a
    network cannot lower it by shrinking a feature's variance towards ``eps`` (with an absolute
    ``eps`` it does exactly that — the content features collapse to a constant within ~100 steps).
    A constant feature contributes 0.

    Finite-sample note: with ``B`` samples, ``E[C_ij²] ≈ 1/B`` for independent features, and when
    ``B ≤ Da`` any two feature sets look correlated (both span the same (B−1)-dim sample space): the
    value — and its gradient — is informative only for ``B ≫ max(Da, Db)``
    (:class:`~ua3dtalk.models.prior.PriorExtraction` skips it below ``decor_min_batch``).

    Args:
        a: [B,Da], b: [B,Db] features of the same samples (B ≥ 2).
        eps: relative variance floor (per feature).
    """
    d = expect(a, "decorrelation a", ("B", None))
    expect(b, "decorrelation b", ("B", None), d)
    if a.shape[0] < 2:
        raise ValueError("decorrelation_penalty needs a batch of at least 2 samples")

    def standardise(x):
        x = x - x.mean(0)
        var = x.pow(2).mean(0)
        floor = eps * var.detach() + torch.finfo(x.dtype).tiny
        return x / torch.sqrt(var + floor)

    za, zb = standardise(a), standardise(b)
    c = za.t() @ zb / a.shape[0]
    return c.pow(2).sum() / min(a.shape[1], b.shape[1])
