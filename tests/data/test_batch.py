"""FrameBatch: shape checks, collate, .to(device), indexing."""
from __future__ import annotations

import pytest
import torch

from ua3dtalk.data.batch import FrameBatch, collate


def make_batch(b=1, h=6, w=5, c=7, clip="a", expr=True, seed=0) -> FrameBatch:
    g = torch.Generator().manual_seed(seed)
    m = torch.rand(b, 1, h, w, generator=g) > 0.5
    return FrameBatch(
        image=torch.rand(b, 3, h, w, generator=g), face_mask=m, mouth_mask=~m, hair_mask=m, torso_mask=~m,
        background=torch.rand(b, 3, h, w, generator=g), viewmat=torch.eye(4).expand(b, 4, 4).clone(),
        K=torch.eye(3).expand(b, 3, 3).clone(), audio=torch.rand(b, 16, c, generator=g),
        blink=torch.rand(b, generator=g), emotion=torch.full((b,), -1), intensity=torch.zeros(b, dtype=torch.long),
        frame_index=torch.arange(b), clip_id=[clip] * b,
        audio_neighbours=torch.rand(b, 8, 16, c, generator=g),
        expr=torch.rand(b, 4, generator=g) if expr else None,
    )


def test_collate_concatenates_and_keeps_optional_none():
    a, b = make_batch(1, clip="a", seed=0), make_batch(2, clip="b", seed=1)
    out = collate([a, b])
    assert len(out) == 3
    assert out.clip_id == ["a", "b", "b"]
    assert out.image.shape == (3, 3, 6, 5)
    assert torch.equal(out.image[0], a.image[0]) and torch.equal(out.image[1:], b.image)
    assert out.audio_neighbours.shape == (3, 8, 16, 7)
    assert out.au is None and out.landmarks is None
    assert torch.equal(out.frame_index, torch.tensor([0, 0, 1]))


def test_collate_rejects_mixed_optional_and_mismatched_shapes():
    with pytest.raises(ValueError, match="expr"):
        collate([make_batch(expr=True), make_batch(expr=False)])
    with pytest.raises(ValueError, match="audio"):
        collate([make_batch(c=7), make_batch(c=8)])


def test_shape_and_dtype_checks_name_the_field():
    good = make_batch(2)
    kw = {k: getattr(good, k) for k in good.__dataclass_fields__}
    with pytest.raises(ValueError, match="image"):
        FrameBatch(**{**kw, "image": torch.rand(2, 6, 5, 3)})  # HWC instead of CHW
    with pytest.raises(ValueError, match="face_mask"):
        FrameBatch(**{**kw, "face_mask": good.face_mask.float()})
    with pytest.raises(ValueError, match="emotion"):
        FrameBatch(**{**kw, "emotion": torch.zeros(2)})
    with pytest.raises(ValueError, match="clip_id"):
        FrameBatch(**{**kw, "clip_id": ["a"]})
    with pytest.raises(ValueError, match="background"):
        FrameBatch(**{**kw, "background": torch.rand(2, 3, 7, 5)})


def test_to_device_and_indexing():
    b = make_batch(3)
    moved = b.to("meta")
    assert all(t.device.type == "meta" for t in moved.tensor_fields().values())
    assert moved.clip_id == b.clip_id and moved.emotion.dtype == torch.long
    assert all(t.device.type == "cpu" for t in b.tensor_fields().values())  # original untouched
    one = b[-1]
    assert len(one) == 1 and torch.equal(one.image[0], b.image[2])
    part = b[1:]
    assert len(part) == 2 and torch.equal(part.frame_index, torch.tensor([1, 2]))
    assert torch.equal(b.head_mask, b.face_mask | b.mouth_mask | b.hair_mask)
