"""Prior Extraction (DESIGN §4, issue 4 item 4): shapes, losses, gradient routing, learning, weights."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from ua3dtalk.models.prior import (
    ContentEncoder,
    FuseNet,
    PriorExtraction,
    PriorOutput,
    StyleEncoder,
    WeightsError,
    audio_context,
    decorrelation_penalty,
    emotion_invariance_penalty,
    frame_features,
    info_nce,
)

C, K, LIP = 12, 10, 40


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny tensors: one intra-op thread is faster, and avoids oversubscription on a busy machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def make_model(**kw) -> PriorExtraction:
    torch.manual_seed(0)
    args = dict(in_channels=C, expr_dim=K, hidden=32, decor_min_batch=4)
    args.update(kw)
    return PriorExtraction(**args)


def make_batch(b: int = 8, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return dict(window=torch.randn(b, 16, C, generator=g), context=torch.randn(b, 50, C, generator=g),
                expr=torch.rand(b, K, generator=g), lip=torch.randn(b, LIP, generator=g))


def r2(y: torch.Tensor, p: torch.Tensor) -> float:
    return float(1 - ((y - p) ** 2).sum() / ((y - y.mean()) ** 2).sum())


# ------------------------------------------------------------------------------------------ shapes
def test_forward_shapes():
    m = make_model(mouth_dims=(0, 2), sync_dim=24)
    x = make_batch(5)
    out = m(x["window"], x["context"])
    assert isinstance(out, PriorOutput)
    assert out.content.shape == (5, 64) and out.style.shape == (5, 64) and out.prior.shape == (5, 64)
    assert out.expr_pred.shape == (5, K)
    assert out.mouth_pred.shape == (5, 2)
    assert out.sync_emb.shape == (5, 24)
    torch.testing.assert_close(out.sync_emb.norm(dim=-1), torch.ones(5))
    # the parts on their own
    assert ContentEncoder(C, dim=16, hidden=8)(x["window"]).shape == (5, 16)
    assert StyleEncoder(C, context=50, dim=16, hidden=8)(x["context"]).shape == (5, 16)
    p, e = FuseNet(16, 7, hidden=8)(torch.randn(5, 16), torch.randn(5, 16))
    assert p.shape == (5, 16) and e.shape == (5, 7)


@pytest.mark.parametrize("bad, what", [
    (dict(window=torch.randn(4, 15, C)), "audio_window"),
    (dict(window=torch.randn(4, 16, C + 1)), "audio_window"),
    (dict(context=torch.randn(4, 49, C)), "audio_context"),
    (dict(context=torch.randn(3, 50, C)), "audio_context"),
])
def test_bad_shapes_are_named(bad, what):
    m = make_model()
    x = make_batch(4)
    x.update(bad)
    with pytest.raises(ValueError, match=what):
        m(x["window"], x["context"])


def test_bad_loss_inputs_are_named():
    m = make_model()
    x = make_batch(4)
    out = m(x["window"], x["context"])
    with pytest.raises(ValueError, match="expr"):
        m.losses(out, torch.rand(4, K + 1), x["lip"])
    with pytest.raises(ValueError, match="lip_target"):
        m.losses(out, x["expr"], torch.randn(4, LIP - 1))
    with pytest.raises(ValueError, match="mouth_dims"):
        PriorExtraction(C, expr_dim=3, mouth_dims=(0, 5))


def test_frame_features_and_context():
    n = 30
    win = torch.arange(n, dtype=torch.float32)[:, None, None].expand(n, 16, 3).clone()
    win[:, :8] = -1  # only positions 8:10 belong to the frame
    win[:, 10:] = -1
    ff = frame_features(win)
    assert ff.shape == (n, 3)
    torch.testing.assert_close(ff[:, 0], torch.arange(n, dtype=torch.float32))
    ctx = audio_context(ff, torch.tensor([0, 15, 29]), context=10)
    assert ctx.shape == (3, 10, 3)
    assert ctx[0, :, 0].tolist() == [0, 0, 0, 0, 0, 0, 1, 2, 3, 4]  # clamped at the start
    assert ctx[1, :, 0].tolist() == list(range(10, 20))
    assert ctx[2, :, 0].tolist() == [24, 25, 26, 27, 28, 29, 29, 29, 29, 29]
    with pytest.raises(ValueError, match="frames"):
        audio_context(ff, torch.tensor([30]))
    m = make_model()
    assert m.context_from_windows(torch.randn(n, 16, C), torch.tensor([3, 4])).shape == (2, 50, C)


# ------------------------------------------------------------------------------------------ losses
def test_losses_finite_and_differentiable():
    m = make_model()
    x = make_batch(8)
    out = m(x["window"], x["context"])
    losses = m.losses(out, x["expr"], x["lip"], lip_negatives=torch.randn(8, 3, LIP))
    assert set(losses) == {"sync", "mouth", "recon", "decor", "emotion", "total"}
    for k, v in losses.items():
        assert v.dim() == 0 and torch.isfinite(v), k
        assert v.requires_grad, k
    losses["total"].backward()
    for name, p in m.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, f"no gradient reaches {name}"
    # a batch smaller than decor_min_batch: the decorrelation term is 0 (with one warning), the rest works
    out1 = m(x["window"][:3], x["context"][:3])
    with pytest.warns(UserWarning, match="decor_min_batch"):
        l1 = m.losses(out1, x["expr"][:3], x["lip"][:3])
    assert float(l1["decor"].detach()) == 0.0 and torch.isfinite(l1["total"])
    l1["total"].backward()
    assert make_model(decor_min_batch=None).decor_min_batch == 128  # 2·dim by default


def _grad_owners(m: PriorExtraction, loss: torch.Tensor) -> set[str]:
    m.zero_grad(set_to_none=True)
    loss.backward()
    owners = set()
    for name, p in m.named_parameters():
        if p.grad is not None and p.grad.abs().sum() > 0:
            owners.add(name)
    return owners


def _groups(names: set[str]) -> set[str]:
    out = set()
    for n in names:
        if n.startswith("content.mouth_head"):
            out.add("mouth_head")
        elif n.startswith("content.sync_head"):
            out.add("sync_head")
        else:
            out.add(n.split(".")[0])
    return out


@pytest.mark.parametrize("term, expected", [
    ("sync", {"content", "sync_head", "lip_proj"}),
    ("mouth", {"content", "mouth_head"}),
    ("recon", {"content", "style", "fuse"}),
    ("decor", {"content", "style"}),
])
def test_gradients_reach_the_right_parameters(term, expected):
    m = make_model()
    x = make_batch(16)
    out = m(x["window"], x["context"])
    losses = m.losses(out, x["expr"], x["lip"])
    assert _groups(_grad_owners(m, losses[term])) == expected


def test_decorrelation_penalty():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(4096, 64, generator=g)
    b = torch.randn(4096, 64, generator=g)
    indep = float(decorrelation_penalty(a, b))
    same = float(decorrelation_penalty(a, a))
    mixed = float(decorrelation_penalty(a, a @ torch.randn(64, 64, generator=g)))  # a linear function of a
    assert indep < 0.05, indep  # ≈ 64/4096
    assert same > 0.99 and mixed > 0.99, (same, mixed)
    assert same > 50 * indep
    # scale / offset invariant (standardised over the batch): shrinking a feature set cannot lower it
    ref = decorrelation_penalty(a, b)
    torch.testing.assert_close(decorrelation_penalty(3 * a + 1, b), ref, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(decorrelation_penalty(1e-4 * a, b), ref, rtol=1e-3, atol=1e-5)
    scaled = a * torch.logspace(-4, 0, 64)  # per-feature scales
    torch.testing.assert_close(decorrelation_penalty(scaled, b), ref, rtol=1e-3, atol=1e-5)
    with pytest.raises(ValueError):
        decorrelation_penalty(a[:1], b[:1])


def test_emotion_invariance_penalty():
    """The share of the feature variance the emotion label explains: ≈ (C−1)/n for unrelated features,
    1 when the label determines them, scale-invariant, unknown labels ignored; minimising it removes the
    class means (what lets a downstream MLP read the emotion off the prior)."""
    g = torch.Generator().manual_seed(0)
    lab = torch.randint(0, 8, (2048,), generator=g)
    f = torch.randn(2048, 32, generator=g)
    indep = float(emotion_invariance_penalty(f, lab))
    assert abs(indep - 7 / 2048) < 0.004, indep
    det = torch.nn.functional.one_hot(lab, 8).float() @ torch.randn(8, 32, generator=g)
    assert float(emotion_invariance_penalty(det, lab)) > 0.99
    half = f + 0.3 * det / det.std(0)
    torch.testing.assert_close(emotion_invariance_penalty(5 * half + 2, lab), emotion_invariance_penalty(half, lab),
                               rtol=1e-4, atol=1e-6)
    # rows of unknown emotion do not count
    lab2 = lab.clone()
    lab2[:1024] = -1
    torch.testing.assert_close(emotion_invariance_penalty(det, lab2), torch.tensor(1.0), rtol=1e-4, atol=1e-4)
    # nothing to compare → 0, still in the graph
    x = torch.randn(6, 3, requires_grad=True)
    z = emotion_invariance_penalty(x, torch.full((6,), 2))
    assert float(z.detach()) == 0.0 and z.requires_grad
    with pytest.raises(ValueError, match="labels"):
        emotion_invariance_penalty(f, lab[:5])
    # gradient descent on the features removes the label's share
    y = (0.5 * f + det).clone().requires_grad_(True)
    opt = torch.optim.Adam([y], lr=0.05)
    for _ in range(200):
        opt.zero_grad()
        emotion_invariance_penalty(y, lab).backward()
        opt.step()
    assert float(emotion_invariance_penalty(y, lab)) < 0.05


def test_prior_losses_emotion_term():
    """PriorExtraction.losses: the emotion term is 0 without labels, > 0 with them, weighted into total."""
    m = make_model()
    assert m.weights["emotion"] == 0.0  # off by default (the paper's prior)
    m.weights["emotion"] = 0.5
    x = make_batch(16)
    out = m(x["window"], x["context"])
    no = m.losses(out, x["expr"], x["lip"])
    lab = torch.arange(16) % 4
    yes = m.losses(out, x["expr"], x["lip"], emotion=lab)
    assert float(no["emotion"]) == 0.0 and float(yes["emotion"]) > 0.0
    torch.testing.assert_close(yes["total"] - no["total"], m.weights["emotion"] * yes["emotion"])
    owners = _groups(_grad_owners(m, yes["emotion"]))
    assert {"content", "style"} <= owners and "fuse" not in owners, owners


def test_info_nce_aligned_vs_shuffled():
    g = torch.Generator().manual_seed(0)
    v = torch.randn(64, 32, generator=g)
    a = v + 0.3 * torch.randn(64, 32, generator=g)
    aligned = float(info_nce(a, v, temperature=0.1))
    shuffled = float(info_nce(a, v[torch.randperm(64, generator=g)], temperature=0.1))
    assert aligned < 0.5 < np.log(64) < shuffled + 1.0
    assert aligned < shuffled - 2.0
    # temporally shifted frames as explicit hard negatives make the task harder, never easier
    shifted = torch.stack([torch.roll(v, k, 0) for k in (1, 2, -1)], 1)  # [B,3,D]
    assert float(info_nce(a, v, 0.1, negatives=shifted)) >= aligned - 1e-6
    # a negative identical to the positive costs log 2 at least
    assert float(info_nce(v, v, 0.1, negatives=v[:, None], symmetric=False)) >= np.log(2) - 1e-4


# ------------------------------------------------------------------------------------------ learning
def test_content_encoder_learns_mouth_open_from_features():
    """The mouth-open coefficient is a known smooth function of the audio window; the content
    encoder's mouth head predicts it on held-out windows (R² > 0.5)."""
    g = torch.Generator().manual_seed(1)
    n_train, n_test, c = 1024, 256, 8

    def data(n):
        x = torch.randn(n, 16, c, generator=g)
        # energy of channel 0 and 1 around the window centre (the frame's own steps 7..10)
        drive = x[:, 7:11, 0].mean(1) - 0.5 * x[:, 7:11, 1].mean(1)
        return x, torch.sigmoid(2.0 * drive)

    xtr, ytr = data(n_train)
    xte, yte = data(n_test)
    torch.manual_seed(0)
    enc = ContentEncoder(c, mouth_dims=(0,), hidden=32)
    opt = torch.optim.Adam(enc.parameters(), 3e-3)
    for _ in range(150):
        idx = torch.randint(0, n_train, (64,), generator=g)
        pred = enc.predict_mouth(enc(xtr[idx]))[:, 0]
        loss = torch.nn.functional.mse_loss(pred, ytr[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        score = r2(yte, enc.predict_mouth(enc(xte))[:, 0])
    assert score > 0.5, score


def test_prior_learns_jaw_open_from_synthetic_speech():
    """End to end on the synthetic generator's speech: log-mel windows → PriorExtraction trained with
    all its losses → the mouth head follows the jaw-open coefficient of a held-out utterance."""
    from ua3dtalk.data.audio import window_features
    from ua3dtalk.data.extractors import MelExtractor
    from ua3dtalk.data.synth.speech import FPS, expression_track, synth_speech

    mel = MelExtractor()

    def clip(seed, dur):
        rng = np.random.default_rng(seed)
        utt = synth_speech(dur, rng)
        n = int(dur * FPS)
        expr = expression_track(utt, n, rng)
        return torch.from_numpy(window_features(mel(utt.audio), n)).float(), torch.from_numpy(expr)

    wtr, etr = clip(0, 20.0)
    wte, ete = clip(1, 8.0)
    mu, sd = wtr.mean((0, 1)), wtr.std((0, 1))
    wtr, wte = (wtr - mu) / sd, (wte - mu) / sd
    torch.manual_seed(0)
    m = PriorExtraction(80, etr.shape[1], mouth_dims=(0, 1, 2), lip_dim=3, hidden=64)  # decor from B ≥ 128
    ctr = m.context_from_windows(wtr, torch.arange(len(wtr)))
    cte = m.context_from_windows(wte, torch.arange(len(wte)))
    opt = torch.optim.Adam(m.parameters(), 2e-3)
    g = torch.Generator().manual_seed(0)
    for _ in range(75):
        idx = torch.randint(0, len(wtr), (128,), generator=g)
        out = m(wtr[idx], ctr[idx])
        # lip target: the visible mouth shape of the frame (here its ground-truth mouth coefficients)
        loss = m.losses(out, etr[idx], etr[idx, :3])["total"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    m.eval()
    with torch.no_grad():
        out = m(wte, cte)
    score = r2(ete[:, 0], out.mouth_pred[:, 0])
    assert score > 0.5, score


# ------------------------------------------------------------------------------------------ weights
@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_save_load_pretrained_round_trip(tmp_path, suffix):
    src = make_model()
    path = src.save_pretrained(tmp_path / f"prior{suffix}")
    dst = make_model()
    torch.manual_seed(123)
    for p in dst.parameters():
        p.data.normal_()
    dst.load_pretrained(path)
    for part in ("content", "style"):
        for (k, v), (_, w) in zip(getattr(src, part).state_dict().items(), getattr(dst, part).state_dict().items()):
            torch.testing.assert_close(v, w, msg=f"{part}.{k}")
    assert not torch.equal(src.fuse.expr_head.weight, dst.fuse.expr_head.weight)  # only the encoders
    x = make_batch(3)
    src.eval(), dst.eval()
    torch.testing.assert_close(src(x["window"], x["context"]).content, dst(x["window"], x["context"]).content)
    # freeze, and loading at construction
    frozen = make_model(pretrained=str(path), freeze_pretrained=True)
    assert not any(p.requires_grad for p in frozen.content.parameters())
    assert not any(p.requires_grad for p in frozen.style.parameters())
    assert all(p.requires_grad for p in frozen.fuse.parameters())


def test_load_pretrained_from_lightning_checkpoint(tmp_path):
    src = make_model()
    ckpt = {"state_dict": {f"prior.{k}": v for k, v in src.state_dict().items()}, "epoch": 3}
    ckpt["state_dict"]["deform.head.weight"] = torch.zeros(2)
    torch.save(ckpt, tmp_path / "last.ckpt")
    dst = make_model(hidden=32)
    dst.content.out.weight.data.zero_()
    dst.load_pretrained(tmp_path / "last.ckpt", parts=("content",))
    torch.testing.assert_close(dst.content.out.weight, src.content.out.weight)


def test_load_pretrained_errors(tmp_path):
    m = make_model()
    missing = tmp_path / "nope.safetensors"
    with pytest.raises(FileNotFoundError, match="nope.safetensors"):
        m.load_pretrained(missing)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsError, match="garbage.pt"):
        m.load_pretrained(garbage)
    # another configuration: different audio channels and width
    other = PriorExtraction(C + 3, K, hidden=16)
    path = other.save_pretrained(tmp_path / "other.safetensors")
    with pytest.raises(WeightsError) as ei:
        m.load_pretrained(path)
    msg = str(ei.value)
    assert "other.safetensors" in msg and "inp.weight" in msg and "shape" in msg
    # keys of a different module
    torch.save({"foo.weight": torch.zeros(3)}, tmp_path / "foreign.pt")
    with pytest.raises(WeightsError, match="foreign.pt.*content"):
        m.load_pretrained(tmp_path / "foreign.pt")
    # a style encoder with a missing key
    state = {f"content.{k}": v for k, v in m.content.state_dict().items()}
    state.update({f"style.{k}": v for k, v in m.style.state_dict().items() if k != "inp.bias"})
    torch.save(state, tmp_path / "partial.pt")
    with pytest.raises(WeightsError, match="missing keys: inp.bias"):
        m.load_pretrained(tmp_path / "partial.pt")


# ------------------------------------------------------------------------------------------ L_recon columns
def test_recon_dims_leave_the_emotional_coefficients_out():
    """``recon_dims``: L_recon is the MSE over the chosen columns only — changing an emotional coefficient
    does not change it, and its gradient does not reach the read-out rows of those coefficients; ``auto``
    leaves them out when the dataset names them and keeps everything otherwise."""
    emo = (3, 4, 8)
    m = make_model(recon_dims="non_emotional", emotional_dims=emo)
    keep = [i for i in range(K) if i not in emo]
    assert m.recon_mode == "non_emotional" and m.recon_dims == tuple(keep) and m.emotional_dims == emo
    x = make_batch(16)
    out = m(x["window"], x["context"])
    losses = m.losses(out, x["expr"], x["lip"])
    torch.testing.assert_close(losses["recon"], ((out.expr_pred - x["expr"])[:, keep] ** 2).mean())
    moved = x["expr"].clone()
    moved[:, list(emo)] += 5.0
    torch.testing.assert_close(m.losses(out, moved, x["lip"])["recon"], losses["recon"])
    m.zero_grad()
    losses["recon"].backward()
    g = m.fuse.expr_head.weight.grad
    assert float(g[list(emo)].abs().max()) == 0.0 and float(g[keep].abs().max()) > 0.0
    # all (the paper): every coefficient
    full = make_model()
    assert full.recon_mode == "all" and full.recon_dims == tuple(range(K))
    out = full(x["window"], x["context"])
    torch.testing.assert_close(full.losses(out, x["expr"], x["lip"])["recon"],
                               ((out.expr_pred - x["expr"]) ** 2).mean())
    # auto: non_emotional when the dataset says which are emotional, all when it does not
    assert make_model(recon_dims="auto", emotional_dims=list(emo)).recon_dims == tuple(keep)
    assert make_model(recon_dims="auto", emotional_dims=None).recon_dims == tuple(range(K))
    assert make_model(recon_dims="auto", emotional_dims=[]).recon_dims == tuple(range(K))
    # an explicit list (sorted)
    assert make_model(recon_dims=[2, 0]).recon_dims == (0, 2)


@pytest.mark.parametrize("kw, match", [
    (dict(recon_dims="emotional"), "recon_dims must be one of"),
    (dict(recon_dims="non_emotional"), "needs emotional_dims"),
    (dict(recon_dims="non_emotional", emotional_dims=list(range(K))), "nothing left"),
    (dict(recon_dims=[0, K]), "out of range"),
    (dict(recon_dims=[1, 1]), "repeated"),
    (dict(recon_dims=[]), "empty"),
    (dict(recon_dims=[True]), "integers"),
    (dict(recon_dims=[0.5]), "integers"),
    (dict(emotional_dims=[-1]), "out of range"),
    (dict(emotional_dims=3), "list of column indices"),
])
def test_recon_dims_errors(kw, match):
    with pytest.raises(ValueError, match=match):
        make_model(**kw)
