"""Fréchet distance against a float64 scipy reference and Gaussian theory."""
from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
import torch

from ua3dtalk.metrics.frechet import frechet_distance, gaussian_frechet_distance


def _reference(x, y):
    """The textbook formula, float64 scipy."""
    m1, m2 = x.mean(0), y.mean(0)
    s1, s2 = np.cov(x, rowvar=False), np.cov(y, rowvar=False)
    covmean = scipy.linalg.sqrtm(s1 @ s2).real
    return float(((m1 - m2) ** 2).sum() + np.trace(s1 + s2 - 2 * covmean))


@pytest.mark.parametrize("seed,n,m,d", [(0, 200, 150, 5), (1, 500, 400, 16), (2, 60, 80, 11)])
def test_matches_scipy_reference(seed, n, m, d):
    rng = np.random.default_rng(seed)
    A = rng.normal(size=(d, d))
    x = rng.normal(size=(n, d)) @ A + rng.normal(size=d)
    y = rng.normal(size=(m, d)) @ (A + 0.3 * rng.normal(size=(d, d))) + rng.normal(size=d)
    want = _reference(x, y)
    assert frechet_distance(x, y) == pytest.approx(want, rel=1e-8, abs=1e-9)
    # torch and float32 inputs: same float64 computation
    assert frechet_distance(torch.tensor(x), torch.tensor(y)) == pytest.approx(want, rel=1e-8)
    assert frechet_distance(x.astype(np.float32), y.astype(np.float32)) == pytest.approx(want, rel=1e-4)


def test_identical_sets_give_zero():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(300, 12)) @ rng.normal(size=(12, 12))
    assert frechet_distance(x, x) == pytest.approx(0.0, abs=1e-8)
    assert frechet_distance(x, x.copy()[::-1]) == pytest.approx(0.0, abs=1e-8)  # order does not matter


def test_mean_shift_adds_squared_norm():
    rng = np.random.default_rng(4)
    x = rng.normal(size=(400, 6))
    y = rng.normal(size=(500, 6)) * 1.3
    base = frechet_distance(x, y)
    dmu = x.mean(0) - y.mean(0)
    for k in (0.5, 1.0, 3.0):
        delta = k * np.array([1.0, -2.0, 0.5, 0.0, 1.0, 0.3])
        # a shift does not change the covariance: exactly |Δμ − δ|² − |Δμ|² more
        want = base + ((dmu - delta) ** 2).sum() - (dmu ** 2).sum()
        assert frechet_distance(x, y + delta) == pytest.approx(want, rel=1e-9)
    # population form: identical covariances → |Δμ|²; diagonal covariances → Σ (σ1 − σ2)²
    S = np.diag([1.0, 4.0, 9.0])
    assert gaussian_frechet_distance([0, 0, 0], S, [1, 2, 2], S) == pytest.approx(9.0, rel=1e-9)
    assert gaussian_frechet_distance(np.zeros(3), S, np.zeros(3), np.diag([4.0, 4.0, 1.0])) == pytest.approx(
        1 + 0 + 4, rel=1e-9)


def test_large_sample_gaussians_follow_theory():
    rng = np.random.default_rng(5)
    d, n = 4, 20000
    for shift in (0.0, 1.0, 2.0):
        x = rng.normal(size=(n, d))
        y = rng.normal(size=(n, d)) + shift / np.sqrt(d)
        assert frechet_distance(x, y) == pytest.approx(shift ** 2, abs=0.02)


def test_singular_covariances_are_handled():
    rng = np.random.default_rng(6)
    x = rng.normal(size=(5, 20))  # fewer samples than dimensions: rank-deficient covariances
    y = rng.normal(size=(7, 20))
    d = frechet_distance(x, y)
    assert np.isfinite(d) and d > 0
    c = np.zeros((10, 3))  # constant features
    c[:, 0] = np.arange(10)
    assert frechet_distance(c, c + [0, 1, 0]) == pytest.approx(1.0, abs=1e-4)


def test_bad_inputs():
    with pytest.raises(ValueError, match="same feature dimension"):
        frechet_distance(np.zeros((5, 3)), np.zeros((5, 4)))
    with pytest.raises(ValueError, match="at least 2 samples"):
        frechet_distance(np.zeros((1, 3)), np.zeros((5, 3)))
    with pytest.raises(ValueError, match=r"2-D feature set"):
        frechet_distance(np.zeros(5), np.zeros((5, 1)))
    with pytest.raises(ValueError, match="NaN"):
        frechet_distance(np.full((3, 2), np.nan), np.zeros((3, 2)))
