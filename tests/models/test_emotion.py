"""Emotion Distillation (DESIGN §4, issue 4 item 5): encoder, distillation, teachers by path,
EmotionField, emotion control."""
from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pytest
import torch
from torch import nn

from ua3dtalk.models.emotion import (
    EMOTIONS,
    MFCC,
    DistillationLoss,
    EmotionControl,
    EmotionDistillation,
    EmotionEncoder,
    EmotionField,
    EmotionOutput,
    LogMel,
    blend,
    emotion_index,
    load_teacher,
    save_teacher,
    sequence_from_windows,
)
from ua3dtalk.models.emotion.features import dct_matrix, mel_filterbank
from ua3dtalk.models.prior import WeightsError

SR = 16000
W2V_C = 24
SMALL = dict(mel_channels=(4, 8, 8, 8), lstm_hidden=8, w2v_hidden=16)


@pytest.fixture(autouse=True)
def _one_thread():
    """Small tensors: one intra-op thread is faster, and avoids oversubscription on a busy machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def wave(b: int = 3, s: int = 8000, seed: int = 0) -> torch.Tensor:
    return 0.1 * torch.randn(b, s, generator=torch.Generator().manual_seed(seed))


def feats(b: int = 3, t: int = 25, c: int = W2V_C, seed: int = 1) -> torch.Tensor:
    return torch.randn(b, t, c, generator=torch.Generator().manual_seed(seed))


# ------------------------------------------------------------------------------------------ constants
def test_emotions_are_the_dataset_labels():
    from ua3dtalk.constants import EMOTIONS as DATA_EMOTIONS
    from ua3dtalk.data.synth.speech import EMOTIONS as SYNTH_EMOTIONS

    assert EMOTIONS == DATA_EMOTIONS == SYNTH_EMOTIONS
    assert EMOTIONS == ("neutral", "angry", "contempt", "disgusted", "fear", "happy", "sad", "surprised")
    assert emotion_index("Happy") == 5 and emotion_index(2) == 2
    with pytest.raises(ValueError, match="neutral, angry, contempt"):
        emotion_index("joyful")
    with pytest.raises(ValueError):
        emotion_index(8)


# ------------------------------------------------------------------------------------------ front-ends
def test_logmel_and_mfcc():
    lm = LogMel()
    assert lm.fb.shape == (80, 257)
    # the same filters as the dataset's numpy log-mel extractor (HTK mel, unit-area triangles)
    from ua3dtalk.data.extractors import mel_filterbank as np_filterbank

    ref = torch.from_numpy(np_filterbank(80, 512, SR, 0.0, 8000.0)).float()
    torch.testing.assert_close(mel_filterbank(80, 512, SR, 0.0, 8000.0), ref, rtol=1e-5, atol=1e-8)
    t = torch.arange(SR) / SR
    tone = (0.5 * torch.sin(2 * math.pi * 1000.0 * t))[None]
    spec = lm(tone)
    assert spec.shape == (1, 80, 1 + SR // 160)
    band = int(spec[0].mean(1).argmax())
    centres = 700 * (10 ** (torch.linspace(0, 2595 * math.log10(1 + 8000 / 700), 82)[1:-1] / 2595) - 1)
    assert abs(float(centres[band]) - 1000.0) < 60.0  # the tone lands in the band around 1 kHz
    mf = MFCC()
    out = mf(tone)
    assert out.shape == (1, 40, 1 + SR // 160)
    d = dct_matrix(80, 80)
    torch.testing.assert_close(d.t() @ d, torch.eye(80), atol=1e-5, rtol=0)  # orthonormal
    with pytest.raises(ValueError, match="shorter than one analysis window"):
        lm(torch.zeros(1, 100))
    assert not any(k in lm.state_dict() for k in ("fb", "window"))  # never in checkpoints


def test_sequence_from_windows():
    # frame i's window holds 50 Hz steps [2i-8, 2i+8): build windows from a known sequence
    seq = torch.arange(40, dtype=torch.float32)[:, None].expand(40, 2).clone()
    idx = (torch.arange(20)[:, None] * 2 - 8 + torch.arange(16)[None]).clamp(0, 39)
    windows = seq[idx][None]  # [1,20,16,2]
    out = sequence_from_windows(windows)
    assert out.shape == (1, 40, 2)
    torch.testing.assert_close(out[0], seq)


# ------------------------------------------------------------------------------------------ encoder
def test_encoder_shapes_and_fusion_weights():
    torch.manual_seed(0)
    enc = EmotionEncoder(W2V_C, **SMALL)
    out = enc(wave(), feats())
    assert isinstance(out, EmotionOutput)
    assert out.embedding.shape == (3, 128)
    assert out.logits.shape == (3, 8) and out.intensity_logits.shape == (3, 3)
    assert out.branch_weights.shape == (3, 3) and out.branches == ("mel", "mfcc", "w2v")
    assert out.branch_embeddings.shape == (3, 3, 128) and out.branch_logits.shape == (3, 3, 8)
    torch.testing.assert_close(out.branch_weights.sum(-1), torch.ones(3))
    torch.testing.assert_close(out.embedding, (out.branch_weights[..., None] * out.branch_embeddings).sum(1))
    # student: wav2vec2 only, weight 1
    student = EmotionEncoder(W2V_C, branches=("w2v",), **SMALL)
    so = student(w2v=feats())
    assert so.embedding.shape == (3, 128) and torch.equal(so.branch_weights, torch.ones(3, 1))
    # branch dropout: training drops whole branches (weight 0), never all of them
    enc.train()
    enc.fusion.branch_dropout = 0.6
    w = enc(wave(16), feats(16)).branch_weights
    assert bool((w == 0).any()) and bool((w.sum(-1) - 1).abs().max() < 1e-5)
    enc.eval()
    assert bool((enc(wave(16), feats(16)).branch_weights > 0).all())


def test_encoder_input_errors():
    enc = EmotionEncoder(W2V_C, **SMALL)
    with pytest.raises(ValueError, match="needs waveform"):
        enc(w2v=feats())
    with pytest.raises(ValueError, match="needs w2v"):
        enc(waveform=wave())
    with pytest.raises(ValueError, match="w2v"):
        enc(wave(), feats(c=W2V_C + 1))
    with pytest.raises(ValueError, match="dimension 0"):
        enc(wave(b=3), feats(b=2))
    with pytest.raises(ValueError, match="branches"):
        EmotionEncoder(W2V_C, branches=("mel", "video"))
    with pytest.raises(ValueError, match="w2v_channels"):
        EmotionEncoder(None, branches=("w2v",))
    assert EmotionEncoder(branches=("mel", "mfcc"), **SMALL)(wave()).logits.shape == (3, 8)


# ------------------------------------------------------------------------------------------ losses
def test_distillation_loss_terms():
    torch.manual_seed(0)
    student = EmotionEncoder(W2V_C, branches=("w2v",), **SMALL)
    teacher = EmotionEncoder(W2V_C, **SMALL)
    loss = DistillationLoss(temperature=2.0, alpha=0.5)
    t_out = teacher(wave(), feats())
    s_out = student(w2v=feats())
    labels, levels = torch.tensor([0, 5, -1]), torch.tensor([1, 3, 0])
    terms = loss(s_out, labels, levels, teacher=t_out)
    assert set(terms) == {"ce", "ce_intensity", "ce_branches", "kl", "feature", "total"}
    for k, v in terms.items():
        assert v.dim() == 0 and torch.isfinite(v), k
    terms["total"].backward()
    assert all(p.grad is None for p in teacher.parameters())  # the teacher is detached
    assert student.nets["w2v"].inp.weight.grad.abs().sum() > 0
    # the single-branch student has no dead parameters: every one of them gets a gradient
    assert student.fusion is None
    dead = [n for n, p in student.named_parameters() if p.grad is None or float(p.grad.abs().sum()) == 0]
    assert not dead, dead
    # the KL term is 0 for identical logits, > 0 otherwise, and T²-scaled
    same = loss.kl(s_out.logits.detach(), s_out.logits.detach())
    assert abs(float(same)) < 1e-6
    a, b = torch.randn(4, 8), torch.randn(4, 8)
    t1 = DistillationLoss(temperature=1.0).kl(a, b)
    ref = (torch.softmax(b, -1) * (torch.log_softmax(b, -1) - torch.log_softmax(a, -1))).sum(-1).mean()
    torch.testing.assert_close(t1, ref)
    # all labels unknown: the label terms are 0 but still differentiable
    t2 = DistillationLoss()(student(w2v=feats()), torch.full((3,), -1), torch.zeros(3, dtype=torch.long))
    assert float(t2["total"].detach()) == 0.0
    t2["total"].backward()
    # a teacher with other classes is refused
    with pytest.raises(ValueError, match="same 8 emotions"):
        loss(s_out, labels, teacher=(torch.randn(3, 4), torch.randn(3, 128)))
    with pytest.raises(ValueError, match="embedding"):
        loss(s_out, labels, teacher=(torch.randn(3, 8), torch.randn(3, 64)))


def test_self_distillation_step_trains_teacher_and_student():
    torch.manual_seed(0)
    pair = EmotionDistillation(W2V_C)
    assert pair.self_distillation and pair.encoder is pair.student and pair.student.branches == ("w2v",)
    t_out, s_out = pair(wave(4), feats(4))
    losses = pair.losses(t_out, s_out, torch.tensor([1, 2, 3, 4]), torch.tensor([1, 2, 3, 1]))
    assert {"total", "student/kl", "student/feature", "teacher/ce", "teacher/ce_branches"} <= set(losses)
    for k, v in losses.items():
        assert torch.isfinite(v), k
    losses["total"].backward()
    for name in ("mel", "mfcc", "w2v"):
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in pair.teacher.nets[name].parameters()), name
    assert pair.student.nets["w2v"].inp.weight.grad.abs().sum() > 0


# ------------------------------------------------------------------------------------------ learning
def _emotional_clips(n_per: int, seed: int, dur: float = 1.5):
    from ua3dtalk.data.synth.speech import synth_speech

    rng = np.random.default_rng(seed)
    xs, ys = [], []
    for k, emo in enumerate(EMOTIONS):
        for _ in range(n_per):
            utt = synth_speech(dur, rng, f0_base=140.0 * rng.uniform(0.97, 1.03), emotion=emo, intensity=3)
            xs.append(utt.audio)
            ys.append(k)
    return torch.from_numpy(np.stack(xs)), torch.tensor(ys)


def test_encoder_classifies_synthetic_emotional_speech():
    """Emotion changes pitch, pitch range, energy and tempo of the synthetic speech; a short training
    of the log-mel + MFCC branches classifies held-out clips far above chance (1/8)."""
    xtr, ytr = _emotional_clips(30, seed=0)
    xte, yte = _emotional_clips(10, seed=1)
    torch.manual_seed(0)
    enc = EmotionEncoder(branches=("mel", "mfcc"), mel_channels=(8, 16, 32, 32))
    loss_fn = DistillationLoss()
    epochs, bs = 6, 16
    opt = torch.optim.AdamW(enc.parameters(), 3e-3, weight_decay=1e-4)
    steps = epochs * math.ceil(len(xtr) / bs)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, 3e-3, total_steps=steps, pct_start=0.2)
    g = torch.Generator().manual_seed(0)
    for _ in range(epochs):
        enc.train()
        perm = torch.randperm(len(xtr), generator=g)
        for i in range(0, len(xtr), bs):
            idx = perm[i:i + bs]
            loss = loss_fn(enc(xtr[idx]), ytr[idx])["total"]
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    enc.eval()
    with torch.no_grad():
        out = enc(xte)
    acc = float((out.logits.argmax(-1) == yte).float().mean())
    assert acc > 0.3, f"held-out accuracy {acc:.3f} (chance 0.125)"
    # both branches stay in use
    assert float(out.branch_weights.mean(0).min()) > 0.05


class TinyTeacher(nn.Module):
    """A stand-in for an external speech-emotion model: features [B,T,C] → (logits, 128-d embedding)."""

    def __init__(self, c: int):
        super().__init__()
        self.emb = nn.Linear(2 * c, 128)
        self.cls = nn.Linear(128, 8)

    def forward(self, w2v: torch.Tensor):
        h = torch.cat([w2v.mean(1), w2v.std(1)], dim=-1)
        e = torch.tanh(self.emb(h))
        return 4.0 * self.cls(e), e


def _exported_teacher(path, c=W2V_C, input="w2v"):
    """Save a tiny teacher by path: ``.pt2`` → torch.export, otherwise TorchScript."""
    torch.manual_seed(7)
    m = TinyTeacher(c).eval()
    meta = {"teacher.json": json.dumps({"input": input})}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        if str(path).endswith(".pt2"):
            dims = {"w2v": {0: torch.export.Dim("B"), 1: torch.export.Dim("T", min=2)}}
            ep = torch.export.export(m, (torch.randn(4, 30, c),), dynamic_shapes=dims)
            torch.export.save(ep, str(path), extra_files=meta)
        else:
            torch.jit.save(torch.jit.script(m), str(path), _extra_files=meta)
    return m


def test_exported_teacher_round_trip(tmp_path):
    ref = _exported_teacher(tmp_path / "ser.pt2")
    teacher = load_teacher(tmp_path / "ser.pt2")
    assert teacher.input == "w2v"
    x = feats(5, t=17)
    for a, b in zip(teacher(w2v=x), ref(x)):
        torch.testing.assert_close(a, b)
    teacher.train()  # the wrapper's flag only
    assert not any(p.requires_grad for p in teacher.parameters())


def test_student_distills_a_torchscript_teacher_loaded_by_path(tmp_path):
    path = tmp_path / "ser_teacher.pt"
    ref = _exported_teacher(path)
    teacher = load_teacher(path)
    assert teacher.input == "w2v" and not any(p.requires_grad for p in teacher.parameters())
    x = feats(64, t=30, seed=3)
    logits, emb = teacher(w2v=x)
    r_logits, r_emb = ref(x)
    torch.testing.assert_close(logits, r_logits)
    torch.testing.assert_close(emb, r_emb)
    # the student learns to match the teacher: its KL to the teacher decreases
    torch.manual_seed(0)
    student = EmotionEncoder(W2V_C, branches=("w2v",), w2v_hidden=64)
    loss_fn = DistillationLoss(alpha=1.0, feature_weight=1.0)

    held = feats(64, t=30, seed=4)  # clips the student never trains on
    held_logits = teacher(w2v=held)[0]

    def kl(inp=x, target=logits) -> float:
        student.eval()
        with torch.no_grad():
            return float(loss_fn.kl(student(w2v=inp).logits, target))

    before, before_held = kl(), kl(held, held_logits)
    opt = torch.optim.Adam(student.parameters(), 3e-3)
    teacher.train()  # must stay in eval mode
    assert not teacher.model.training
    for step in range(60):
        student.train()
        idx = torch.randint(0, 64, (32,), generator=torch.Generator().manual_seed(step))
        loss = loss_fn(student(w2v=x[idx]), teacher=teacher(w2v=x[idx]))["total"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    after, after_held = kl(), kl(held, held_logits)
    assert after < 0.5 * before, (before, after)
    assert after_held < before_held, (before_held, after_held)


def test_config_teacher_round_trip(tmp_path):
    torch.manual_seed(0)
    enc = EmotionEncoder(W2V_C, **SMALL).eval()
    cfg_path = save_teacher(enc, tmp_path / "teacher")
    assert cfg_path.name == "teacher.json" and (tmp_path / "teacher" / "teacher.safetensors").is_file()
    cfg = json.loads(cfg_path.read_text())
    assert cfg["input"] == "both" and cfg["kwargs"]["branches"] == ["mel", "mfcc", "w2v"]
    teacher = load_teacher(tmp_path / "teacher")  # the directory works too
    w, f = wave(2), feats(2)
    logits, emb = teacher(w, f)
    ref = enc(w, f)
    torch.testing.assert_close(logits, ref.logits)
    torch.testing.assert_close(emb, ref.embedding)
    # a .pt state dict next to the config
    p2 = save_teacher(enc, tmp_path / "t2.json", weights_suffix=".pt")
    torch.testing.assert_close(load_teacher(p2)(w, f)[0], ref.logits)
    # used by the teacher/student pair, frozen
    pair = EmotionDistillation(W2V_C, teacher_path=str(cfg_path))
    assert not pair.self_distillation
    assert not any(p.requires_grad for p in pair.teacher.parameters())
    t_out, s_out = pair(w, f)
    losses = pair.losses(t_out, s_out, torch.tensor([0, 1]), torch.tensor([1, 2]))
    assert "teacher/ce" not in losses and torch.isfinite(losses["total"])


def test_load_teacher_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing_teacher.pt"):
        load_teacher(tmp_path / "missing_teacher.pt")
    bad = tmp_path / "garbage.pt"
    bad.write_bytes(b"\x00 not a model")
    with pytest.raises(WeightsError, match="garbage.pt"):
        load_teacher(bad)
    # config naming a missing weights file
    enc = EmotionEncoder(W2V_C, **SMALL)
    cfg = save_teacher(enc, tmp_path / "a" / "teacher.json")
    (tmp_path / "a" / "teacher.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="teacher.safetensors"):
        load_teacher(cfg)
    # weights of another architecture: the error lists the mismatched keys
    cfg = save_teacher(enc, tmp_path / "b" / "teacher.json")
    data = json.loads(cfg.read_text())
    data["kwargs"]["w2v_hidden"] = 32
    cfg.write_text(json.dumps(data))
    with pytest.raises(WeightsError) as ei:
        load_teacher(cfg)
    assert "teacher.safetensors" in str(ei.value) and "nets.w2v.inp.weight" in str(ei.value)
    # not a teacher config
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"hello": 1}))
    with pytest.raises(WeightsError, match="format"):
        load_teacher(other)


# ------------------------------------------------------------------------------------------ field
def test_emotion_field_shape_and_gradients():
    torch.manual_seed(0)
    field = EmotionField((-1, -1, -1), (1, 1, 1), resolution=8)
    assert field.out_dim == 192
    assert [tuple(k.shape) for k in field.codebooks] == [(64, 64), (128, 64), (256, 64)]
    xyz = torch.rand(50, 3) * 2 - 1
    e = torch.randn(2, 128)
    out = field(xyz, e)
    assert out.shape == (2, 50, 192) and torch.isfinite(out).all()
    # f_emotion = concat_i(code_i ⊙ plane_i(xyz)) with code_i = softmax(q K_iᵀ/√64) K_i
    q = field.query(e)
    planes = field.planes.per_scale(xyz)
    for i, k in enumerate(field.codebooks):
        code = torch.softmax(q @ k.t() / 8.0, -1) @ k
        torch.testing.assert_close(out[:, :, 64 * i:64 * (i + 1)], code[:, None] * planes[i][None])
    (out * torch.randn_like(out)).sum().backward()
    for name, p in field.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert {n.split(".")[0] for n, _ in field.named_parameters()} == {"planes", "query", "codebooks"}
    # different emotions → different features at the same point
    assert not torch.allclose(out[0], out[1])
    with pytest.raises(ValueError, match="emotion embedding"):
        field(xyz, torch.randn(2, 64))
    with pytest.raises(ValueError, match="xyz"):
        field(torch.rand(5, 2), e)


# ------------------------------------------------------------------------------------------ control
def test_prototypes_and_label_control():
    ctl = EmotionControl(dim=4, momentum=None)
    e = torch.tensor([[1.0, 0, 0, 0], [3.0, 0, 0, 0], [0, 2.0, 0, 0], [9.0, 9, 9, 9]])
    ctl.update_prototypes(e, torch.tensor([5, 5, 5, -1]), torch.tensor([2, 2, 3, 1]))
    torch.testing.assert_close(ctl.from_label("happy", 2), torch.tensor([[2.0, 0, 0, 0]]))
    torch.testing.assert_close(ctl.from_label("happy", 3), torch.tensor([[0.0, 2, 0, 0]]))
    assert int(ctl.counts.sum()) == 3  # the unknown label was skipped
    # exact running mean over several updates
    ctl.update_prototypes(torch.tensor([[5.0, 0, 0, 0]]), torch.tensor([5]), torch.tensor([2]))
    torch.testing.assert_close(ctl.from_label(5, 2), torch.tensor([[3.0, 0, 0, 0]]))
    # no intensity: count-weighted mean over the levels seen
    torch.testing.assert_close(ctl.from_label("happy"), torch.tensor([[2.25, 0.5, 0, 0]]))
    # an unseen level falls back to the nearest seen one, with a warning
    with pytest.warns(UserWarning, match="intensity"):
        torch.testing.assert_close(ctl.from_label("happy", 1), ctl.from_label("happy", 2))
    with pytest.raises(RuntimeError, match="no prototype"):
        ctl.from_label("sad", 1)
    with pytest.raises(ValueError, match="neutral, angry"):
        ctl.from_label("ecstatic", 1)
    with pytest.raises(ValueError, match="intensity"):
        ctl.from_label("happy", 4)
    # buffers go into checkpoints
    assert {"prototypes", "counts"} <= set(ctl.state_dict())
    # EMA regime once many samples have been seen
    ema = EmotionControl(dim=2, momentum=0.5)
    for _ in range(3):
        ema.update_prototypes(torch.zeros(4, 2), torch.zeros(4, dtype=torch.long), torch.ones(4, dtype=torch.long))
    ema.update_prototypes(torch.ones(1, 2), torch.zeros(1, dtype=torch.long), torch.ones(1, dtype=torch.long))
    torch.testing.assert_close(ema.from_label("neutral", 1), torch.full((1, 2), 0.5))  # rate = momentum


def test_batched_label_prototypes_with_fallback():
    """from_labels: the prototype of each row's (emotion, level); unknown labels, unseen emotions keep the
    fallback row; an unknown level (0) uses the emotion's count-weighted mean."""
    ctl = EmotionControl(dim=2, momentum=None)
    ctl.update_prototypes(torch.tensor([[1.0, 0], [3.0, 0], [0, 4.0]]), torch.tensor([5, 5, 2]),
                          torch.tensor([1, 2, 3]))
    fb = torch.full((5, 2), -7.0)
    out = ctl.from_labels(torch.tensor([5, 5, 2, -1, 7]), torch.tensor([2, 0, 3, 1, 1]), fb)
    torch.testing.assert_close(out, torch.tensor([[3.0, 0], [2.0, 0], [0, 4.0], [-7.0, -7], [-7.0, -7]]))
    assert float(fb.min()) == -7.0 and float(fb.max()) == -7.0  # the fallback is not modified in place
    with pytest.raises(ValueError, match="labels"):
        ctl.from_labels(torch.tensor([5]), torch.tensor([1]), fb)


def test_control_sources_and_blending():
    torch.manual_seed(0)
    ctl = EmotionControl()
    student = EmotionEncoder(W2V_C, branches=("w2v",), **SMALL).eval()
    f = feats(2)
    e_audio = ctl.resolve("audio", encoder=student, w2v=f)
    torch.testing.assert_close(e_audio, student(w2v=f).embedding)
    ctl.update_prototypes(student(w2v=f).embedding.detach(), torch.tensor([1, 6]), torch.tensor([3, 1]))
    torch.testing.assert_close(ctl.resolve("angry", 3), e_audio[:1].detach())
    explicit = torch.randn(128)
    assert ctl.resolve(explicit).shape == (1, 128)
    with pytest.raises(ValueError):
        ctl.explicit(torch.randn(2, 64))
    with pytest.raises(ValueError, match="neutral, angry"):
        ctl.resolve("furious")
    e1, e2 = ctl.from_label("angry", 3), ctl.from_label("sad", 1)
    assert torch.equal(blend(e1, e2, 0.0), e1)
    assert torch.equal(blend(e1, e2, 1.0), e2)
    torch.testing.assert_close(ctl.blend(e1, e2, 0.25), 0.75 * e1 + 0.25 * e2)
    e1b, e2b = torch.randn(3, 128), torch.randn(3, 128)
    w = torch.tensor([0.0, 0.5, 1.0])
    mixed = blend(e1b, e2b, w)
    assert torch.equal(mixed[0], e1b[0]) and torch.equal(mixed[2], e2b[2])


# ------------------------------------------------------------------------------------------ issue 15 item 4
def _space_vs_emotion(field: EmotionField, xyz: torch.Tensor, e: torch.Tensor) -> float:
    """Median over channels of (std of f_emotion across Gaussians) / (std across emotion embeddings)."""
    with torch.no_grad():
        out = field(xyz, e)  # [B,N,C]
    return float((out.std(1).mean(0) / out.std(0).mean(0)).median())


def test_emotion_field_varies_over_space_at_initialisation():
    """At initialisation f_emotion varies across the Gaussians by an amount comparable to its variation
    across emotions: per channel, std over Gaussians ≥ 0.5 × std over 8 unit-scale emotion embeddings
    (median over channels). The position field's initialisation (planes 1 ± 0.1, the old one) makes
    f_emotion the emotion code broadcast over the head: ≈ 0.1."""
    torch.manual_seed(0)
    field = EmotionField((-1, -1, -1), (1, 1, 1), resolution=16)
    assert field.spatial_std == 0.75
    xyz = torch.rand(2000, 3) * 2 - 1
    e = torch.nn.functional.layer_norm(torch.randn(8, 128), (128,))  # like the student's LayerNorm-ed output
    assert _space_vs_emotion(field, xyz, e) >= 0.5
    # the plane products: mean ≈ 1 (K-Planes, every plane gets a gradient), spread ≈ spatial_std across points
    with torch.no_grad():
        planes = torch.cat(field.planes.per_scale(xyz), -1)
    assert abs(float(planes.mean()) - 1.0) < 0.1
    assert abs(float(planes.std(0).mean()) - 0.75) < 0.1
    # the old initialisation fails the same check
    field.planes.init_std = 0.1
    field.planes.reset_parameters()
    assert _space_vs_emotion(field, xyz, e) < 0.2
    # spatial_std = 0: constant planes, the code broadcast over space
    flat = EmotionField((-1, -1, -1), (1, 1, 1), resolution=8, spatial_std=0.0)
    assert _space_vs_emotion(flat, xyz, e) < 1e-5
    # the per-node std behind a given spread: the position field's 0.1 ↔ spatial_std ≈ 0.115
    from ua3dtalk.models.emotion.field import plane_init_std

    assert abs(plane_init_std(0.1155) - 0.1) < 2e-3 and plane_init_std(0.0) == 0.0
    for bad in (-0.1, float("nan"), float("inf"), True, "0.5"):
        with pytest.raises(ValueError, match="spatial_std"):
            EmotionField(resolution=8, spatial_std=bad)


def test_emotion_field_cache_with_the_spatial_initialisation():
    """The inference cache (no autograd) gives the same features as the autograd path, reused across emotions."""
    torch.manual_seed(1)
    field = EmotionField((-1, -1, -1), (1, 1, 1), resolution=8, scales=(1, 2), emotion_dim=16, channels=8).eval()
    xyz = torch.rand(100, 3) * 2 - 1
    e = torch.randn(3, 16)
    ref = field(xyz, e)
    with torch.no_grad():
        torch.testing.assert_close(field(xyz, e), ref.detach())
        cache = field._infer_cache
        assert cache is not None
        field(xyz, 2 * e)
        assert field._infer_cache is cache


def test_prototypes_recomputed_as_exact_means():
    """recompute_prototypes: the exact mean per (emotion, intensity) cell over every batch, from scratch (cells
    absent from the data end empty even if the running means had them), unknown labels / levels skipped,
    counts = embeddings per cell; sets ``recomputed``, which a running update clears again."""
    ctl = EmotionControl(dim=3, momentum=0.01)
    ctl.update_prototypes(torch.ones(2, 3), torch.tensor([1, 2]), torch.tensor([1, 1]))  # running means
    assert not bool(ctl.recomputed)
    g = torch.Generator().manual_seed(0)
    batches = []
    for _ in range(3):
        e = torch.randn(10, 3, generator=g)
        labels = torch.randint(-1, 3, (10,), generator=g)
        levels = torch.randint(0, 4, (10,), generator=g)
        batches.append((e, labels, levels))
    n = ctl.recompute_prototypes(iter(batches))
    assert bool(ctl.recomputed)
    e = torch.cat([b[0] for b in batches])
    lab = torch.cat([b[1] for b in batches])
    lvl = torch.cat([b[2] for b in batches])
    ok = (lab >= 0) & (lvl >= 1)
    assert n == int(ok.sum())
    for emo in range(len(ctl.emotions)):
        for k in (1, 2, 3):
            m = ok & (lab == emo) & (lvl == k)
            assert int(ctl.counts[emo, k - 1]) == int(m.sum())
            want = e[m].mean(0) if bool(m.any()) else torch.zeros(3)
            torch.testing.assert_close(ctl.prototypes[emo, k - 1], want)
    assert int(ctl.counts[2, 0]) == int((ok & (lab == 2) & (lvl == 1)).sum())  # the running count is gone
    # the flag lives in the state dict; a state dict from before the flag existed loads as "running means"
    sd = ctl.state_dict()
    assert bool(sd["recomputed"])
    fresh = EmotionControl(dim=3)
    fresh.recomputed.fill_(True)
    fresh.load_state_dict({k: v for k, v in sd.items() if k != "recomputed"})
    assert not bool(fresh.recomputed)
    torch.testing.assert_close(fresh.prototypes, ctl.prototypes)
    ctl.update_prototypes(torch.ones(1, 3), torch.tensor([0]), torch.tensor([1]))
    assert not bool(ctl.recomputed)
    with pytest.raises(ValueError, match="labels"):
        ctl.recompute_prototypes([(torch.ones(2, 3), torch.tensor([0.0, 1.0]), torch.tensor([1, 1]))])
