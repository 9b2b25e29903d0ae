"""The shared metric layer (``ua3dtalk.metrics.suite``): values agree with the pure metric functions,
clips are pooled frame-weighted, bad input raises errors naming the problem."""
from __future__ import annotations

import pytest
import torch

from ua3dtalk.metrics.image import psnr, ssim
from ua3dtalk.metrics.evaluator_dir import Evaluators, parse_metrics
from ua3dtalk.metrics.suite import MetricSuite


def _clip(n, seed):
    g = torch.Generator().manual_seed(seed)
    gt = torch.rand(n, 3, 48, 48, generator=g)
    return (gt + 0.1 * torch.randn(n, 3, 48, 48, generator=g)).clamp(0, 1), gt


def test_values_match_the_metric_functions_and_pool_by_frames():
    s = MetricSuite(Evaluators(), ["psnr", "ssim"])
    a, b = _clip(4, 0), _clip(2, 1)
    ra = s.update(*a, name="a")
    rb = s.update(*b, name="b")
    assert ra["psnr"] == pytest.approx(psnr(*a)) and rb["ssim"] == pytest.approx(ssim(*b))
    out = s.compute()
    assert out["psnr"] == pytest.approx((4 * ra["psnr"] + 2 * rb["psnr"]) / 6)
    assert s.clips["a"]["frames"] == 4 and s.num_frames == 6
    assert s.provenance()["psnr"].startswith("torchmetrics")


def test_bad_input_is_named():
    s = MetricSuite(Evaluators(), ["psnr", "lmd"], warn=False)
    p, g = _clip(4, 0)
    with pytest.raises(ValueError, match="4 frames but gt has 3"):
        s.update(p, g[:3], name="c1")
    with pytest.raises(ValueError, match=r"c2: pred must be frames \[N,3,H,W\]"):
        s.update(p[:, 0], g, name="c2")
    with pytest.raises(ValueError, match="differ in size"):
        s.update(p, g[..., :40], name="c3")
    with pytest.raises(ValueError, match=r"landmarks must be \[N=4,68,2\]"):
        s.update(p, g, landmarks=torch.zeros(4, 5, 2))
    with pytest.raises(ValueError, match="au45 must have N=4"):
        s.update(p, g, au45=[0.0] * 3)
    with pytest.raises(ValueError, match="audio must be a mono waveform"):
        s.update(p, g, audio=torch.zeros(2, 100))
    with pytest.raises(ValueError, match="unknown metric 'fid'"):
        parse_metrics("psnr,fid")
    assert parse_metrics("all") == parse_metrics(None)
