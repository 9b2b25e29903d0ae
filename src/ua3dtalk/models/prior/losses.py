"""Losses of Prior Extraction: audio–visual InfoNCE and the content/style decorrelation penalty."""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from .checks import expect

__all__ = ["info_nce", "decorrelation_penalty", "emotion_invariance_penalty", "standardise"]


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


def standardise(x: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Each column of ``x`` [B,D] to zero mean and unit variance over the batch; ``eps`` is relative to
    the column's own variance (a constant column stays 0), so the result is invariant to its scale."""
    x = x - x.mean(0)
    var = x.pow(2).mean(0)
    floor = eps * var.detach() + torch.finfo(x.dtype).tiny
    return x / torch.sqrt(var + floor)


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

    za, zb = standardise(a, eps), standardise(b, eps)
    c = za.t() @ zb / a.shape[0]
    return c.pow(2).sum() / min(a.shape[1], b.shape[1])


def emotion_invariance_penalty(features: torch.Tensor, labels: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """How much of ``features`` the emotion label explains: the mean over feature columns of the
    between-class share of the variance (the R² of a per-column regression on the one-hot label).

    Rows with an unknown label (< 0) are ignored; each column is standardised over the labelled rows
    (:func:`standardise`, so shrinking a feature does not lower the value), and the penalty is
    ``Σ_c (n_c/n)·‖mean_c(z)‖² / D`` — 0 when every emotion has the same mean feature, 1 when the label
    determines every feature. Independent features give ≈ ``(C−1)/n`` for ``C`` classes in the batch.
    Fewer than 2 labelled classes → 0 (nothing to compare), still connected to the graph.

    ★ Used on f_content and f_style (:class:`~ua3dtalk.models.prior.PriorExtraction` ``w_emotion``): the
    prior then carries *what* is said and the person's speaking style but not the emotion, which the
    emotion view alone supplies — otherwise the style view reads the emotion from the prosody of the
    same audio, gets the fusion weight, and an emotion chosen at inference hardly shows. It acts on the
    features; ``PriorExtraction(recon_dims="non_emotional")`` removes the cause upstream (L_recon no longer
    asks f_prior for the emotional coefficients, which only the emotion predicts). The two combine.

    Args:
        features: [B,D].
        labels: [B] integer emotion ids, -1 = unknown.
    """
    d = expect(features, "emotion_invariance features", ("B", None))
    if not isinstance(labels, torch.Tensor) or labels.shape != (d["B"],) or labels.is_floating_point():
        raise ValueError(f"emotion_invariance labels: expected an integer tensor [{d['B']}]")
    zero = features.sum() * 0.0
    ok = labels >= 0
    if int(ok.sum()) < 2:
        return zero
    lab = labels[ok]
    classes, idx = torch.unique(lab, return_inverse=True)
    if classes.numel() < 2:
        return zero
    z = standardise(features[ok], eps)
    n = z.shape[0]
    counts = torch.bincount(idx, minlength=classes.numel()).to(z.dtype)
    means = torch.zeros(classes.numel(), z.shape[1], dtype=z.dtype, device=z.device).index_add_(0, idx, z)
    means = means / counts[:, None]
    return (counts[:, None] / n * means.pow(2)).sum() / z.shape[1]
