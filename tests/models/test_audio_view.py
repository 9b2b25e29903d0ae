"""AudioNet, AudioAttNet, RegionAttention, AudioView: shapes, attention semantics, batching, gradients."""
from __future__ import annotations

import pytest
import torch

from ua3dtalk.models.audio_view import AudioAttNet, AudioNet, AudioView, RegionAttention


@pytest.fixture(autouse=True)
def _single_thread(one_thread):
    """These tests run tiny tensors: one intra-op thread is fastest (and immune to oversubscription)."""
    yield


@pytest.mark.parametrize("window", [16, 8, 5, 1])
def test_audionet_shapes(window):
    net = AudioNet(29, window=window, out_dim=32)
    assert net(torch.randn(7, window, 29)).shape == (7, 32)
    with pytest.raises(ValueError):
        net(torch.randn(7, window + 1, 29))
    with pytest.raises(ValueError):
        net(torch.randn(7, window, 30))


def test_audio_att_net_is_a_convex_combination():
    torch.manual_seed(0)
    att = AudioAttNet(dim=32, seq_len=8)
    x = torch.randn(3, 8, 32)
    w = att.weights(x)
    assert w.shape == (3, 8)
    torch.testing.assert_close(w.sum(-1), torch.ones(3))
    assert bool((w > 0).all())
    out = att(x)
    assert out.shape == (3, 32)
    torch.testing.assert_close(out, (w[..., None] * x).sum(1))
    same = torch.randn(2, 1, 32).expand(2, 8, 32)
    torch.testing.assert_close(att(same), same[:, 0])
    with pytest.raises(ValueError):
        att(torch.randn(3, 7, 32))


@pytest.mark.parametrize("activation", ["sigmoid", "softmax", "none"])
def test_region_attention(activation):
    ra = RegionAttention(h_dim=64, feat_dim=32, activation=activation)
    feat, h = torch.randn(2, 32), torch.randn(50, 64)
    out = ra(feat, h)
    assert out.shape == (2, 50, 32)
    g = ra.gate(h)
    torch.testing.assert_close(out, feat[:, None] * g[None])
    if activation == "sigmoid":
        assert bool(((g > 0) & (g < 1)).all())
    if activation == "softmax":
        torch.testing.assert_close(g.sum(-1), torch.ones(50))
    # per-frame H
    hb = torch.randn(2, 50, 64)
    assert ra(feat, hb).shape == (2, 50, 32)


def test_audio_view_shapes_and_temporal_attention_switch():
    torch.manual_seed(0)
    av = AudioView(in_channels=29)
    assert av.out_dim == 38
    h = torch.randn(40, 64)
    out8 = av(torch.randn(1, 8, 16, 29), torch.rand(1, 1), h)
    assert out8.shape == (1, 40, 38)
    # a single window bypasses the temporal attention
    out1 = av(torch.randn(1, 16, 29), torch.rand(1), h)
    assert out1.shape == (1, 40, 38)
    out1.sum().backward()
    assert all(p.grad is None for p in av.att_net.parameters())
    with pytest.raises(ValueError):
        av(torch.randn(1, 5, 16, 29), None, h)
    with pytest.raises(ValueError):
        av(torch.randn(1, 16, 29), torch.rand(2, 1), h)


def test_audio_view_batch_is_per_frame():
    torch.manual_seed(0)
    av = AudioView(in_channels=12, window=16, seq_len=8)
    a, blink, h = torch.randn(3, 8, 16, 12), torch.rand(3, 1), torch.randn(25, 64)
    out = av(a, blink, h)
    assert out.shape == (3, 25, 38)
    for i in range(3):
        torch.testing.assert_close(out[i:i + 1], av(a[i:i + 1], blink[i:i + 1], h), rtol=1e-5, atol=1e-6)


def test_eye_input_variants():
    torch.manual_seed(0)
    h = torch.randn(10, 64)
    a = torch.randn(2, 16, 29)
    av = AudioView(29)
    # [B] and [B,1] blink are the same; blink 0 and None give a zero eye feature
    b = torch.tensor([0.3, 0.9])
    torch.testing.assert_close(av(a, b, h), av(a, b[:, None], h))
    assert torch.equal(av(a, torch.zeros(2), h)[..., 32:], torch.zeros(2, 10, 6))
    assert torch.equal(av(a, None, h)[..., 32:], torch.zeros(2, 10, 6))
    # eye feature = blink × region gate (TalkingGaussian's AU45 input)
    gate = av.eye_att.gate(h)
    torch.testing.assert_close(av(a, b, h)[..., 32:], b[:, None, None] * gate[None])
    # six AUs through a linear map
    av6 = AudioView(29, blink_dim=6)
    assert av6(a, torch.rand(2, 6), h).shape == (2, 10, 38)
    # no eye part
    av0 = AudioView(29, eye_dim=0)
    assert av0(a, None, h).shape == (2, 10, 32)


def test_audio_view_gradients_reach_every_parameter():
    torch.manual_seed(0)
    av = AudioView(29, blink_dim=6)
    h = torch.randn(30, 64, requires_grad=True)
    out = av(torch.randn(2, 8, 16, 29), torch.rand(2, 6), h)
    (out * torch.randn_like(out)).sum().backward()
    for name, p in av.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert h.grad is not None and h.grad.abs().sum() > 0
