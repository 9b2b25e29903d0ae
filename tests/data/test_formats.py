"""Readers of the regular (§5.1) and emotional (§5.2) layouts."""
from __future__ import annotations

import json
import os
import warnings

import numpy as np
import pytest
import torch

from dataset_builders import AU_HEADER, H, W, make_regular, parsing_map
from ua3dtalk.data import EMOTIONS, collate
from ua3dtalk.data.audio import features_for_clip
from ua3dtalk.data.formats import (
    PALETTE,
    PARTS,
    DatasetError,
    parsing_masks,
    read_au_csv,
    read_emotion_json,
    read_image,
    read_parsing,
)
from ua3dtalk.data.loading import load_clip, load_dataset, load_emotional, read_frame, validate


def test_emotion_constant_is_mead_order():
    assert EMOTIONS == ("neutral", "angry", "contempt", "disgusted", "fear", "happy", "sad", "surprised")


def test_regular_clip_metadata(regular):
    clip = load_clip(regular.root)
    assert len(clip) == 11 and clip.num_frames == 11
    assert clip.splits["train"].tolist() == list(range(10)) and clip.splits["val"].tolist() == [10]
    assert clip.frame(10).split == "val" and clip.frame(0).split == "train"
    assert clip.available == {"gt", "torso", "bc", "wav", "au", "expr"}
    assert set(clip.features) == {"ds"}
    assert clip.image_kind == "gt" and clip.image_path(3) == regular.root / "gt_imgs" / "3.jpg"
    assert clip.path("parsing", 3) == regular.root / "parsing" / "3.png"
    assert (clip.emotion, clip.intensity) == (-1, 0)


def test_au_csv_with_openface_leading_spaces(regular):
    au = read_au_csv(regular.root / "au.csv")
    assert "AU45_r" in au and " AU45_r" not in au
    raw = np.loadtxt(regular.root / "au.csv", delimiter=",", skiprows=1)
    np.testing.assert_allclose(au["AU45_r"], raw[:, AU_HEADER.index(" AU45_r")], atol=1e-6)
    clip = load_clip(regular.root)
    np.testing.assert_allclose(clip.blink(), np.clip(raw[:, -1], 0, 2) / 2, atol=1e-6)
    assert clip.au_exp().shape == (11, 6)


def test_read_parsing_and_masks(regular):
    lab = read_parsing(regular.root / "parsing" / "4.png")
    want = parsing_map(4)
    for i, part in enumerate(PARTS):
        assert torch.equal(lab == i, torch.from_numpy((want == PALETTE[part]).all(-1))), part
    m = parsing_masks(lab)
    assert torch.equal(m["torso"][0], (lab == PARTS.index("torso")) | (lab == PARTS.index("neck")))
    teeth = torch.zeros(H, W, dtype=torch.bool)
    teeth[6, 10] = True  # a face pixel
    m2 = parsing_masks(lab, teeth)
    assert m2["mouth"][0, 6, 10] and not m2["face"][0, 6, 10]


def test_read_frame_builds_a_frame_batch(regular):
    clip = load_clip(regular.root)
    feats = features_for_clip(clip, "ds")
    b = read_frame(clip, 10, audio=feats, neighbours=8, background="bc+torso")
    assert len(b) == 1 and b.clip_id == ["subj"] and b.frame_index.tolist() == [10]
    assert b.image.shape == (1, 3, H, W) and b.face_mask.dtype == torch.bool
    np.testing.assert_array_equal(b.audio[0].numpy(), np.load(regular.root / "aud_ds.npy")[10])
    assert b.audio_neighbours.shape == (1, 8, 16, 29)
    assert torch.count_nonzero(b.audio_neighbours[0, 5:]) == 0  # frames 11..13 do not exist
    torch.testing.assert_close(b.image[0], read_image(regular.root / "gt_imgs" / "10.jpg"))
    assert b.expr.shape == (1, 5) and b.landmarks.shape == (1, 68, 2)
    # torso layer (rows ≥ 15 opaque grey 200) composited over bc.jpg (17)
    assert abs(float(b.background[0, 0, 20, 5]) - 200 / 255) < 0.02
    assert abs(float(b.background[0, 0, 2, 5]) - 17 / 255) < 0.02
    both = collate([b, read_frame(clip, 0, audio=feats, neighbours=8)])
    assert len(both) == 2 and both.clip_id == ["subj", "subj"]


def test_optional_files_absent(tmp_path):
    spec = make_regular(tmp_path / "s", n=5, gt=False, torso=False, au=False, expr=False, bc=False)
    clip = load_clip(spec.root)
    assert clip.available == {"wav"} and clip.image_kind == "ori"
    assert clip.blink().tolist() == [0.0] * 5 and clip.expr() is None and clip.au_exp() is None
    b = read_frame(clip, 0)
    assert b.expr is None and b.au is None and torch.all(b.background == 1.0)


def test_single_transforms_json_uses_default_split(tmp_path):
    spec = make_regular(tmp_path / "s", n=22)
    tr = json.loads((spec.root / "transforms_train.json").read_text())
    va = json.loads((spec.root / "transforms_val.json").read_text())
    tr["frames"] += va["frames"]
    (spec.root / "transforms.json").write_text(json.dumps(tr))
    os.remove(spec.root / "transforms_train.json")
    os.remove(spec.root / "transforms_val.json")
    clip = load_clip(spec.root)
    assert len(clip.splits["train"]) == 20 and clip.splits["val"].tolist() == [20, 21]


def test_emotional_layout(emotional):
    data = load_dataset(emotional)
    assert len(data) == 3 and data.subjects == ["M003"]
    by_id = {c.clip_id: c for c in data}
    assert set(by_id) == {"M003/happy/level_2/001", "M003/sad/level_1/002", "M003/neutral/level_1/003"}
    happy = by_id["M003/happy/level_2/001"]
    assert (happy.emotion, happy.intensity, happy.emotion_name) == (EMOTIONS.index("happy"), 2, "happy")
    b = read_frame(happy, 0)
    assert b.emotion.tolist() == [5] and b.intensity.tolist() == [2] and b.clip_id == ["M003/happy/level_2/001"]
    assert [c.clip_id for c in data.select(emotions=["sad", "neutral"])] == ["M003/neutral/level_1/003",
                                                                           "M003/sad/level_1/002"]


def test_emotional_root_may_be_the_subject_dir(emotional):
    data = load_emotional(emotional / "M003")
    assert len(data) == 3 and {c.subject for c in data} == {"M003"}


def test_index_file(tmp_path):
    root = tmp_path / "flat"
    make_regular(root / "clipA", n=5)
    make_regular(root / "clipB", n=5, seed=1)
    (root / "clips.json").write_text(json.dumps({"clips": [
        {"dir": "clipA", "emotion": "angry", "intensity": 3, "subject": "W01"}, {"dir": "clipB", "emotion": "fear",
                                                                                 "intensity": 1}]}))
    data = load_dataset(root)
    assert [(c.clip_id, c.emotion_name, c.intensity) for c in data] == [("clipA", "angry", 3), ("clipB", "fear", 1)]
    assert data[0].subject == "W01"
    # text index: labels come from each clip's emotion.json
    (root / "clipA" / "emotion.json").write_text(json.dumps({"emotion": "happy", "intensity": 1}))
    (root / "list.txt").write_text("# clips\nclipA\n")
    data = load_emotional(root, index=root / "list.txt")
    assert [(c.clip_id, c.emotion_name) for c in data] == [("clipA", "happy")]


def test_unknown_emotion_is_an_error_naming_the_file(tmp_path):
    ej = tmp_path / "emotion.json"
    ej.write_text(json.dumps({"emotion": "joyful", "intensity": 2}))
    with pytest.raises(DatasetError, match="emotion.json.*unknown emotion 'joyful'"):
        read_emotion_json(ej)
    ej.write_text(json.dumps({"emotion": "happy", "intensity": 4}))
    with pytest.raises(DatasetError, match="intensity must be 1, 2 or 3"):
        read_emotion_json(ej)
    ej.write_text(json.dumps({"emotion": "surprised", "intensity": 3}))
    assert read_emotion_json(ej) == (7, 3)


def test_label_must_agree_with_directory(emotional):
    ej = emotional / "M003" / "sad" / "level_1" / "002" / "emotion.json"
    ej.write_text(json.dumps({"emotion": "happy", "intensity": 1}))
    with pytest.raises(DatasetError, match="disagrees with the directory sad/level_1"):
        load_emotional(emotional)


def test_lazy_readers_raise_dataset_error_naming_the_file(regular):
    p = regular.root / "parsing" / "2.png"
    arr = parsing_map(2)
    arr[0, 0] = (12, 34, 56)
    from PIL import Image

    Image.fromarray(arr).save(p)
    clip = load_clip(regular.root)  # quick level does not decode pixels …
    with pytest.raises(DatasetError, match=r"parsing/2.png.*\(12, 34, 56\)"):  # … the reader catches it
        read_frame(clip, 2)
    (regular.root / "gt_imgs" / "1.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(DatasetError, match=r"gt_imgs/1.jpg"):
        read_image(regular.root / "gt_imgs" / "1.jpg")


def test_warnings_do_not_stop_loading(regular):
    np.save(regular.root / "aud_ds.npy", np.zeros((12, 16, 29), np.float32))  # one frame too many
    with pytest.warns(UserWarning, match="feature length 12 frames ≠ frame count 11"):
        clip = load_clip(regular.root)
    with pytest.warns(UserWarning, match="length rule"):
        feats = features_for_clip(clip, "ds")
    assert len(feats) == 11


def test_reading_never_writes_into_the_dataset(regular, emotional):
    def snapshot(root):
        return {p: (p.stat().st_mtime_ns, p.stat().st_size) for p in root.rglob("*")}

    for root in (regular.root, emotional):
        before = snapshot(root)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            data = load_dataset(root, level="full")
            clip = data if hasattr(data, "frame") else data[0]
            read_frame(clip, 0, background="bc+torso")
            validate(root)
        assert snapshot(root) == before


def test_dataset_error_crosses_dataloader_workers(regular):
    import pickle

    from torch.utils.data import DataLoader

    clip = load_clip(regular.root)
    (regular.root / "gt_imgs" / "4.jpg").write_bytes(b"broken")
    e = DatasetError([], regular.root)
    assert pickle.loads(pickle.dumps(e)).root == regular.root

    class Frames(torch.utils.data.Dataset):
        def __len__(self):
            return len(clip)

        def __getitem__(self, j):
            return read_frame(clip, j)

    loader = DataLoader(Frames(), batch_size=2, num_workers=1, collate_fn=collate)
    with pytest.raises(DatasetError, match=r"gt_imgs/4.jpg: unreadable image"):
        for _ in loader:
            pass
