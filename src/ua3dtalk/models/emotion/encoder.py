"""The multi-branch speech-emotion encoder (DESIGN §4 "Emotion Distillation").

Branches (each → ``dim`` = 128, LayerNorm-ed so that they are on one scale before fusion):

* ``"mel"``  — log-mel CNN: 80 bands × frames (25 ms / 10 ms, :class:`~.features.LogMel`) → per-band
  BatchNorm → four 3×3 conv blocks (16, 32, 64, 64 channels, BatchNorm, ReLU; the first three with
  stride 2 — 4× cheaper on a CPU than max-pooling full-resolution maps) → mean and max over time →
  linear;
* ``"mfcc"`` — MFCC BiLSTM: 40 MFCCs (DCT of the same log-mel) → per-coefficient BatchNorm → one
  bidirectional LSTM layer (``lstm_hidden`` per direction) → mean and max over time → linear;
* ``"w2v"``  — wav2vec2 hidden-state projection: precomputed features [B,T,C] (the 50 Hz sequence,
  e.g. :func:`~.features.sequence_from_windows` of a clip segment's §5.3 windows) → per-channel
  BatchNorm → linear + GELU → residual temporal conv (k=5) → attentive statistics pooling (softmax
  weights over time, weighted mean and std) → linear.

Input normalisation: the BatchNorm layers on the inputs (log-mel bands, MFCCs, w2v channels) use a
cumulative average of the batch statistics (``momentum=None``): the front-ends are fixed, so their
statistics do not drift, and the running estimate is exact after a few batches.

*Multi-modal attention-weighted fusion* (:class:`AttentionFusion`): a small scorer
``Linear(dim,64) → tanh → Linear(64,1)`` on the unit-normalised branch embeddings, shared by the
branches, plus a learned per-branch bias, gives one score per branch; a softmax over the branches
gives per-sample weights ``w`` [B,n_branches] (returned for logging), and ``e = Σ_b w_b · z_b`` ∈
R^128. During training whole branches are dropped at random (``branch_dropout``, default 0.2).

Heads on ``e``: emotion class (linear, ``n_emotions`` = 8, :data:`EMOTIONS` order) and intensity
(linear, ``n_levels`` = 3: MEAD levels 1, 2, 3 → classes 0, 1, 2). The emotion head is also applied
to each branch embedding (``branch_logits``): an auxiliary per-branch cross-entropy
(:class:`~.distill.DistillationLoss` ``aux_weight``) keeps every branch learning — without it the
fusion collapses onto the branch that learns fastest within the first epoch and the others stop
receiving gradient.

The wav2vec2-only student used at inference is ``EmotionEncoder(w2v_channels, branches=("w2v",))``
(it has no fusion module; its fusion weight is always 1).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..prior.checks import expect
from .features import LogMel, dct_matrix

__all__ = ["BRANCHES", "EmotionOutput", "EmotionEncoder", "MelCNN", "MfccBiLSTM", "W2VProjection",
           "AttentionFusion"]

BRANCHES = ("mel", "mfcc", "w2v")


@dataclass
class EmotionOutput:
    """Output of :class:`EmotionEncoder` for ``B`` clip segments."""

    embedding: torch.Tensor  # [B,dim] fused emotion embedding e
    logits: torch.Tensor  # [B,n_emotions] emotion class logits
    intensity_logits: torch.Tensor  # [B,n_levels] intensity logits (level k ↔ class k-1)
    branch_weights: torch.Tensor  # [B,n_branches] fusion weights (rows sum to 1)
    branch_embeddings: torch.Tensor  # [B,n_branches,dim] per-branch embeddings z_b
    branch_logits: torch.Tensor  # [B,n_branches,n_emotions] emotion head applied to each z_b (auxiliary)
    branches: tuple  # branch names, the order of the weights


class MelCNN(nn.Module):
    """Log-mel [B,n_mels,T] → [B,dim] (see the module docstring)."""

    def __init__(self, n_mels: int = 80, dim: int = 128, channels: Sequence[int] = (16, 32, 64, 64),
                 dropout: float = 0.1):
        super().__init__()
        self.n_mels = n_mels
        self.norm = nn.BatchNorm1d(n_mels, momentum=None)  # input statistics are fixed: cumulative average
        layers, cin, f = [], 1, n_mels
        for i, c in enumerate(channels):
            stride = 2 if i < len(channels) - 1 else 1
            layers += [nn.Conv2d(cin, c, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(c),
                       nn.ReLU(inplace=True)]
            f = (f - 1) // stride + 1
            cin = c
        self.convs = nn.Sequential(*layers)
        self.proj = nn.Sequential(nn.Dropout(dropout), nn.Linear(2 * cin * f, dim), nn.LayerNorm(dim))

    def forward(self, logmel: torch.Tensor) -> torch.Tensor:
        expect(logmel, "mel branch input", ("B", self.n_mels, "T"))
        h = self.convs(self.norm(logmel).unsqueeze(1))  # [B,C,F',T']
        h = torch.cat([h.mean(-1), h.amax(-1)], dim=1).flatten(1)
        return self.proj(h)


class MfccBiLSTM(nn.Module):
    """MFCC [B,n_mfcc,T] → [B,dim] (see the module docstring)."""

    def __init__(self, n_mfcc: int = 40, dim: int = 128, hidden: int = 64, dropout: float = 0.1):
        super().__init__()
        self.n_mfcc = n_mfcc
        self.norm = nn.BatchNorm1d(n_mfcc, momentum=None)
        self.lstm = nn.LSTM(n_mfcc, hidden, num_layers=1, batch_first=True, bidirectional=True)
        self.proj = nn.Sequential(nn.Dropout(dropout), nn.Linear(4 * hidden, dim), nn.LayerNorm(dim))

    def forward(self, mfcc: torch.Tensor) -> torch.Tensor:
        expect(mfcc, "mfcc branch input", ("B", self.n_mfcc, "T"))
        h, _ = self.lstm(self.norm(mfcc).transpose(1, 2))  # [B,T,2H]
        return self.proj(torch.cat([h.mean(1), h.amax(1)], dim=-1))


class W2VProjection(nn.Module):
    """wav2vec2 features [B,T,C] → [B,dim] (see the module docstring)."""

    def __init__(self, channels: int, dim: int = 128, hidden: int = 256, dropout: float = 0.1):
        super().__init__()
        self.channels = channels
        self.norm = nn.BatchNorm1d(channels, momentum=None)
        self.inp = nn.Linear(channels, hidden)
        self.conv = nn.Conv1d(hidden, hidden, 5, padding=2)
        self.att = nn.Linear(hidden, 1)
        self.proj = nn.Sequential(nn.Dropout(dropout), nn.Linear(2 * hidden, dim), nn.LayerNorm(dim))

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        expect(feats, "w2v branch input", ("B", "T", self.channels))
        h = F.gelu(self.inp(self.norm(feats.transpose(1, 2)).transpose(1, 2)))  # [B,T,H]
        h = h + F.gelu(self.conv(h.transpose(1, 2))).transpose(1, 2)
        a = torch.softmax(self.att(h), dim=1)  # [B,T,1]
        mu = (a * h).sum(1)
        sd = torch.sqrt(((a * (h - mu[:, None]).pow(2)).sum(1)).clamp_min(1e-6))
        return self.proj(torch.cat([mu, sd], dim=-1))


class AttentionFusion(nn.Module):
    """Multi-modal attention-weighted fusion: ``z`` [B,n,dim] → (e [B,dim], weights [B,n]).

    ``score_b = MLP(z_b / ‖z_b‖) + bias_b`` (the scorer sees unit vectors, so that Adam cannot blow the
    scores up within a few steps — an unnormalised scorer saturates the softmax onto one branch in
    the first epoch), ``w = softmax_b(score)``, ``e = Σ_b w_b z_b``.

    *Branch dropout* (training only, probability ``branch_dropout`` per sample and branch, at least one
    branch kept): dropped branches get weight 0 and the others are renormalised, so that the fused
    embedding never relies on a single branch.
    """

    def __init__(self, dim: int, n_branches: int, hidden: int = 64, branch_dropout: float = 0.0):
        super().__init__()
        if not 0 <= branch_dropout < 1:
            raise ValueError("branch_dropout must be in [0, 1)")
        self.n, self.branch_dropout = n_branches, float(branch_dropout)
        # no bias on the last layer: a constant added to every branch's score cancels in the softmax (its
        # gradient is zero up to rounding — a dead parameter); the per-branch `bias` is what matters
        self.score = nn.Sequential(nn.Linear(dim, hidden), nn.Tanh(), nn.Linear(hidden, 1, bias=False))
        self.bias = nn.Parameter(torch.zeros(n_branches))

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        expect(z, "branch embeddings", ("B", self.n, None))
        s = self.score(F.normalize(z, dim=-1)).squeeze(-1) + self.bias  # [B,n]
        if self.training and self.branch_dropout > 0 and self.n > 1:
            keep = torch.rand_like(s) >= self.branch_dropout
            none = ~keep.any(-1)
            if bool(none.any()):  # keep one random branch where all were dropped
                pick = torch.randint(self.n, (int(none.sum()),), device=s.device)
                keep[none] = F.one_hot(pick, self.n).bool()
            s = s.masked_fill(~keep, float("-inf"))
        w = torch.softmax(s, dim=-1)
        return (w.unsqueeze(-1) * z).sum(1), w


class EmotionEncoder(nn.Module):
    """Speech-emotion encoder with up to three branches and attention-weighted fusion.

    Args:
        w2v_channels: channels ``C`` of the wav2vec2 features (needed when ``"w2v"`` is a branch,
            ignored otherwise; e.g. 768 for a base model's hidden state, 32 for CTC logits).
        dim: embedding size (128).
        branches: subset of ``("mel", "mfcc", "w2v")``, in any order (the order of the weights).
        n_emotions: emotion classes (8, :data:`ua3dtalk.models.emotion.EMOTIONS`).
        n_levels: intensity levels (3).
        sample_rate: waveform rate (16 kHz).
        n_mels: log-mel bands (80).
        n_mfcc: MFCC coefficients (40).
        lstm_hidden: BiLSTM size per direction.
        w2v_hidden: width of the wav2vec2 projection.
        mel_channels: channels of the log-mel CNN's conv blocks.
        dropout: dropout before each branch's last linear layer.
        branch_dropout: probability of dropping a branch from the fusion (per sample, training only;
            see :class:`AttentionFusion`).

    Inputs of :meth:`forward`: ``waveform`` [B,S] float at ``sample_rate`` (needed by ``mel``/``mfcc``,
    ≥ 17 ms; 1–2 s clip segments in practice) and/or ``w2v`` [B,T,C] (needed by ``w2v``).
    """

    def __init__(self, w2v_channels: Optional[int] = None, dim: int = 128, branches: Sequence[str] = BRANCHES,
                 n_emotions: int = 8, n_levels: int = 3, sample_rate: int = 16000, n_mels: int = 80,
                 n_mfcc: int = 40, lstm_hidden: int = 64, w2v_hidden: int = 256,
                 mel_channels: Sequence[int] = (16, 32, 64, 64), dropout: float = 0.1, branch_dropout: float = 0.2):
        super().__init__()
        branches = tuple(branches)
        bad = [b for b in branches if b not in BRANCHES]
        if bad or not branches or len(set(branches)) != len(branches):
            raise ValueError(f"branches must be distinct names from {BRANCHES}, got {branches}")
        if "w2v" in branches and (w2v_channels is None or int(w2v_channels) < 1):
            raise ValueError("the 'w2v' branch needs w2v_channels (channels of the wav2vec2 features)")
        self.config = dict(w2v_channels=None if w2v_channels is None else int(w2v_channels), dim=int(dim),
                           branches=list(branches), n_emotions=int(n_emotions), n_levels=int(n_levels),
                           sample_rate=int(sample_rate), n_mels=int(n_mels), n_mfcc=int(n_mfcc),
                           lstm_hidden=int(lstm_hidden), w2v_hidden=int(w2v_hidden),
                           mel_channels=[int(c) for c in mel_channels], dropout=float(dropout),
                           branch_dropout=float(branch_dropout))
        """The constructor arguments (JSON-able): ``EmotionEncoder(**config)`` rebuilds the architecture."""
        self.branches, self.dim = branches, int(dim)
        self.n_emotions, self.n_levels = int(n_emotions), int(n_levels)
        self.w2v_channels = int(w2v_channels) if w2v_channels is not None else None
        self.sample_rate = int(sample_rate)
        if "mel" in branches or "mfcc" in branches:
            self.logmel = LogMel(sample_rate=sample_rate, n_mels=n_mels)
        if "mfcc" in branches:
            self.register_buffer("dct", dct_matrix(n_mels, n_mfcc), persistent=False)
        self.nets = nn.ModuleDict()
        for b in branches:
            if b == "mel":
                self.nets[b] = MelCNN(n_mels, self.dim, tuple(mel_channels), dropout=dropout)
            elif b == "mfcc":
                self.nets[b] = MfccBiLSTM(n_mfcc, self.dim, lstm_hidden, dropout=dropout)
            else:
                self.nets[b] = W2VProjection(self.w2v_channels, self.dim, w2v_hidden, dropout=dropout)
        # one branch: nothing to weigh (a scorer would get no gradient through a softmax over one entry)
        self.fusion = (AttentionFusion(self.dim, len(branches), branch_dropout=branch_dropout)
                       if len(branches) > 1 else None)
        self.emotion_head = nn.Linear(self.dim, self.n_emotions)
        self.intensity_head = nn.Linear(self.dim, self.n_levels)

    @property
    def needs_waveform(self) -> bool:
        return "mel" in self.branches or "mfcc" in self.branches

    @property
    def needs_w2v(self) -> bool:
        return "w2v" in self.branches

    def forward(self, waveform: Optional[torch.Tensor] = None, w2v: Optional[torch.Tensor] = None) -> EmotionOutput:
        """``waveform`` [B,S] and/or ``w2v`` [B,T,C] → :class:`EmotionOutput`."""
        d: dict = {}
        if self.needs_waveform:
            if waveform is None:
                raise ValueError(f"EmotionEncoder with branches {self.branches} needs waveform [B,S]")
            expect(waveform, "waveform", ("B", "S"), d)
        if self.needs_w2v:
            if w2v is None:
                raise ValueError(f"EmotionEncoder with branches {self.branches} needs w2v features [B,T,C]")
            expect(w2v, "w2v", ("B", "T", self.w2v_channels), d)
        logmel = self.logmel(waveform) if self.needs_waveform else None
        zs = []
        for b in self.branches:
            if b == "mel":
                zs.append(self.nets[b](logmel))
            elif b == "mfcc":
                zs.append(self.nets[b](torch.einsum("bmt,mk->bkt", logmel, self.dct)))
            else:
                zs.append(self.nets[b](w2v))
        z = torch.stack(zs, dim=1)  # [B,n,dim]
        if self.fusion is not None:
            e, w = self.fusion(z)
        else:
            e, w = z[:, 0], z.new_ones(z.shape[0], 1)
        return EmotionOutput(e, self.emotion_head(e), self.intensity_head(e), w, z, self.emotion_head(z),
                             self.branches)

    def embed(self, waveform: Optional[torch.Tensor] = None, w2v: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Just the fused embedding ``e`` [B,dim]."""
        return self.forward(waveform, w2v).embedding
