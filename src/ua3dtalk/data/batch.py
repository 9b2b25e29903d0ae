"""The typed batches the datasets yield (DESIGN §2): :class:`FrameBatch` (rendering stages),
:class:`AudioBatch` (``prior`` / ``emotion`` stages, no images) and :class:`PredictBatch` (inference),
and their collate functions (:func:`collate`, :func:`collate_audio`, :func:`collate_predict`,
:func:`collate_batches`).

:class:`FrameBatch` layout decisions (all tensors share the batch size ``B``):


=================  ==================  =========  ===================================================
field              shape               dtype      meaning
=================  ==================  =========  ===================================================
image              [B,3,H,W]           float32    frame in [0,1], channels first (torch/torchmetrics/
                                                  LPIPS layout; the renderer's [H,W,3] output is
                                                  ``out.image.permute(2,0,1)``)
face_mask          [B,1,H,W]           bool       parsing "face" (minus teeth when a TalkingGaussian
                                                  ``teeth_mask/`` is present)
mouth_mask         [B,1,H,W]           bool       parsing "inside-mouth" (plus teeth)
hair_mask          [B,1,H,W]           bool       parsing "hair"
torso_mask         [B,1,H,W]           bool       parsing "torso" ∪ "neck" (what the torso branch of
                                                  ER-NeRF/TalkingGaussian renders)
background         [B,3,H,W]           float32    background the head is composited over, in [0,1]
viewmat            [B,4,4]             float32    world→camera, OpenCV axes (x right, y down, z forward)
K                  [B,3,3]             float32    intrinsics [[fx,0,cx],[0,fy,cy],[0,0,1]], pixel
                                                  (r,c) centred at (c+0.5, r+0.5) (DESIGN §7)
audio              [B,16,C]            float32    audio window of the frame (DESIGN §5.3)
audio_neighbours   [B,8,16,C] | None   float32    windows of frames i-4 … i+3 (zeros outside the clip)
                                                  for the temporal attention of TalkingGaussian
audio_context      [B,50,C'] | None    float32    per-frame features of frames i-25 … i+24 (≈2 s): each
                                                  the mean of its window's rows 8:10, the clip's first /
                                                  last frame repeated beyond its ends — the style
                                                  encoder's input (``ua3dtalk.models.prior.module.
                                                  audio_context``; computed by
                                                  :func:`ua3dtalk.data.features.audio_context_np`)
                                                  and the emotion encoder's; C' = C unless the
                                                  DataModule has a ``context_feature``
blink              [B]                 float32    eye closure in [0,1] (OpenFace AU45_r clipped to
                                                  [0,2] / 2); 0 when the dataset has no ``au.csv``
expr               [B,K] | None        float32    per-frame expression coefficients (``expr.npy``)
emotion            [B]                 int64      index into :data:`ua3dtalk.constants.EMOTIONS`,
                                                  -1 when unknown
intensity          [B]                 int64      emotion intensity 1..3, 0 when unknown
frame_index        [B]                 int64      the dataset's frame number (``img_id``); indexes the
                                                  clip's per-frame arrays (au.csv, expr.npy, features)
clip_id            list[str] (len B)   -          which clip the frame comes from
au                 [B,6] | None        float32    OpenFace AU01,04,05,06,07,45 intensities (AU45
                                                  clipped to [0,2]) — TalkingGaussian's eye input
landmarks          [B,68,2] | None     float32    68 landmarks (x = column, y = row, pixels)
=================  ==================  =========  ===================================================

Datasets return single frames as ``FrameBatch`` with ``B = 1``; :func:`collate` concatenates any
number of batches along the batch dimension (use it as the DataLoader's ``collate_fn``). Optional
fields must be either present in every element or absent in every element. The fields of
:class:`AudioBatch` and :class:`PredictBatch` are tabulated in their docstrings.
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Optional, Sequence

import torch

Tensor = torch.Tensor

# (name, trailing shape after B — None for "any size", expected dtype kind)
_SPEC: dict[str, tuple[tuple, str]] = {
    "image": ((3, "H", "W"), "float"),
    "face_mask": ((1, "H", "W"), "bool"),
    "mouth_mask": ((1, "H", "W"), "bool"),
    "hair_mask": ((1, "H", "W"), "bool"),
    "torso_mask": ((1, "H", "W"), "bool"),
    "background": ((3, "H", "W"), "float"),
    "viewmat": ((4, 4), "float"),
    "K": ((3, 3), "float"),
    "audio": ((16, "C"), "float"),
    "blink": ((), "float"),
    "emotion": ((), "long"),
    "intensity": ((), "long"),
    "frame_index": ((), "long"),
    "audio_neighbours": ((None, 16, "C"), "float"),
    "audio_context": ((None, "Cc"), "float"),  # own channel count: the DataModule's context_feature
    "expr": ((None,), "float"),
    "au": ((6,), "float"),
    "landmarks": ((68, 2), "float"),
}
OPTIONAL_FIELDS = ("audio_neighbours", "audio_context", "expr", "au", "landmarks")


_DTYPE_OK = {
    "float": lambda t: t.is_floating_point(),
    "bool": lambda t: t.dtype == torch.bool,
    "long": lambda t: t.dtype == torch.int64,
}
_DTYPES = {"float": "floating point", "long": "int64"}
"""How a wrong dtype is named in the errors of :class:`AudioBatch` / :class:`PredictBatch`."""
_FRAME_DTYPES = {"float": "float (float)", "bool": "bool (bool)", "long": "long (int64)"}
"""How a wrong dtype is named in the errors of :class:`FrameBatch`."""


def _check_batch(obj, spec: dict, optional: Sequence[str], b: int, what: str, b_note: str = "",
                 dtypes: dict = _DTYPES) -> None:
    """Check the tensor fields of a batch dataclass against ``spec`` ({name: (trailing shape after B,
    dtype kind)}; ``None`` in a shape = any size, a letter = the same size in every field); raise
    ``ValueError`` naming the field. ``b_note`` follows ``B=<b>`` in the shape error, ``dtypes`` names
    the dtype kinds in the dtype error."""
    sizes: dict[str, int] = {}
    for name, (trail, kind) in spec.items():
        t = getattr(obj, name)
        if t is None:
            if name in optional:
                continue
            raise ValueError(f"{what}: `{name}` is required")
        if not isinstance(t, torch.Tensor):
            raise ValueError(f"{what}: `{name}` must be a torch.Tensor, got {type(t).__name__}")
        want = "[B," + ",".join("*" if s is None else str(s) for s in trail) + "]" if trail else "[B]"
        if t.dim() != 1 + len(trail) or t.shape[0] != b:
            raise ValueError(f"{what}: `{name}` must have shape {want} with B={b}{b_note}, got {list(t.shape)}")
        for s, d in zip(trail, t.shape[1:]):
            if isinstance(s, int) and s != d:
                raise ValueError(f"{what}: `{name}` must have shape {want}, got {list(t.shape)}")
            if isinstance(s, str) and sizes.setdefault(s, d) != d:
                raise ValueError(f"{what}: `{name}` has {s}={d}, other fields have {s}={sizes[s]}")
        if not _DTYPE_OK[kind](t):
            raise ValueError(f"{what}: `{name}` must be {dtypes[kind]}, got {t.dtype}")


class _BatchOps:
    """``to`` / ``pin_memory`` / ``len`` / indexing for the batch dataclasses (list fields are copied)."""

    _LIST_FIELDS: tuple[str, ...] = ()

    def tensor_fields(self) -> dict[str, Tensor]:
        """All tensor fields that are present (optional ``None`` fields left out)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if isinstance(getattr(self, f.name), torch.Tensor)}

    def _map(self, fn, lists: Optional[dict] = None):
        kw = {f.name: getattr(self, f.name) for f in fields(self)}
        for k, v in self.tensor_fields().items():
            kw[k] = fn(v)
        for k in self._LIST_FIELDS:
            kw[k] = list(kw[k]) if lists is None else lists[k]
        return type(self)(**kw)

    def to(self, device, non_blocking: bool = False):
        """A copy with every tensor moved to ``device`` (dtypes unchanged)."""
        return self._map(lambda t: t.to(device, non_blocking=non_blocking))

    def pin_memory(self):
        """Used by ``DataLoader(pin_memory=True)``."""
        return self._map(lambda t: t.pin_memory())

    def __getitem__(self, idx):
        """Select along the batch dimension (an int keeps B=1, a slice, or an index tensor/list)."""
        n = len(self)
        if isinstance(idx, int):
            if not -n <= idx < n:
                raise IndexError(f"{type(self).__name__} index {idx} out of range for batch size {n}")
            sel = [idx % n]
        elif isinstance(idx, slice):
            sel = list(range(n))[idx]
        else:
            sel = [int(i) % n for i in torch.as_tensor(idx).reshape(-1).tolist()]
        index = torch.as_tensor(sel, dtype=torch.long)
        lists = {k: [getattr(self, k)[i] for i in sel] for k in self._LIST_FIELDS}
        return self._map(lambda t: t.index_select(0, index.to(t.device)), lists)


class _ClipBatch(_BatchOps):
    """A batch dataclass with a ``clip_id`` list, one clip name per item (``B = len(clip_id)``)."""

    _LIST_FIELDS = ("clip_id",)

    def _check_clips(self, what: str, spec: dict, optional: Sequence[str], b_note: str = "",
                     dtypes: dict = _DTYPES) -> None:
        """Check that ``clip_id`` is a list of str, then the tensor fields against ``spec`` with
        ``B = len(clip_id)`` (:func:`_check_batch`)."""
        if not isinstance(self.clip_id, list) or not all(isinstance(c, str) for c in self.clip_id):
            raise ValueError(f"{what}: `clip_id` must be a list of str, got {self.clip_id!r}")
        _check_batch(self, spec, optional, len(self.clip_id), what, b_note, dtypes)

    def __len__(self) -> int:
        return len(self.clip_id)


class _ImageSize:
    """``height`` / ``width`` of the batch dataclasses with images: the last two sizes of the
    ``[B,3,H,W]`` field named by ``_SIZE_FIELD``."""

    _SIZE_FIELD = "image"

    @property
    def height(self) -> int:
        return int(getattr(self, self._SIZE_FIELD).shape[-2])

    @property
    def width(self) -> int:
        return int(getattr(self, self._SIZE_FIELD).shape[-1])


@dataclass
class FrameBatch(_ClipBatch, _ImageSize):
    """A batch of video frames with everything the model and the losses need (see the module
    docstring for the shapes). Construction checks shapes and dtypes and raises ``ValueError``
    naming the field."""

    image: Tensor
    face_mask: Tensor
    mouth_mask: Tensor
    hair_mask: Tensor
    torso_mask: Tensor
    background: Tensor
    viewmat: Tensor
    K: Tensor
    audio: Tensor
    blink: Tensor
    emotion: Tensor
    intensity: Tensor
    frame_index: Tensor
    clip_id: list[str]
    audio_neighbours: Optional[Tensor] = None
    expr: Optional[Tensor] = None
    au: Optional[Tensor] = None
    landmarks: Optional[Tensor] = None
    audio_context: Optional[Tensor] = None

    def __post_init__(self) -> None:
        self._check_clips("FrameBatch", _SPEC, OPTIONAL_FIELDS, " (len(clip_id))", _FRAME_DTYPES)

    # ------------------------------------------------------------------ conveniences
    @property
    def head_mask(self) -> Tensor:
        """face ∪ mouth ∪ hair, [B,1,H,W] bool (the region the head Gaussians must explain)."""
        return self.face_mask | self.mouth_mask | self.hair_mask

    def __getitem__(self, idx) -> "FrameBatch":
        """Select along the batch dimension: ``batch[i]`` (kept as B=1), ``batch[a:b]``, or an index tensor
        (an index out of range raises ``IndexError`` here, where :class:`_BatchOps` wraps it)."""
        ids = list(range(len(self)))
        if isinstance(idx, int):
            if not -len(self) <= idx < len(self):
                raise IndexError(f"FrameBatch index {idx} out of range for batch size {len(self)}")
            idx = [idx % len(self)]
        if isinstance(idx, slice):
            sel = ids[idx]
        else:
            sel = [int(i) for i in torch.as_tensor(idx).reshape(-1).tolist()]
            sel = [ids[i] for i in sel]
        index = torch.as_tensor(sel, dtype=torch.long)
        return self._map(lambda t: t.index_select(0, index.to(t.device)), {"clip_id": [self.clip_id[i] for i in sel]})


def collate_dataclass(cls, batches: Sequence, list_fields: Sequence[str] = ()):
    """Concatenate batch dataclasses of type ``cls`` (each with any B ≥ 1) along dimension 0.

    Tensor fields are concatenated, ``list_fields`` (e.g. ``clip_id``) joined, optional fields must be
    set in all elements or in none. Raises ``ValueError`` naming the field for mixed optional fields or
    disagreeing per-item shapes, and for an empty list or an element of another type."""
    batches = list(batches)
    if not batches:
        raise ValueError(f"collate: empty list of {cls.__name__}")
    for i, b in enumerate(batches):
        if not isinstance(b, cls):
            raise ValueError(f"collate: element {i} is a {type(b).__name__}, expected {cls.__name__}")
    if len(batches) == 1:
        return batches[0]
    kw: dict = {}
    for f in fields(cls):
        vals = [getattr(b, f.name) for b in batches]
        if f.name in list_fields:
            kw[f.name] = [x for v in vals for x in v]
            continue
        present = [v is not None for v in vals]
        if not any(present):
            kw[f.name] = None
            continue
        if not all(present):
            raise ValueError(f"collate: optional field `{f.name}` is set in some elements and None in others")
        try:
            kw[f.name] = torch.cat(vals, 0)
        except RuntimeError as e:
            shapes = sorted({tuple(v.shape[1:]) for v in vals})
            raise ValueError(f"collate: cannot concatenate `{f.name}` with per-item shapes {shapes}: {e}") from None
    return cls(**kw)


def collate(batches: Sequence[FrameBatch]) -> FrameBatch:
    """Concatenate ``FrameBatch`` objects (each with any B ≥ 1) along the batch dimension.

    Use as ``DataLoader(dataset, collate_fn=collate)`` for datasets whose ``__getitem__`` returns a
    ``FrameBatch`` with B=1. Raises ``ValueError`` when an optional field is present in some
    elements and missing in others, or when shapes disagree (e.g. different image sizes or audio
    feature widths), naming the field.
    """
    return collate_dataclass(FrameBatch, batches, ("clip_id",))


# --------------------------------------------------------------------------------------------------
# AudioBatch, PredictBatch
# --------------------------------------------------------------------------------------------------


_AUDIO_SPEC: dict[str, tuple[tuple, str]] = {
    "audio": ((16, "C"), "float"),
    "context": ((None, "Cc"), "float"),  # Cc = C unless the DataModule has a context_feature
    "waveform": ((None,), "float"),
    "expr": ((None,), "float"),
    "lip": ((None,), "float"),
    "emotion": ((), "long"),
    "intensity": ((), "long"),
    "frame_index": ((), "long"),
}


@dataclass
class AudioBatch(_ClipBatch):
    """Audio-side batch of ``B`` video frames for the ``prior`` and ``emotion`` stages (no images).

    ===========  ============  =======  ==========================================================
    field        shape         dtype    meaning
    ===========  ============  =======  ==========================================================
    audio        [B,16,C]      float32  the frame's §5.3 audio window
    context      [B,50,C']     float32  audio context (frames i-25 … i+24, module docstring) of the
                                        ``context_feature`` (C' = C when it is the window feature)
    waveform     [B,S]         float32  16 kHz segment of ``segment_seconds`` centred on the frame
                                        (zero-padded at clip edges; S = 0 when disabled)
    expr         [B,K] | None  float32  expression coefficients (``expr.npy``)
    lip          [B,40] | None float32  lip target (:func:`lip_target`)
    emotion      [B]           int64    index into ``EMOTIONS``, -1 unknown
    intensity    [B]           int64    1..3, 0 unknown
    frame_index  [B]           int64    the frame's ``img_id``
    clip_id      list[str]     -        clip of each frame
    ===========  ============  =======  ==========================================================
    """

    audio: Tensor
    context: Tensor
    waveform: Tensor
    emotion: Tensor
    intensity: Tensor
    frame_index: Tensor
    clip_id: list[str]
    expr: Optional[Tensor] = None
    lip: Optional[Tensor] = None

    def __post_init__(self) -> None:
        self._check_clips("AudioBatch", _AUDIO_SPEC, ("expr", "lip"))


_PREDICT_SPEC: dict[str, tuple[tuple, str]] = {
    "viewmat": ((4, 4), "float"),
    "K": ((3, 3), "float"),
    "audio": ((16, "C"), "float"),
    "audio_neighbours": ((None, 16, "C"), "float"),
    "audio_context": ((None, "Cc"), "float"),
    "blink": ((), "float"),
    "background": ((3, "H", "W"), "float"),
    "frame_index": ((), "long"),
    "emotion": ((), "long"),
    "intensity": ((), "long"),
    "waveform": ((None,), "float"),
    "expr": ((None,), "float"),
}


@dataclass
class PredictBatch(_BatchOps, _ImageSize):
    """Inference batch of ``B`` output frames (:class:`PredictDataset`). Field names match
    :class:`~ua3dtalk.data.batch.FrameBatch` where they mean the same thing.

    ================  ==================  =======  ==================================================
    field             shape               dtype    meaning
    ================  ==================  =======  ==================================================
    viewmat           [B,4,4]             float32  world→camera (OpenCV) of the output frame
    K                 [B,3,3]             float32  intrinsics for ``width`` × ``height``
    audio             [B,16,C]            float32  audio window of the frame
    audio_neighbours  [B,8,16,C] | None   float32  windows of frames i-4 … i+3
    audio_context     [B,50,C] | None     float32  audio context (frames i-25 … i+24)
    blink             [B]                 float32  eye closure in [0,1]
    background        [B,3,H,W]           float32  what the head is composited over
    frame_index       [B]                 int64    output frame number (0-based, 25 fps)
    emotion           [B]                 int64    requested emotion id, -1 = from the audio
    intensity         [B]                 int64    requested intensity 1..3, 0 = unspecified
    waveform          [B,S] | None        float32  16 kHz segment centred on the frame
    expr              [B,K] | None        float32  expression coefficients driving ``frame_code=expression``
    ================  ==================  =======  ==================================================
    """

    viewmat: Tensor
    K: Tensor
    audio: Tensor
    blink: Tensor
    background: Tensor
    frame_index: Tensor
    emotion: Tensor
    intensity: Tensor
    audio_neighbours: Optional[Tensor] = None
    audio_context: Optional[Tensor] = None
    waveform: Optional[Tensor] = None
    expr: Optional[Tensor] = None

    _SIZE_FIELD = "background"

    def __post_init__(self) -> None:
        b = self.frame_index.shape[0] if isinstance(self.frame_index, torch.Tensor) and self.frame_index.dim() else -1
        _check_batch(self, _PREDICT_SPEC, ("audio_neighbours", "audio_context", "waveform", "expr"), b, "PredictBatch")

    def __len__(self) -> int:
        return int(self.frame_index.shape[0])


def collate_audio(batches: Sequence[AudioBatch]) -> AudioBatch:
    """Concatenate :class:`AudioBatch` objects along the batch dimension."""
    return collate_dataclass(AudioBatch, batches, ("clip_id",))


def collate_predict(batches: Sequence[PredictBatch]) -> PredictBatch:
    """Concatenate :class:`PredictBatch` objects along the batch dimension."""
    return collate_dataclass(PredictBatch, batches)


def collate_batches(batches: Sequence):
    """``collate_fn`` for every dataset of this module: dispatches on the element type
    (:class:`FrameBatch`, :class:`AudioBatch`, :class:`PredictBatch`)."""
    batches = list(batches)
    if not batches:
        raise ValueError("collate: empty batch")
    first = batches[0]
    if isinstance(first, FrameBatch):
        return collate(batches)
    if isinstance(first, AudioBatch):
        return collate_audio(batches)
    if isinstance(first, PredictBatch):
        return collate_predict(batches)
    raise ValueError(f"collate: unsupported element type {type(first).__name__}")
