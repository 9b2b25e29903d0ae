"""The training losses' separable SSIM against torchmetrics' (the reference): values and gradients."""
import pytest
import torch
from torchmetrics.functional.image import structural_similarity_index_measure as reference

from ua3dtalk.models.losses import RenderLosses
from ua3dtalk.models.ssim import ssim


@pytest.mark.parametrize("shape", [(1, 3, 64, 64), (2, 3, 37, 53), (1, 1, 12, 80), (3, 2, 6, 9)])
def test_separable_ssim_equals_torchmetrics_values_and_gradients(shape):
    g = torch.Generator().manual_seed(sum(shape))
    target = torch.rand(shape, generator=g, dtype=torch.float64)
    # from unrelated images to a near copy: SSIM near 0 and near 1
    for pred0 in (torch.rand(shape, generator=g, dtype=torch.float64),
                  (target + 0.02 * torch.randn(shape, generator=g, dtype=torch.float64)).clamp(0, 1)):
        pa = pred0.clone().requires_grad_(True)
        pb = pred0.clone().requires_grad_(True)
        ta = target.clone().requires_grad_(True)
        tb = target.clone().requires_grad_(True)
        a = reference(pa, ta, data_range=1.0)
        b = ssim(pb, tb, data_range=1.0)
        torch.testing.assert_close(b, a, rtol=1e-10, atol=1e-12)
        (a * 3).backward()
        (b * 3).backward()
        torch.testing.assert_close(pb.grad, pa.grad, rtol=1e-8, atol=1e-13)
        torch.testing.assert_close(tb.grad, ta.grad, rtol=1e-8, atol=1e-13)


def test_separable_ssim_float32_and_data_range():
    g = torch.Generator().manual_seed(0)
    p, t = torch.rand(1, 3, 48, 48, generator=g) * 255, torch.rand(1, 3, 48, 48, generator=g) * 255
    torch.testing.assert_close(ssim(p, t, data_range=255.0), reference(p, t, data_range=255.0), rtol=1e-5,
                               atol=1e-6)
    same = ssim(t, t, data_range=255.0)
    assert abs(float(same) - 1.0) < 1e-5


def test_separable_ssim_refuses_bad_shapes():
    with pytest.raises(ValueError, match="one shape"):
        ssim(torch.rand(1, 3, 16, 16), torch.rand(1, 3, 16, 17))
    with pytest.raises(ValueError, match="larger than 5"):
        ssim(torch.rand(1, 3, 5, 16), torch.rand(1, 3, 5, 16))


def test_training_loss_ssim_term_is_one_minus_torchmetrics_ssim():
    g = torch.Generator().manual_seed(3)
    pred, target = torch.rand(32, 40, 3, generator=g), torch.rand(32, 40, 3, generator=g)
    out = RenderLosses._photometric(None, pred, target)
    ref = 1 - reference(pred.permute(2, 0, 1)[None], target.permute(2, 0, 1)[None], data_range=1.0)
    torch.testing.assert_close(out["ssim"], ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out["l1"], (pred - target).abs().mean())
