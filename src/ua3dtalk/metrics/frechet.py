"""Fréchet distance between two feature sets (the FID formula, used by E-FID; DESIGN §8).

    d²(X, Y) = |μ_x − μ_y|² + Tr(Σ_x + Σ_y − 2 (Σ_x Σ_y)^{1/2})

with μ, Σ the sample means and (unbiased, ``ddof=1``) covariances of the rows. Computed in float64.

Matrix square root: ``scipy.linalg.sqrtm(Σ_x Σ_y)`` as in the reference FID implementation (pytorch-fid,
TTUR). When the product is (near-)singular — fewer samples than dimensions, constant features — the
result is not finite, and ``eps`` is added to both diagonals before retrying (same rule as pytorch-fid).
``sqrtm`` of a product of two PSD matrices has only real eigenvalues; a small imaginary part is
round-off and is dropped, a large one (max |Im| > ``imag_tol`` relative to the largest |entry|) means
the input is broken and raises. The trace term is also cross-checked with the symmetric form
Tr((Σ_x^{1/2} Σ_y Σ_x^{1/2})^{1/2}) computed by eigen-decomposition, which is exact for PSD inputs and
used instead if ``sqrtm`` fails.
"""
from __future__ import annotations

import warnings

import numpy as np
import scipy.linalg

__all__ = ["frechet_distance", "gaussian_frechet_distance", "feature_stats"]


def _as_features(x, name: str) -> np.ndarray:
    try:
        import torch

        if isinstance(x, torch.Tensor):
            x = x.detach().cpu().double().numpy()
    except ImportError:  # pragma: no cover
        pass
    a = np.asarray(x, dtype=np.float64)
    if a.ndim != 2:
        raise ValueError(f"frechet_distance: {name} must be a 2-D feature set [N,D], got shape {a.shape}")
    if a.shape[0] < 2:
        raise ValueError(f"frechet_distance: {name} needs at least 2 samples to estimate a covariance, "
                         f"got {a.shape[0]}")
    if not np.isfinite(a).all():
        raise ValueError(f"frechet_distance: {name} contains NaN or Inf")
    return a


def feature_stats(x) -> tuple[np.ndarray, np.ndarray]:
    """(μ [D], Σ [D,D]) of a feature set [N,D], float64, unbiased covariance."""
    a = _as_features(x, "x")
    return a.mean(0), np.atleast_2d(np.cov(a, rowvar=False))


def _psd_sqrt(m: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh(0.5 * (m + m.T))
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def _trace_sqrt_symmetric(s1: np.ndarray, s2: np.ndarray) -> float:
    r = _psd_sqrt(s1)
    w = np.linalg.eigvalsh(0.5 * ((r @ s2 @ r) + (r @ s2 @ r).T))
    return float(np.sqrt(np.clip(w, 0, None)).sum())


def gaussian_frechet_distance(mu1, sigma1, mu2, sigma2, *, eps: float = 1e-6, imag_tol: float = 1e-3) -> float:
    """Fréchet distance between N(μ1, Σ1) and N(μ2, Σ2) (see the module docstring)."""
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    s1, s2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape or s1.shape != s2.shape or s1.shape != (mu1.size, mu1.size):
        raise ValueError(f"frechet_distance: dimension mismatch: mu {mu1.shape} vs {mu2.shape}, "
                         f"sigma {s1.shape} vs {s2.shape}")
    diff = mu1 - mu2
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # sqrtm warns on singular input; handled below
        covmean = scipy.linalg.sqrtm(s1 @ s2)
        if not np.isfinite(covmean).all():
            off = np.eye(s1.shape[0]) * eps
            covmean = scipy.linalg.sqrtm((s1 + off) @ (s2 + off))
    if np.iscomplexobj(covmean):
        scale = max(float(np.abs(covmean).max()), 1e-12)
        if np.abs(covmean.imag).max() > imag_tol * scale:
            raise ValueError(f"frechet_distance: the matrix square root has a large imaginary part "
                             f"({np.abs(covmean.imag).max():.3g}); the covariances are not PSD or are ill-conditioned")
        covmean = covmean.real
    tr = float(np.trace(covmean)) if np.isfinite(covmean).all() else float("nan")
    sym = _trace_sqrt_symmetric(s1, s2)
    if not np.isfinite(tr) or abs(tr - sym) > 1e-6 * max(1.0, abs(sym)) + 1e-3 * max(1.0, np.trace(s1) + np.trace(s2)):
        tr = sym  # sqrtm failed or drifted on an ill-conditioned product; the symmetric form is exact for PSD
    d = float(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * tr)
    return max(d, 0.0)


def frechet_distance(x, y, *, eps: float = 1e-6, imag_tol: float = 1e-3) -> float:
    """Fréchet distance between the Gaussians fitted to two feature sets.

    Args:
        x: [N,D] features (numpy or torch), N ≥ 2.
        y: [M,D] features, M ≥ 2.
        eps: diagonal offset added to both covariances when their product is singular.
        imag_tol: relative tolerance on the imaginary part of ``sqrtm`` before raising.
    Returns:
        d² ≥ 0 (float; not its square root, as in FID).
    """
    a, b = _as_features(x, "x"), _as_features(y, "y")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"frechet_distance: x and y must have the same feature dimension, got {a.shape[1]} and "
                         f"{b.shape[1]}")
    return gaussian_frechet_distance(a.mean(0), np.atleast_2d(np.cov(a, rowvar=False)), b.mean(0),
                                     np.atleast_2d(np.cov(b, rowvar=False)), eps=eps, imag_tol=imag_tol)
