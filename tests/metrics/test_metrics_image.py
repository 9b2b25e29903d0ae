"""PSNR / SSIM / LPIPS: reference values, the lpips package as reference, offline weight handling."""
from __future__ import annotations

import math

import pytest
import torch

from ua3dtalk.metrics.image import (
    ALEXNET_FILE, LPIPSMetric, LPIPSWeightsError, alexnet_cache_path, crop_boxes, psnr, psnr_per_frame, ssim,
)

# the lpips package's own reference model uses torchvision's deprecated `pretrained=` argument
pytestmark = pytest.mark.filterwarnings("ignore:.*deprecated since 0.13:UserWarning")


@pytest.fixture(autouse=True)
def _no_downloads(monkeypatch):
    """Any attempt to download (torch.hub) fails the test."""
    def boom(*a, **k):
        raise AssertionError(f"network download attempted: {a[:1]}")

    monkeypatch.setattr(torch.hub, "download_url_to_file", boom)


def _frames(seed=0, n=3, h=48, w=40):
    g = torch.Generator().manual_seed(seed)
    a = torch.rand(n, 3, h, w, generator=g)
    b = (a + 0.1 * torch.randn(n, 3, h, w, generator=g)).clamp(0, 1)
    return a, b


def test_psnr_matches_formula_and_ssim_bounds():
    a, b = _frames()
    per = psnr_per_frame(b, a)
    ref = torch.stack([10 * torch.log10(1.0 / ((b[i] - a[i]) ** 2).mean()) for i in range(a.shape[0])])
    torch.testing.assert_close(per, ref, rtol=1e-5, atol=1e-4)
    assert psnr(b, a) == pytest.approx(float(ref.mean()), rel=1e-5)
    assert ssim(a, a) == pytest.approx(1.0, abs=1e-5)
    s_small, s_big = ssim((a + 0.02).clamp(0, 1), a), ssim(b, a)
    assert 0 < s_big < s_small < 1
    with pytest.raises(ValueError, match=r"pred \(3, 3, 48, 40\) and gt \(2, 3, 48, 40\)"):
        psnr(a, a[:2])
    with pytest.raises(ValueError, match=r"\[N,3,H,W\]"):
        ssim(a[:, :1], a[:, :1])


def test_crop_boxes_identity_and_subregion():
    a, _ = _frames(h=32, w=32, n=2)
    full = torch.tensor([[0.0, 0.0, 32.0, 32.0]] * 2)
    torch.testing.assert_close(crop_boxes(a, full, 32), a, atol=1e-5, rtol=0)
    # an integer-aligned sub-box at the same resolution is an exact slice
    box = torch.tensor([[4.0, 8.0, 20.0, 24.0]] * 2)  # x0, y0, x1, y1
    torch.testing.assert_close(crop_boxes(a, box, 16), a[:, :, 8:24, 4:20], atol=1e-5, rtol=0)


def test_random_backbone_key_and_matches_package():
    import lpips

    a, b = _frames(h=64, w=64)
    ours = LPIPSMetric(random_backbone=True, seed=3)
    assert ours.key == "lpips_randbackbone" and ours.face_key == "lpips_face_randbackbone"
    torch.manual_seed(3)
    ref = lpips.LPIPS(net="alex", version="0.1", pnet_rand=True, verbose=False).eval()
    with torch.no_grad():
        want = ref(b, a, normalize=True).flatten()
    torch.testing.assert_close(ours.per_frame(b, a), want, rtol=1e-5, atol=1e-7)
    assert ours(a, a) == pytest.approx(0.0, abs=1e-7)
    out = ours.compute(b, a, boxes=torch.tensor([[8.0, 8.0, 56.0, 56.0]] * 3))
    assert set(out) == {"lpips_randbackbone", "lpips_face_randbackbone"} and "lpips" not in out
    # a different seed is a different backbone
    assert abs(LPIPSMetric(random_backbone=True, seed=4)(b, a) - out["lpips_randbackbone"]) > 1e-6


def test_backbone_from_torch_cache_matches_package(tmp_path, monkeypatch):
    """Our loading of the torchvision AlexNet checkpoint gives the value of the package's own model,
    which reads the same (here seeded random) checkpoint from the hub cache."""
    import lpips
    import torchvision

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    path = alexnet_cache_path()
    assert path == tmp_path / "torch" / "hub" / "checkpoints" / ALEXNET_FILE
    torch.manual_seed(11)
    path.parent.mkdir(parents=True)
    torch.save(torchvision.models.alexnet(weights=None).state_dict(), path)

    ours = LPIPSMetric()
    assert ours.key == "lpips" and ours.face_key == "lpips_face"
    torch.manual_seed(0)  # the package's random init must not matter: it loads the checkpoint
    ref = lpips.LPIPS(net="alex", version="0.1", pnet_rand=False, verbose=False).eval()
    a, b = _frames(h=64, w=64, seed=5)
    with torch.no_grad():
        want = ref(b, a, normalize=True).flatten()
    torch.testing.assert_close(ours.per_frame(b, a), want, rtol=1e-5, atol=1e-7)
    # face crops: the package's value on the same crops
    boxes = torch.tensor([[10.0, 6.0, 50.0, 46.0], [0.0, 0.0, 64.0, 64.0], [20.0, 20.0, 52.0, 52.0]])
    with torch.no_grad():
        want_face = ref(crop_boxes(b, boxes, 128), crop_boxes(a, boxes, 128), normalize=True).mean()
    assert ours.face(b, a, boxes) == pytest.approx(float(want_face), rel=1e-5)
    # and it differs from a random backbone
    assert abs(LPIPSMetric(random_backbone=True)(b, a) - ours(b, a)) > 1e-4


def test_missing_backbone_names_the_file(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty"))
    with pytest.raises(LPIPSWeightsError) as e:
        LPIPSMetric()
    msg = str(e.value)
    assert ALEXNET_FILE in msg and str(tmp_path / "empty" / "hub" / "checkpoints") in msg
    assert "random_backbone=True" in msg
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(LPIPSWeightsError, match="bad.pth"):
        LPIPSMetric(backbone_path=bad)


def test_lpips_grows_with_distortion():
    m = LPIPSMetric(random_backbone=True)
    g = torch.Generator().manual_seed(1)
    base = torch.rand(2, 3, 64, 64, generator=g)
    noise = torch.randn(2, 3, 64, 64, generator=g)
    vals = [m((base + s * noise).clamp(0, 1), base) for s in (0.0, 0.05, 0.2)]
    assert vals[0] < 1e-7 < vals[1] < vals[2], vals
    assert not math.isnan(vals[2])
