"""Thread count does not change results: forward and gradients bit-identical with 1 and 2 threads."""
from __future__ import annotations

import pytest
import torch


@pytest.fixture
def restore_threads():
    """torch.set_num_threads is process-global: put the original count back afterwards."""
    n = torch.get_num_threads()
    yield n
    torch.set_num_threads(n)
    assert torch.get_num_threads() == n


def _run(helpers, sc, backend, threads):
    torch.set_num_threads(threads)
    assert torch.get_num_threads() == threads
    out, grads = helpers.render_with_grads(sc, backend)
    assert out.backend == backend
    return out, grads


@pytest.mark.parametrize("sh_degree", [None, 2])
def test_same_results_with_1_and_2_threads(backend, sh_degree, helpers, restore_threads):
    # big enough for several tiles and several work chunks per thread
    sc = helpers.make_scene(seed=31, n=250, width=70, height=45, sh_degree=sh_degree, behind=0.1)
    o1, g1 = _run(helpers, sc, backend, 1)
    o2, g2 = _run(helpers, sc, backend, 2)
    for key in ("image", "alpha", "depth", "radii", "means2d"):
        a, b = getattr(o1, key).detach(), getattr(o2, key).detach()
        diff = float((a - b).abs().max()) if a.numel() else 0.0
        assert torch.equal(a, b), f"{key} differs between 1 and 2 threads (max {diff:.3e})"
    assert torch.equal(o1.means2d.grad, o2.means2d.grad), "means2d.grad differs between 1 and 2 threads"
    assert set(g1) == set(g2) == set(helpers.GRAD_NAMES)
    for k in g1:
        assert torch.equal(g1[k], g2[k]), f"d loss / d {k} differs between 1 and 2 threads"
    # and the results are the right ones, not merely equal
    ref = sc.render("dense")
    torch.testing.assert_close(o2.image, ref.image.detach(), rtol=0, atol=1e-4)

