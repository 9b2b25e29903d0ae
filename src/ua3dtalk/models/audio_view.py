"""The audio "view" of the deformation network (DESIGN §4 "Audio views").

Following the AudioNet / temporal-attention / region-attention design of ER-NeRF and TalkingGaussian:

* :class:`AudioNet` encodes one audio-feature window (16 frames of a 50 Hz feature, DESIGN §5.3)
  into a 32-d per-frame code with stride-2 1-D convolutions over time followed by an MLP;
* :class:`AudioAttNet` smooths these codes over the 8 neighbouring frames with a learned temporal
  attention (1-D convolutions over the sequence → one logit per frame → linear + softmax → weighted
  sum);
* :class:`RegionAttention` maps the position encoding ``H`` of each Gaussian to per-channel gates
  that are multiplied channel-wise with the (frame-global) audio and eye features, so different face
  regions listen to different audio channels;
* :class:`AudioView` composes the three, plus the eye/blink input (AU45 or 6 AUs → 6-d,
  region-attended), into the per-Gaussian audio view ``[B, N, 32 + 6]``.

Batch convention: ``B`` frames are processed at once. Training usually renders one frame per step
(``B = 1``, as in TalkingGaussian) but every module supports ``B > 1``.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import nn

Tensor = torch.Tensor


class AudioNet(nn.Module):
    """Per-frame audio encoder: window of features ``[M, window, C]`` → ``[M, out_dim]``.

    Stride-2 ``Conv1d`` layers (kernel 3, padding 1, LeakyReLU 0.02) halve the time axis until it has
    length 1 (4 layers for a 16-frame window; channels 32, 32, 64, 64, then 64), followed by an MLP
    ``64 → 64 → out_dim``.

    Args:
        in_channels: feature size ``C`` of the audio features (29 DeepSpeech, 1024 HuBERT, 32/768
            wav2vec2 logits/hidden states, 80 log-mel, ...).
        window: number of feature frames per window (16 in DESIGN §5.3).
        out_dim: size of the per-frame audio code (32 in TalkingGaussian/UA-3DTalk).
    """

    def __init__(self, in_channels: int, window: int = 16, out_dim: int = 32) -> None:
        super().__init__()
        if in_channels < 1 or window < 1 or out_dim < 1:
            raise ValueError(f"AudioNet: in_channels, window, out_dim must be >= 1, got "
                             f"{in_channels}, {window}, {out_dim}")
        self.in_channels, self.window, self.out_dim = int(in_channels), int(window), int(out_dim)
        widths = [32, 32, 64, 64]
        layers: list[nn.Module] = []
        c, length, i = self.in_channels, self.window, 0
        while length > 1 or i == 0:
            w = widths[min(i, len(widths) - 1)]
            layers += [nn.Conv1d(c, w, kernel_size=3, stride=2, padding=1), nn.LeakyReLU(0.02)]
            c, length, i = w, (length + 1) // 2, i + 1  # ceil(L/2) for k=3, s=2, p=1
        self.conv = nn.Sequential(*layers)
        self.conv_out = c
        self.mlp = nn.Sequential(nn.Linear(c, 64), nn.LeakyReLU(0.02), nn.Linear(64, self.out_dim))

    def forward(self, x: Tensor) -> Tensor:
        """``x [M, window, C]`` (time-major, as stored in ``aud_*.npy``) → ``[M, out_dim]``."""
        if x.dim() != 3 or x.shape[1] != self.window or x.shape[2] != self.in_channels:
            raise ValueError(f"AudioNet expects [M, {self.window}, {self.in_channels}], got {list(x.shape)}")
        y = self.conv(x.transpose(1, 2))  # [M, c, 1]
        assert y.shape[-1] == 1, y.shape
        out = self.mlp(y.squeeze(-1))
        assert out.shape == (x.shape[0], self.out_dim)
        return out


class AudioAttNet(nn.Module):
    """Temporal attention over neighbouring frames' audio codes: ``[B, seq_len, dim]`` → ``[B, dim]``.

    A stack of 1-D convolutions over the sequence (``dim → 16 → 8 → 4 → 2 → 1`` channels, kernel 3,
    LeakyReLU 0.02) gives one logit per frame; a ``Linear(seq_len, seq_len)`` and a softmax over the
    sequence turn them into weights; the output is the weighted sum of the codes.

    Args:
        dim: size of the per-frame audio code.
        seq_len: number of neighbouring frames attended over (8 in TalkingGaussian).
    """

    def __init__(self, dim: int = 32, seq_len: int = 8) -> None:
        super().__init__()
        self.dim, self.seq_len = int(dim), int(seq_len)
        chans = [self.dim, 16, 8, 4, 2, 1]
        layers: list[nn.Module] = []
        for a, b in zip(chans[:-1], chans[1:]):
            layers += [nn.Conv1d(a, b, kernel_size=3, stride=1, padding=1), nn.LeakyReLU(0.02)]
        self.conv = nn.Sequential(*layers[:-1])  # no activation on the final logit
        self.linear = nn.Linear(self.seq_len, self.seq_len)

    def weights(self, x: Tensor) -> Tensor:
        """Attention weights ``[B, seq_len]`` (rows sum to 1) for codes ``x [B, seq_len, dim]``."""
        if x.dim() != 3 or x.shape[1] != self.seq_len or x.shape[2] != self.dim:
            raise ValueError(f"AudioAttNet expects [B, {self.seq_len}, {self.dim}], got {list(x.shape)}")
        logits = self.conv(x.transpose(1, 2)).squeeze(1)  # [B, seq_len]
        return torch.softmax(self.linear(logits), dim=-1)

    def forward(self, x: Tensor) -> Tensor:
        """``x [B, seq_len, dim]`` → attention-weighted sum over the sequence ``[B, dim]``."""
        w = self.weights(x)
        out = (w.unsqueeze(-1) * x).sum(dim=1)
        assert out.shape == (x.shape[0], self.dim)
        return out


class RegionAttention(nn.Module):
    """Per-Gaussian channel attention computed from the position encoding ``H``.

    ``gate = act(MLP(H))`` with ``MLP = Linear(h_dim, hidden) → ReLU → Linear(hidden, feat_dim)``
    (``hidden = 0`` gives a single ``Linear``); the attended feature is ``feat ⊙ gate``.

    Args:
        h_dim: size of the position encoding ``H`` (64).
        feat_dim: size of the attended feature (32 audio channels, or 6 eye channels).
        hidden: hidden width of the gate MLP (0 = single linear layer).
        activation: ``"sigmoid"`` (gates in (0,1), default), ``"softmax"`` (over channels; the gates
            sum to 1 per Gaussian) or ``"none"`` (raw channel weights, as ER-NeRF's audio attention).
    """

    def __init__(self, h_dim: int = 64, feat_dim: int = 32, hidden: int = 64, activation: str = "sigmoid") -> None:
        super().__init__()
        if activation not in ("sigmoid", "softmax", "none"):
            raise ValueError(f"RegionAttention: activation must be sigmoid|softmax|none, got {activation!r}")
        self.h_dim, self.feat_dim, self.activation = int(h_dim), int(feat_dim), activation
        if hidden > 0:
            self.net = nn.Sequential(nn.Linear(self.h_dim, hidden), nn.ReLU(), nn.Linear(hidden, self.feat_dim))
        else:
            self.net = nn.Linear(self.h_dim, self.feat_dim)

    def gate(self, h: Tensor) -> Tensor:
        """``H [..., h_dim]`` → channel gates ``[..., feat_dim]``."""
        if h.shape[-1] != self.h_dim:
            raise ValueError(f"RegionAttention expects H [..., {self.h_dim}], got {list(h.shape)}")
        a = self.net(h)
        if self.activation == "sigmoid":
            return torch.sigmoid(a)
        if self.activation == "softmax":
            return torch.softmax(a, dim=-1)
        return a

    def forward(self, feat: Tensor, h: Tensor, gate: Optional[Tensor] = None) -> Tensor:
        """Attend a frame-level feature per Gaussian.

        Args:
            feat: ``[B, feat_dim]`` (one vector per frame).
            h: ``[N, h_dim]`` (shared by the batch) or ``[B, N, h_dim]``.
            gate: ``gate(h)`` if already computed (e.g. cached while the Gaussians do not move).
        Returns:
            ``[B, N, feat_dim]`` = ``feat[:, None, :] * gate(h)``.
        """
        if feat.dim() != 2 or feat.shape[-1] != self.feat_dim:
            raise ValueError(f"RegionAttention expects feat [B, {self.feat_dim}], got {list(feat.shape)}")
        if h.dim() not in (2, 3):
            raise ValueError(f"RegionAttention expects H [N, {self.h_dim}] or [B, N, {self.h_dim}], got "
                             f"{list(h.shape)}")
        if gate is not None and gate.shape != (*h.shape[:-1], self.feat_dim):
            raise ValueError(f"RegionAttention: gate must be {[*h.shape[:-1], self.feat_dim]}, got {list(gate.shape)}")
        g = self.gate(h) if gate is None else gate
        if g.dim() == 2:
            g = g.unsqueeze(0)
        out = feat.unsqueeze(1) * g
        assert out.shape == (feat.shape[0], h.shape[-2], self.feat_dim), out.shape
        return out


class AudioView(nn.Module):
    """Per-Gaussian audio view ``[B, N, audio_dim + eye_dim]`` (= 38 with the defaults).

    ``audio = RegionAttention_a(H) ⊙ AudioAttNet(AudioNet(windows))`` (32) and
    ``eye = RegionAttention_e(H) ⊙ E(blink)`` (6), concatenated ``[audio, eye]``.

    Eye input ``E``: with ``blink_dim = 1`` (AU45, TalkingGaussian) the scalar is repeated over the
    ``eye_dim`` channels (parameter-free; the region gates decide which Gaussians it moves); with
    ``blink_dim > 1`` (e.g. the 6 OpenFace AUs of ``FrameBatch.au``) a ``Linear(blink_dim, eye_dim)``
    maps it. ``eye_dim = 0`` disables the eye part (e.g. the inside-mouth branch) → ``[B, N, audio_dim]``.

    Args:
        in_channels: audio feature size ``C`` of the windows.
        h_dim: size of the position encoding ``H``.
        audio_dim: size of the per-frame audio code (32).
        eye_dim: size of the eye feature (6; 0 disables it).
        blink_dim: size of the eye/blink input per frame (1 = AU45, 6 = AUs).
        window: feature frames per audio window (16).
        seq_len: neighbouring windows attended over (8).
        att_hidden: hidden width of the region-attention MLPs (0 = single linear layer).
        att_activation: region-attention activation (see :class:`RegionAttention`).
    """

    def __init__(
        self,
        in_channels: int,
        h_dim: int = 64,
        audio_dim: int = 32,
        eye_dim: int = 6,
        blink_dim: int = 1,
        window: int = 16,
        seq_len: int = 8,
        att_hidden: int = 64,
        att_activation: str = "sigmoid",
    ) -> None:
        super().__init__()
        if eye_dim < 0 or blink_dim < 1:
            raise ValueError(f"AudioView: eye_dim must be >= 0 and blink_dim >= 1, got {eye_dim}, {blink_dim}")
        self.in_channels, self.h_dim = int(in_channels), int(h_dim)
        self.audio_dim, self.eye_dim, self.blink_dim = int(audio_dim), int(eye_dim), int(blink_dim)
        self.window, self.seq_len = int(window), int(seq_len)
        self.audio_net = AudioNet(in_channels, window, audio_dim)
        self.att_net = AudioAttNet(audio_dim, seq_len)
        self.audio_att = RegionAttention(h_dim, audio_dim, att_hidden, att_activation)
        if self.eye_dim > 0:
            self.eye_proj: Optional[nn.Module] = (nn.Linear(self.blink_dim, self.eye_dim)
                                                  if self.blink_dim > 1 else None)
            self.eye_att: Optional[RegionAttention] = RegionAttention(h_dim, eye_dim, min(att_hidden, 16),
                                                                      att_activation)
        else:
            self.eye_proj, self.eye_att = None, None

    @property
    def out_dim(self) -> int:
        """``audio_dim + eye_dim``."""
        return self.audio_dim + self.eye_dim

    def encode_audio(self, audio_windows: Tensor) -> Tensor:
        """Frame-level audio code ``[B, audio_dim]`` from ``[B, seq_len, window, C]`` (AudioNet on every
        window, then temporal attention) or ``[B, window, C]`` (AudioNet only, no temporal attention)."""
        a = audio_windows
        if a.dim() == 4:
            b, t = a.shape[:2]
            if t != self.seq_len:
                raise ValueError(f"AudioView: expected {self.seq_len} neighbouring windows, got audio "
                                 f"{list(a.shape)}")
            codes = self.audio_net(a.reshape(b * t, *a.shape[2:])).reshape(b, t, self.audio_dim)
            return self.att_net(codes)
        if a.dim() == 3:
            return self.audio_net(a)
        raise ValueError(f"AudioView: audio must be [B, {self.seq_len}, {self.window}, {self.in_channels}] or "
                         f"[B, {self.window}, {self.in_channels}], got {list(a.shape)}")

    def encode_eye(self, blink: Optional[Tensor], batch: int, like: Tensor) -> Tensor:
        """Frame-level eye feature ``[B, eye_dim]`` from ``blink [B, blink_dim]`` (or ``[B]`` when
        ``blink_dim = 1``); ``None`` means "eyes open" (zeros)."""
        if blink is None:
            return like.new_zeros(batch, self.eye_dim)
        if blink.dim() == 1 and self.blink_dim == 1:
            blink = blink.unsqueeze(-1)
        if blink.dim() != 2 or blink.shape != (batch, self.blink_dim):
            raise ValueError(f"AudioView: blink must be [B={batch}, {self.blink_dim}], got {list(blink.shape)}")
        blink = blink.to(like.dtype)
        if self.eye_proj is None:
            return blink.expand(batch, self.eye_dim)
        return self.eye_proj(blink)

    def gates(self, h: Tensor) -> tuple[Tensor, ...]:
        """Region-attention gates of ``H``: ``(audio gate [..., audio_dim][, eye gate [..., eye_dim]])``.
        They depend on ``H`` only, so they can be computed once while the Gaussians do not move and
        passed to :meth:`forward` (inference cache of the deformation network)."""
        g = [self.audio_att.gate(h)]
        if self.eye_dim > 0:
            assert self.eye_att is not None
            g.append(self.eye_att.gate(h))
        return tuple(g)

    def forward(self, audio_windows: Tensor, blink: Optional[Tensor], h: Tensor,
                gates: Optional[Sequence[Tensor]] = None) -> Tensor:
        """Per-Gaussian audio view.

        Args:
            audio_windows: ``[B, seq_len, window, C]`` neighbouring windows (``FrameBatch.audio_neighbours``)
                or ``[B, window, C]`` (``FrameBatch.audio``; no temporal attention).
            blink: ``[B, blink_dim]`` (``[B]`` accepted when ``blink_dim = 1``) or ``None`` (zeros).
            h: position encoding ``[N, h_dim]`` (or ``[B, N, h_dim]``).
            gates: :meth:`gates` of ``h`` if already computed (same result, skips the gate MLPs).
        Returns:
            ``[B, N, audio_dim + eye_dim]``.
        """
        a = self.encode_audio(audio_windows)  # [B, audio_dim]
        b = a.shape[0]
        if h.dim() == 3 and h.shape[0] != b:
            raise ValueError(f"AudioView: H batch {h.shape[0]} != audio batch {b}")
        if gates is not None and len(gates) != (2 if self.eye_dim > 0 else 1):
            raise ValueError(f"AudioView: expected {2 if self.eye_dim > 0 else 1} gates, got {len(gates)}")
        g = tuple(gates) if gates is not None else (None, None)
        parts = [self.audio_att(a, h, g[0])]
        if self.eye_dim > 0:
            assert self.eye_att is not None
            parts.append(self.eye_att(self.encode_eye(blink, b, a), h, g[1]))
        out = torch.cat(parts, dim=-1)
        assert out.shape == (b, h.shape[-2], self.out_dim), out.shape
        return out


__all__ = ["AudioNet", "AudioAttNet", "RegionAttention", "AudioView"]
