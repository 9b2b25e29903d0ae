"""Audio feature extractors: 16 kHz mono waveform → 50 Hz feature sequence ``[T,C]`` (DESIGN §5.3).

**Extractors.** :class:`MelExtractor` — 80 log-mel bands (natural log of power + 1e-6, HTK mel
scale 0–8 kHz, area-normalised triangles, 40 ms periodic-Hann frames, FFT 1024, hop 320).
:class:`Wav2Vec2Extractor` — any ``transformers`` wav2vec2 checkpoint (hub id or local directory;
default ``facebook/wav2vec2-base-960h``), output CTC logits (``layer="logits"``) or a hidden state
(``layer=k``; 0 = transformer input, k = output of layer k, negative counts from the end). The input
is normalised to zero mean / unit variance over the whole file when the checkpoint's
``preprocessor_config.json`` says ``do_normalize`` (default: yes); long audio runs in chunks of
``chunk_seconds`` with ``context_seconds`` of overlap on each side whose outputs are discarded,
which bounds memory. Weights are loaded with ``local_files_only=True`` — nothing is downloaded unless
``allow_download=True`` is passed explicitly (and HF_HUB_OFFLINE is not set); a missing model is a
:class:`MissingModelError` (one line) that says where it was looked for and how to provide it — or to
train on ``data.feature=mel``. The cache record of a local model directory holds a SHA-1 of its
weights. Without network access, :mod:`ua3dtalk.data.tiny_wav2vec2` saves a tiny random-initialised
model in that layout (what the synthetic experiments use: ``data.synth.wav2vec2=tiny``).

:func:`make_extractor` builds one by name; :func:`ua3dtalk.data.audio.extract_features` runs it on a
clip's ``aud.wav`` and caches the result as ``aud_<name>.npy``.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import pickle
import re
from pathlib import Path
from typing import Callable, Optional, Union

import numpy as np

from .audio import FEATURE_RATE, HOP, SAMPLE_RATE, Extractor, _sha1, sequence_length

DEFAULT_W2V_MODEL = "facebook/wav2vec2-base-960h"
EXTRACTOR_FEATURES = ("mel", "wav2vec2")
"""``feature`` values that name an extractor (computed by ``prepare_data``); any other value names a
stored file ``aud_<feature>.npy`` (``ds``, ``hu``, ``eo``, ``w2v``, ``aud``, or a cache name such as
``w2v_wav2vec2-base-960h_logits``)."""


class MissingModelError(FileNotFoundError):
    """A pretrained model is not available locally (nothing is downloaded, DESIGN §10)."""


def mel_filterbank(n_mels: int = 80, n_fft: int = 1024, sample_rate: int = SAMPLE_RATE, fmin: float = 0.0,
                   fmax: Optional[float] = None) -> np.ndarray:
    """[n_mels, n_fft//2+1] triangular filters on the HTK mel scale, each normalised to unit area
    (Slaney normalisation 2/(f_hi - f_lo))."""
    fmax = sample_rate / 2 if fmax is None else fmax

    def hz2mel(f):
        return 2595.0 * np.log10(1.0 + np.asarray(f, dtype=np.float64) / 700.0)

    def mel2hz(m):
        return 700.0 * (10.0 ** (np.asarray(m, dtype=np.float64) / 2595.0) - 1.0)

    pts = mel2hz(np.linspace(hz2mel(fmin), hz2mel(fmax), n_mels + 2))
    freqs = np.linspace(0.0, sample_rate / 2, n_fft // 2 + 1)
    lo, ce, hi = pts[:-2, None], pts[1:-1, None], pts[2:, None]
    up = (freqs[None] - lo) / (ce - lo)
    down = (hi - freqs[None]) / (hi - ce)
    fb = np.maximum(0.0, np.minimum(up, down))
    fb *= (2.0 / (hi - lo))
    return fb


class MelExtractor:
    """80-band log-mel spectrogram at 50 Hz (see the module docstring for every parameter)."""

    name = "mel"

    def __init__(self, n_mels: int = 80, n_fft: int = 1024, win_length: int = 640, fmin: float = 0.0,
                 fmax: float = 8000.0, log_offset: float = 1e-6):
        if win_length > n_fft or win_length % 2:
            raise ValueError("win_length must be even and ≤ n_fft")
        self.n_mels, self.n_fft, self.win_length = int(n_mels), int(n_fft), int(win_length)
        self.fmin, self.fmax, self.log_offset = float(fmin), float(fmax), float(log_offset)
        self.name = "mel" if (n_mels, n_fft, win_length, fmin, fmax, log_offset) == (80, 1024, 640, 0.0, 8000.0, 1e-6) \
            else f"mel{n_mels}"
        self._fb = mel_filterbank(self.n_mels, self.n_fft, SAMPLE_RATE, self.fmin, self.fmax)
        n = np.arange(self.win_length)
        self._win = 0.5 - 0.5 * np.cos(2 * np.pi * n / self.win_length)  # periodic Hann

    @property
    def dim(self) -> int:
        return self.n_mels

    def describe(self) -> dict:
        return {"type": "mel", "n_mels": self.n_mels, "n_fft": self.n_fft, "win_length": self.win_length,
                "hop": HOP, "fmin": self.fmin, "fmax": self.fmax, "log_offset": self.log_offset, "version": 1}

    def __call__(self, wav: np.ndarray, progress: Optional[Callable[[int], None]] = None) -> np.ndarray:
        x = np.asarray(wav, dtype=np.float64).reshape(-1)
        t = sequence_length(x.shape[0])
        out = np.zeros((t, self.n_mels), np.float32)
        half = self.win_length // 2
        left = half - HOP // 2  # frame t's window is centred at 320t + 160
        xp = np.zeros(HOP * max(t - 1, 0) + self.win_length, dtype=np.float64)
        xp[left:left + x.shape[0]] = x[: xp.shape[0] - left]
        step = 4096  # frames per block: bounds memory for long audio
        for s in range(0, t, step):
            e = min(t, s + step)
            idx = HOP * np.arange(s, e)[:, None] + np.arange(self.win_length)[None]
            spec = np.abs(np.fft.rfft(xp[idx] * self._win, n=self.n_fft, axis=1)) ** 2
            out[s:e] = np.log(spec @ self._fb.T + self.log_offset)
            if progress is not None:
                progress(min(x.shape[0], HOP * e) - min(x.shape[0], HOP * s))
        return out


def _looks_like_path(s: str) -> bool:
    return s.startswith(("/", ".", "~")) or "\\" in s or s.count("/") > 1 or re.match(r"^[A-Za-z]:", s) is not None


def _hf_cache_dir() -> str:
    try:
        from huggingface_hub import constants

        return str(constants.HF_HUB_CACHE)
    except Exception:  # pragma: no cover - huggingface_hub always comes with transformers
        return os.environ.get("HF_HOME", "~/.cache/huggingface") + "/hub"


def _missing_model_message(model: str, local: bool, detail: str = "", key: str = "data.feature") -> str:
    """One line (the train CLI prints user errors as one line): what was looked for where, the training
    config keys that fix it, and how to provide the weights."""
    if local:
        where = f"wav2vec2 model directory {model!r} does not exist or is not a model directory{detail}"
        get = DEFAULT_W2V_MODEL
    else:
        where = (f"wav2vec2 model {model!r} is not available locally: looked for a directory of that name and in the "
                 f"Hugging Face cache ({_hf_cache_dir()}){detail}")
        get = model
    return (f"{where}; ua3dtalk never downloads weights (DESIGN §10). Train on log-mel features with {key}=mel, "
            "or give a local directory in the `save_pretrained` layout (config.json + model.safetensors or "
            "pytorch_model.bin) as data.extractor_model=DIR (ua3dtalk-features --extractor-model PATH), or fill the "
            f"Hugging Face cache on a machine with network access: `huggingface-cli download {get}` "
            f"(or `hf download {get}`) with HF_HOME pointing at the cache used here.")


def _weights_fingerprint(directory: Path) -> Optional[str]:
    """SHA-1 of a local checkpoint's ``config.json`` and weight files (names and bytes), or None."""
    files = sorted(p for pat in ("config.json", "*.safetensors", "*.bin") for p in directory.glob(pat) if p.is_file())
    if not files:
        return None
    h = hashlib.sha1()
    for f in files:
        h.update(f.name.encode() + b"\0" + _sha1(f).encode())
    return h.hexdigest()


@contextlib.contextmanager
def _quiet_transformers():
    from transformers.utils import logging as hf_logging

    old = hf_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled() if hasattr(hf_logging, "is_progress_bar_enabled") else None
    hf_logging.set_verbosity_error()
    if bars is not None:
        hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(old)
        if bars:
            hf_logging.enable_progress_bar()


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def _conv_geometry(config) -> tuple[int, int]:
    """(hop, receptive field) in samples of the wav2vec2 convolutional feature encoder."""
    hop, rf = 1, 1
    for k, s in zip(config.conv_kernel, config.conv_stride):
        rf += (k - 1) * hop
        hop *= s
    return hop, rf


class Wav2Vec2Extractor:
    """wav2vec2 features through ``transformers`` at 50 Hz (module docstring for the details).

    Parameters
    ----------
    model : hub id (looked up in the local Hugging Face cache only) or a local ``save_pretrained``
        directory; default ``facebook/wav2vec2-base-960h``. An ``nn.Module`` (``Wav2Vec2ForCTC`` or
        ``Wav2Vec2Model``) is also accepted, with ``model_name`` naming it (benchmarks).
    layer : "logits" (CTC head, needs a fine-tuned checkpoint) or an int hidden-state index.
    device : torch device for the forward pass.
    chunk_seconds, context_seconds : audio is processed in chunks of ``chunk_seconds`` plus
        ``context_seconds`` of context on both sides (bounded memory; identical output for audio
        shorter than one chunk).
    allow_download : permit a download from the Hub (off by default; never when HF_HUB_OFFLINE=1).
    normalize : zero-mean/unit-variance input normalisation; None reads the checkpoint's
        ``preprocessor_config.json`` (``do_normalize``), defaulting to True.
    dtype : "float32" or "bfloat16" (CPU autocast; faster, ~1e-2 relative deviation).
    config_key : the training config key that asked for wav2vec2 features ("data.feature",
        "data.context_feature"), named by the missing-model message.
    """

    def __init__(self, model: Union[str, Path, "object"] = DEFAULT_W2V_MODEL, layer: Union[str, int] = "logits",
                 device: str = "cpu", chunk_seconds: float = 20.0, context_seconds: float = 1.0,
                 allow_download: bool = False, normalize: Optional[bool] = None, dtype: str = "float32",
                 model_name: Optional[str] = None, config_key: str = "data.feature"):
        import torch

        if isinstance(layer, str) and layer != "logits":
            try:
                layer = int(layer)
            except ValueError:
                raise ValueError(f"layer must be 'logits' or an integer hidden-state index, got {layer!r}") from None
        if dtype not in ("float32", "bfloat16"):
            raise ValueError(f"dtype must be 'float32' or 'bfloat16', got {dtype!r}")
        self.device = torch.device(device)
        self.dtype = dtype
        self.chunk_frames = max(1, int(round(chunk_seconds * FEATURE_RATE)))
        self.context_frames = max(0, int(round(context_seconds * FEATURE_RATE)))
        if isinstance(model, (str, Path)):
            self.model_id = str(model)
            self.model, self._normalize_cfg = self._load(str(model), layer, allow_download, config_key)
            is_dir = _looks_like_path(self.model_id) or Path(self.model_id).exists()
            base = Path(self.model_id.rstrip("/\\")).name if is_dir else self.model_id.split("/")[-1]
            # a local checkpoint is identified by its bytes too: a cache made by other weights that were in
            # the same directory is recomputed (ua3dtalk.data.tiny_wav2vec2 rewrites its directory, say)
            self.weights_sha1 = _weights_fingerprint(Path(self.model_id).expanduser()) if is_dir else None
        else:
            self.model, self._normalize_cfg = model, None
            self.model_id = model_name or type(model).__name__
            self.weights_sha1 = None
            base = model_name or type(model).__name__
        self.model.eval().to(self.device)
        cfg = self.model.config
        self.hop, self.receptive_field = _conv_geometry(cfg)
        if self.hop != HOP:
            raise ValueError(f"wav2vec2 model {self.model_id!r} has a feature stride of {self.hop} samples; "
                             f"{HOP} (50 Hz at 16 kHz) is required")
        n_hidden = int(cfg.num_hidden_layers)
        if layer == "logits":
            if not hasattr(self.model, "lm_head"):
                raise ValueError(f"wav2vec2 model {self.model_id!r} has no CTC head; choose a hidden layer "
                                 "(data.extractor_layer=K, ua3dtalk-features --extractor-layer K)")
            self.layer = "logits"
            self.dim = int(cfg.vocab_size)
        else:
            k = int(layer)
            if not -(n_hidden + 1) <= k <= n_hidden:
                raise ValueError(f"layer {k} out of range for a model with {n_hidden} transformer layers "
                                 f"(valid: {-(n_hidden + 1)}..{n_hidden} or 'logits')")
            self.layer = k % (n_hidden + 1)
            self.dim = int(cfg.hidden_size)
        self.normalize = self._normalize_cfg if normalize is None else bool(normalize)
        if self.normalize is None:
            self.normalize = True
        safe = re.sub(r"[^A-Za-z0-9.-]+", "-", base).strip("-") or "model"
        self.name = f"w2v_{safe}_{'logits' if self.layer == 'logits' else f'h{self.layer}'}"

    @staticmethod
    def _load(model: str, layer, allow_download: bool, key: str = "data.feature"):
        from transformers import Wav2Vec2ForCTC, Wav2Vec2Model

        p = Path(model).expanduser()
        local = p.exists() or _looks_like_path(model)
        if local:
            if not p.is_dir():
                raise MissingModelError(_missing_model_message(model, True, key=key))
            if not (p / "config.json").is_file():
                raise MissingModelError(_missing_model_message(model, True, " (no config.json in it)", key))
        offline = (not allow_download) or _offline()
        cls = Wav2Vec2ForCTC if layer == "logits" else Wav2Vec2Model
        try:
            with _quiet_transformers():
                m, info = cls.from_pretrained(str(p) if local else model, local_files_only=offline,
                                              output_loading_info=True)
        except (OSError, ValueError, pickle.UnpicklingError) as e:  # unpickling: refused by weights_only
            why = f" ({type(e).__name__}: {(str(e).splitlines() or [''])[0]})"
            raise MissingModelError(_missing_model_message(model, local, why, key)) from e
        missing = set(info.get("missing_keys", ()))
        if layer == "logits" and any(k.startswith("lm_head") for k in missing):
            raise ValueError(f"wav2vec2 model {model!r} has no trained CTC head (lm_head missing from the checkpoint); "
                             "use a fine-tuned checkpoint for logits or choose a hidden layer "
                             "(data.extractor_layer=K, ua3dtalk-features --extractor-layer K)")
        if any(not k.startswith("lm_head") for k in missing):
            raise ValueError(f"wav2vec2 checkpoint {model!r} lacks weights: {sorted(missing)[:5]}")
        norm = None
        try:
            from transformers import Wav2Vec2FeatureExtractor

            with _quiet_transformers():
                fe = Wav2Vec2FeatureExtractor.from_pretrained(str(p) if local else model, local_files_only=True)
            norm = bool(getattr(fe, "do_normalize", True))
        except Exception:  # no preprocessor_config.json: keep the default
            norm = None
        return m, norm

    def describe(self) -> dict:
        d = {"type": "wav2vec2", "model": self.model_id, "layer": self.layer, "normalize": self.normalize,
             "chunk_frames": self.chunk_frames, "context_frames": self.context_frames, "dtype": self.dtype,
             "version": 1}
        if self.weights_sha1 is not None:  # local directory: which weights made the cache
            d["weights_sha1"] = self.weights_sha1
        return d

    def __call__(self, wav: np.ndarray, progress: Optional[Callable[[int], None]] = None) -> np.ndarray:
        import torch

        x = np.asarray(wav, dtype=np.float32).reshape(-1)
        n = x.shape[0]
        t = sequence_length(n)
        if t == 0:
            return np.zeros((0, self.dim), np.float32)
        if self.normalize:
            x = (x - x.mean()) / np.sqrt(x.var() + 1e-7)
        left = (self.receptive_field - self.hop) // 2
        total = self.hop * (t - 1) + self.receptive_field
        xp = np.zeros(total, np.float32)
        xp[left:left + n] = x[: total - left]
        out = np.empty((t, self.dim), np.float32)
        xt = torch.from_numpy(xp)
        for a in range(0, t, self.chunk_frames):
            b = min(t, a + self.chunk_frames)
            s, e = max(0, a - self.context_frames), min(t, b + self.context_frames)
            seg = xt[self.hop * s: self.hop * (e - 1) + self.receptive_field][None].to(self.device)
            with torch.inference_mode(), torch.autocast(self.device.type, dtype=torch.bfloat16,
                                                        enabled=self.dtype == "bfloat16"):
                if self.layer == "logits":
                    y = self.model(seg).logits[0]
                else:
                    y = self.model(seg, output_hidden_states=True).hidden_states[self.layer][0]
            if y.shape[0] != e - s:  # pragma: no cover - guards a transformers change
                raise RuntimeError(f"wav2vec2 produced {y.shape[0]} frames for {e - s} expected")
            out[a:b] = y[a - s: b - s].float().cpu().numpy()
            if progress is not None:
                progress(min(n, self.hop * b) - min(n, self.hop * a))
        return out


def make_extractor(kind: str, model: Optional[str] = None, layer: Union[str, int, None] = None, **kw) -> Extractor:
    """``kind`` "mel" or "wav2vec2" (alias "w2v") → an extractor; ``model``/``layer``/``kw`` go to
    :class:`Wav2Vec2Extractor`."""
    if kind == "mel":
        if model is not None or layer is not None:
            raise ValueError("the mel extractor takes no model or layer")
        return MelExtractor()
    if kind in ("wav2vec2", "w2v"):
        return Wav2Vec2Extractor(model or DEFAULT_W2V_MODEL, "logits" if layer is None else layer, **kw)
    raise ValueError(f"unknown extractor {kind!r}; choose 'wav2vec2' or 'mel'")
