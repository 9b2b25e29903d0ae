"""Emotion distillation (DESIGN §4): the loss, teachers loaded by path, and the teacher/student pair.

Two kinds of teacher:

(a) **self-distillation (default)** — the full three-branch :class:`~.encoder.EmotionEncoder` (log-mel
    CNN + MFCC BiLSTM + wav2vec2) is trained on the emotion labels and distilled, at the same time,
    into the wav2vec2-only student used at inference (:class:`EmotionDistillation` with
    ``teacher_path=None``);
(b) **a pretrained speech-emotion model given by path** (e.g. a CA-MSER-style 128-d encoder), loaded by
    :func:`load_teacher` and frozen.

Teacher files (:func:`load_teacher`):

* **config + state dict** — a JSON file (or a directory holding ``teacher.json``)::

      {"format": "ua3dtalk-emotion-teacher", "version": 1,
       "arch": "EmotionEncoder",              # the only architecture built from a config
       "kwargs": {...},                       # EmotionEncoder(**kwargs), see EmotionEncoder.config
       "input": "waveform" | "w2v" | "both",  # what the teacher is fed (default: from the branches)
       "weights": "teacher.safetensors"}      # relative to the JSON file; .safetensors or a torch.save
                                              # state dict (read with weights_only=True)

  written by :func:`save_teacher`;
* **an exported program** (``*.pt2``, ``torch.export.save``) or **TorchScript** (any other file,
  ``torch.jit.load``) — a module whose ``forward`` takes ``waveform [B,S]`` (16 kHz), ``w2v [B,T,C]``
  or both (in that order) and returns ``(logits [B,n_emotions], embedding [B,dim])``. Which input it
  takes is read from an extra file ``teacher.json`` in the archive (``{"input": "w2v"}``; default
  ``"waveform"``), e.g. ``torch.export.save(ep, path, extra_files={"teacher.json": '{"input":
  "w2v"}'})`` (export with dynamic batch/time dimensions, in eval mode) or ``torch.jit.save(m, path,
  _extra_files={...})``. This is how an arbitrary external architecture (e.g. CA-MSER) is used as a
  teacher. TorchScript archives contain code: load only files you trust (TorchScript is deprecated
  in recent PyTorch; prefer ``.pt2``).

The teacher's logits must be over the 8 :data:`~ua3dtalk.models.emotion.EMOTIONS` in that order, and
its embedding must have the student's size (128), otherwise :class:`DistillationLoss` raises.
"""
from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import nn

from ..prior.checks import expect
from ..prior.io import WeightsError, load_checked, read_state_dict, write_state_dict
from .encoder import BRANCHES, EmotionEncoder, EmotionOutput

__all__ = ["DistillationLoss", "EmotionTeacher", "load_teacher", "save_teacher", "EmotionDistillation",
           "TEACHER_FORMAT"]

TEACHER_FORMAT = "ua3dtalk-emotion-teacher"
TEACHER_CONFIG = "teacher.json"
INPUT_KINDS = ("waveform", "w2v", "both")
TeacherLike = Union[EmotionOutput, Sequence[torch.Tensor]]


def _zero(t: torch.Tensor) -> torch.Tensor:
    """A scalar 0 connected to ``t``'s graph (so ``backward`` works), never ``-0.0``."""
    return t.new_zeros(()) + t.sum() * 0.0


def _masked_ce(logits: torch.Tensor, target: Optional[torch.Tensor], label_smoothing: float = 0.0) -> torch.Tensor:
    """Cross-entropy over the rows with ``target ≥ 0`` (0, with a graph, when there are none)."""
    if target is None:
        return _zero(logits)
    if target.shape != logits.shape[:1] or target.is_floating_point():
        raise ValueError(f"labels: expected an integer tensor [{logits.shape[0]}], got {target.dtype} "
                         f"{list(target.shape)}")
    mask = target >= 0
    if not bool(mask.any()):
        return _zero(logits)
    if bool((target[mask] >= logits.shape[-1]).any()):
        raise ValueError(f"labels must be < {logits.shape[-1]} (or -1 for unknown), got max {int(target.max())}")
    return F.cross_entropy(logits[mask], target[mask].long(), label_smoothing=label_smoothing)


class DistillationLoss(nn.Module):
    """Label cross-entropy + teacher→student knowledge distillation.

    Terms (``dict`` keys of :meth:`forward`):

    * ``ce`` — cross-entropy of the student's emotion logits against ``labels`` (-1 = unknown, ignored);
    * ``ce_intensity`` — cross-entropy of the intensity logits against ``levels`` (1..3; 0 = unknown);
    * ``ce_branches`` — mean cross-entropy of every branch's own logits (multi-branch models only; it
      keeps all branches learning, see :mod:`~.encoder`);
    * ``kl`` — ``T² · KL(softmax(t/T) ‖ softmax(s/T))`` (Hinton et al.; the T² keeps gradient scales
      independent of T), batch mean;
    * ``feature`` — embedding distillation ``1 − cos(e_s, e_t)`` (``feature="cosine"``) or MSE;
    * ``total`` — ``(1−α)·(ce + intensity_weight·ce_intensity) + aux_weight·ce_branches + α·kl +
      feature_weight·feature`` with a teacher; ``ce + intensity_weight·ce_intensity +
      aux_weight·ce_branches`` without one.

    The teacher's outputs are detached: no gradient reaches the teacher through this loss.

    Args:
        temperature: softening temperature T of the KL term.
        alpha: weight α of the KL term against the label terms.
        feature_weight: weight of the embedding distillation term.
        feature: ``"cosine"`` or ``"mse"``.
        intensity_weight: weight of the intensity cross-entropy.
        aux_weight: weight of the per-branch cross-entropy.
        label_smoothing: label smoothing of the cross-entropies.
    """

    def __init__(self, temperature: float = 2.0, alpha: float = 0.5, feature_weight: float = 1.0,
                 feature: str = "cosine", intensity_weight: float = 0.5, aux_weight: float = 0.5,
                 label_smoothing: float = 0.0):
        super().__init__()
        if temperature <= 0 or not 0 <= alpha <= 1:
            raise ValueError("need temperature > 0 and 0 ≤ alpha ≤ 1")
        if feature not in ("cosine", "mse"):
            raise ValueError(f"feature must be 'cosine' or 'mse', got {feature!r}")
        self.temperature, self.alpha, self.feature_weight = float(temperature), float(alpha), float(feature_weight)
        self.feature, self.intensity_weight = feature, float(intensity_weight)
        self.aux_weight, self.label_smoothing = float(aux_weight), float(label_smoothing)

    def kl(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
        """``T²·KL(p_teacher ‖ p_student)`` at temperature T, mean over the batch."""
        d = expect(student_logits, "student logits", ("B", "K"))
        expect(teacher_logits, "teacher logits", ("B", "K"), d)
        t = self.temperature
        return F.kl_div(F.log_softmax(student_logits / t, -1), F.log_softmax(teacher_logits.detach() / t, -1),
                        log_target=True, reduction="batchmean") * t * t

    def forward(self, student: EmotionOutput, labels: Optional[torch.Tensor] = None,
                levels: Optional[torch.Tensor] = None, teacher: Optional[TeacherLike] = None) -> dict:
        """``student`` output, ``labels`` [B] (class ids, -1 unknown), ``levels`` [B] (1..3, 0 unknown),
        ``teacher`` (an :class:`EmotionOutput` or a ``(logits [B,8], embedding [B,dim])`` pair) →
        dict of scalar losses (see the class docstring)."""
        s_logits = student.logits
        b = s_logits.shape[0]
        ls = self.label_smoothing
        ce = _masked_ce(s_logits, labels, ls)
        lv = None if levels is None else levels.long() - 1  # 1..3 → 0..2, unknown 0 → -1
        ce_int = _masked_ce(student.intensity_logits, lv, ls)
        nb = student.branch_logits.shape[1]
        if nb > 1 and labels is not None:
            ce_br = torch.stack([_masked_ce(student.branch_logits[:, i], labels, ls) for i in range(nb)]).mean()
        else:
            ce_br = _zero(s_logits)
        label_terms = ce + self.intensity_weight * ce_int
        out = {"ce": ce, "ce_intensity": ce_int, "ce_branches": ce_br}
        if teacher is None:
            out["total"] = label_terms + self.aux_weight * ce_br
            return out
        t_logits, t_emb = (teacher.logits, teacher.embedding) if isinstance(teacher, EmotionOutput) else teacher
        if t_logits.shape != s_logits.shape:
            raise ValueError(f"teacher logits {list(t_logits.shape)} do not match the student's "
                             f"{list(s_logits.shape)} (the teacher must predict the same {s_logits.shape[1]} "
                             "emotions in the same order)")
        if t_emb.shape != student.embedding.shape:
            raise ValueError(f"teacher embedding {list(t_emb.shape)} does not match the student's "
                             f"{list(student.embedding.shape)} (B={b})")
        kl = self.kl(s_logits, t_logits)
        t_emb = t_emb.detach()
        if self.feature == "cosine":
            feat = (1.0 - F.cosine_similarity(student.embedding, t_emb, dim=-1)).mean()
        else:
            feat = F.mse_loss(student.embedding, t_emb)
        out.update(kl=kl, feature=feat)
        out["total"] = ((1 - self.alpha) * label_terms + self.aux_weight * ce_br + self.alpha * kl
                        + self.feature_weight * feat)
        return out


# --------------------------------------------------------------------------------------------------
# teachers by path
# --------------------------------------------------------------------------------------------------


class EmotionTeacher(nn.Module):
    """A frozen teacher: ``forward(waveform=None, w2v=None) → (logits [B,K], embedding [B,D])``.

    Wraps an :class:`EmotionEncoder` or a TorchScript module; always in eval mode, no trainable
    parameters (``train()`` does not change that).

    Args:
        model: the wrapped module.
        input: what it is fed: ``"waveform"``, ``"w2v"`` or ``"both"``.
        source: where it was loaded from (for messages).
    """

    def __init__(self, model: nn.Module, input: str = "waveform", source: str = ""):
        super().__init__()
        if input not in INPUT_KINDS:
            raise ValueError(f"teacher input must be one of {INPUT_KINDS}, got {input!r}")
        self.model, self.input, self.source = model, input, source
        for p in self.model.parameters():
            p.requires_grad_(False)
        try:
            self.model.eval()
        except (NotImplementedError, RuntimeError):  # exported programs keep the mode they were exported in
            pass

    def train(self, mode: bool = True):
        """Only this wrapper's flag changes: the teacher itself stays in eval mode (BatchNorm statistics
        and dropout frozen)."""
        self.training = mode
        return self

    @torch.no_grad()
    def forward(self, waveform: Optional[torch.Tensor] = None,
                w2v: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, torch.Tensor]:
        need_w = self.input in ("waveform", "both")
        need_f = self.input in ("w2v", "both")
        if (need_w and waveform is None) or (need_f and w2v is None):
            raise ValueError(f"teacher {self.source!r} takes {self.input!r} input")
        if isinstance(self.model, EmotionEncoder):
            out = self.model(waveform=waveform if need_w else None, w2v=w2v if need_f else None)
            logits, emb = out.logits, out.embedding
        else:
            args = {"waveform": (waveform,), "w2v": (w2v,), "both": (waveform, w2v)}[self.input]
            res = self.model(*args)
            if not isinstance(res, (tuple, list)) or len(res) != 2:
                raise ValueError(f"teacher {self.source!r} must return (logits, embedding), got {type(res).__name__}")
            logits, emb = res
        ref = waveform if waveform is not None else w2v
        d = expect(logits, f"teacher {self.source!r} logits", (ref.shape[0], None))
        expect(emb, f"teacher {self.source!r} embedding", (ref.shape[0], None), d)
        return logits, emb


def _default_input(branches) -> str:
    wav = any(b in ("mel", "mfcc") for b in branches)
    return "both" if wav and "w2v" in branches else ("w2v" if "w2v" in branches else "waveform")


def save_teacher(encoder: EmotionEncoder, path: Union[str, Path], weights_suffix: str = ".safetensors") -> Path:
    """Write ``encoder`` as a teacher: ``path`` is the config JSON (or a directory, which gets
    ``teacher.json``); the weights go next to it (``<stem><weights_suffix>``). Returns the JSON path."""
    p = Path(path)
    if p.suffix != ".json":
        p = p / TEACHER_CONFIG
    p.parent.mkdir(parents=True, exist_ok=True)
    weights = p.with_suffix(weights_suffix)
    write_state_dict(encoder.state_dict(), weights)
    cfg = {"format": TEACHER_FORMAT, "version": 1, "arch": "EmotionEncoder", "kwargs": encoder.config,
           "input": _default_input(encoder.branches), "weights": weights.name}
    tmp = p.with_name(p.name + ".tmp")
    tmp.write_text(json.dumps(cfg, indent=2))
    tmp.replace(p)
    return p


def load_teacher(path: Union[str, Path]) -> EmotionTeacher:
    """Load a frozen teacher from ``path`` (config JSON / directory, ``.pt2`` exported program, or
    TorchScript; see the module docstring).

    Raises:
        FileNotFoundError: ``path`` (or the weights file the config names) does not exist.
        WeightsError: not a valid config / TorchScript archive, or the weights do not fit the
            architecture (the message lists the mismatched keys).
    """
    p = Path(path).expanduser()
    if p.is_dir():
        p = p / TEACHER_CONFIG
    if not p.is_file():
        raise FileNotFoundError(f"emotion teacher {str(p)!r} not found (a teacher config JSON written by "
                                "ua3dtalk.models.emotion.save_teacher, a torch.export .pt2 file or a TorchScript "
                                "archive; train one with `ua3dtalk-teacher --data <emotional dataset> --out <dir>`)")
    if p.suffix == ".json":
        return _load_config_teacher(p)
    extra = {TEACHER_CONFIG: ""}
    try:
        with warnings.catch_warnings():  # torch.jit / torch.export emit deprecation / beta notices
            warnings.simplefilter("ignore", FutureWarning)
            warnings.simplefilter("ignore", UserWarning)
            if p.suffix == ".pt2":
                model = torch.export.load(str(p), extra_files=extra).module()
            else:
                model = torch.jit.load(str(p), map_location="cpu", _extra_files=extra)
    except Exception as e:  # noqa: BLE001
        kind = "an exported program (.pt2)" if p.suffix == ".pt2" else "a TorchScript archive"
        raise WeightsError(f"emotion teacher {str(p)!r} is not {kind} (nor a teacher config .json): "
                           f"{type(e).__name__}: {e}") from e
    meta = {}
    if extra[TEACHER_CONFIG]:
        try:
            meta = json.loads(extra[TEACHER_CONFIG])
        except json.JSONDecodeError as e:
            raise WeightsError(f"emotion teacher {str(p)!r}: invalid {TEACHER_CONFIG} inside the archive: {e}") from e
    kind = meta.get("input", "waveform")
    if kind not in INPUT_KINDS:
        raise WeightsError(f"emotion teacher {str(p)!r}: 'input' must be one of {INPUT_KINDS}, got {kind!r}")
    return EmotionTeacher(model, kind, str(p))


def _load_config_teacher(p: Path) -> EmotionTeacher:
    try:
        cfg = json.loads(p.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise WeightsError(f"emotion teacher config {str(p)!r} is not valid JSON: {e}") from e
    if not isinstance(cfg, dict) or cfg.get("format") != TEACHER_FORMAT:
        raise WeightsError(f"emotion teacher config {str(p)!r}: expected \"format\": \"{TEACHER_FORMAT}\"")
    if cfg.get("arch", "EmotionEncoder") != "EmotionEncoder":
        raise WeightsError(f"emotion teacher config {str(p)!r}: unknown arch {cfg.get('arch')!r} (only "
                           "'EmotionEncoder' is built from a config; export other models as TorchScript)")
    kwargs = cfg.get("kwargs", {})
    try:
        model = EmotionEncoder(**kwargs)
    except (TypeError, ValueError) as e:
        raise WeightsError(f"emotion teacher config {str(p)!r}: invalid kwargs {kwargs}: {e}") from e
    if "weights" not in cfg:
        raise WeightsError(f"emotion teacher config {str(p)!r} does not name its 'weights' file")
    wpath = (p.parent / cfg["weights"]).resolve()
    state = read_state_dict(wpath, origin=f"named by the teacher config {str(p)!r}")
    load_checked(model, state, wpath, "the teacher EmotionEncoder")
    kind = cfg.get("input", _default_input(model.branches))
    if kind not in INPUT_KINDS:
        raise WeightsError(f"emotion teacher config {str(p)!r}: 'input' must be one of {INPUT_KINDS}, got {kind!r}")
    return EmotionTeacher(model, kind, str(p))


# --------------------------------------------------------------------------------------------------
# teacher + student
# --------------------------------------------------------------------------------------------------


class EmotionDistillation(nn.Module):
    """The teacher/student pair of the emotion stage.

    * ``teacher_path=None`` (default, self-distillation): ``teacher`` is a trainable
      ``EmotionEncoder(branches=teacher_branches)``, trained with the label losses, and distilled into
      ``student`` in the same step;
    * ``teacher_path=PATH``: ``teacher`` is :func:`load_teacher` (PATH), frozen.

    ``student`` = ``EmotionEncoder(w2v_channels, branches=("w2v",))`` — the encoder used at inference
    (:attr:`encoder`).

    Args:
        w2v_channels: channels of the wav2vec2 features.
        dim, n_emotions, n_levels: as :class:`EmotionEncoder`.
        teacher_path: optional pretrained teacher (see :func:`load_teacher`).
        teacher_branches: branches of the self-distillation teacher.
        temperature, alpha, feature_weight, feature, intensity_weight, aux_weight: of
            :class:`DistillationLoss`.
    """

    def __init__(self, w2v_channels: int, dim: int = 128, n_emotions: int = 8, n_levels: int = 3,
                 teacher_path: Optional[str] = None, teacher_branches: Sequence[str] = BRANCHES,
                 temperature: float = 2.0, alpha: float = 0.5, feature_weight: float = 1.0, feature: str = "cosine",
                 intensity_weight: float = 0.5, aux_weight: float = 0.5):
        super().__init__()
        self.student = EmotionEncoder(w2v_channels, dim, ("w2v",), n_emotions, n_levels)
        if teacher_path:
            self.teacher: nn.Module = load_teacher(teacher_path)
            self.self_distillation = False
        else:
            self.teacher = EmotionEncoder(w2v_channels, dim, teacher_branches, n_emotions, n_levels)
            self.self_distillation = True
        self.loss = DistillationLoss(temperature, alpha, feature_weight, feature, intensity_weight, aux_weight)
        self.teacher_loss = DistillationLoss(temperature, alpha, feature_weight, feature, intensity_weight,
                                             aux_weight)

    @property
    def encoder(self) -> EmotionEncoder:
        """The wav2vec2-only student (inference encoder)."""
        return self.student

    def forward(self, waveform: Optional[torch.Tensor] = None,
                w2v: Optional[torch.Tensor] = None) -> tuple[TeacherLike, EmotionOutput]:
        """→ (teacher output: :class:`EmotionOutput` or ``(logits, embedding)``, student output)."""
        return self.teacher(waveform=waveform, w2v=w2v), self.student(w2v=w2v)

    def losses(self, teacher_out: TeacherLike, student_out: EmotionOutput, labels: Optional[torch.Tensor] = None,
               levels: Optional[torch.Tensor] = None) -> dict:
        """``student/*`` terms of :class:`DistillationLoss` (with the teacher), ``teacher/*`` label terms
        when self-distilling, and ``total`` = student total (+ teacher total)."""
        st = self.loss(student_out, labels, levels, teacher_out)
        out = {f"student/{k}": v for k, v in st.items()}
        total = st["total"]
        if self.self_distillation:
            te = self.teacher_loss(teacher_out, labels, levels)
            out.update({f"teacher/{k}": v for k, v in te.items()})
            total = total + te["total"]
        out["total"] = total
        return out
