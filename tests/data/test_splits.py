"""Clip roles (evaluator / train / val / test) and the evaluation protocol that keeps them apart
(DESIGN §5.5): roles are pairwise disjoint and stratified; evaluators trained on a scored clip are refused."""
from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from ua3dtalk.data.splits import (
    ROLES,
    SYNTH_SPLIT,
    ProtocolError,
    clip_key,
    eval_protocol,
    evaluator_clips,
    split_emotional_clips,
)


def _clips(emotions=8, per_level=3):
    return [SimpleNamespace(clip_id=f"e{e}/level_{k}/{c:03d}", emotion=e, intensity=k, subject="s")
            for e in range(emotions) for k in (1, 2, 3) for c in range(1, per_level + 1)]


def _split(clips, seed=0, **kw):
    f = {**SYNTH_SPLIT, **kw}
    return split_emotional_clips(clips, f["val_fraction"], seed=seed, test_fraction=f["test_fraction"],
                                 evaluator_fraction=f["evaluator_fraction"])


@pytest.mark.parametrize("seed", [0, 1, 7])
def test_roles_are_disjoint_cover_every_clip_and_are_stratified(seed):
    clips = _clips()
    s = _split(clips, seed)
    assert set(s) == set(ROLES)
    allc = [i for r in ROLES for i in s[r]]
    assert sorted(allc) == list(range(len(clips)))  # a partition: disjoint and complete
    for e in range(8):
        per = {r: [i for i in s[r] if clips[i].emotion == e] for r in ROLES}
        # 9 clips per emotion: 3 evaluator, 2 test, 1 val, 3 train
        assert {r: len(v) for r, v in per.items()} == {"evaluator": 3, "test": 2, "val": 1, "train": 3}
        # the evaluators and the avatar each see every intensity of every emotion
        for r in ("evaluator", "train"):
            assert {clips[i].intensity for i in per[r]} == {1, 2, 3}, (e, r)
        assert len({clips[i].intensity for i in per["test"]}) == 2


def test_every_emotion_keeps_a_training_clip_and_old_split_is_unchanged():
    tiny = _clips(4, 1)  # 3 clips per emotion: no clip to spare for the evaluators
    s = _split(tiny)
    assert {r: len(v) for r, v in s.items()} == {"evaluator": 0, "train": 4, "val": 4, "test": 4}
    # without test/evaluator fractions: the val/train split of before (test empty here; the DataModule
    # then falls back to test = val with a warning)
    old = split_emotional_clips(_clips(), 0.34, seed=3)
    assert not old["evaluator"] and not old["test"] and len(old["val"]) == 8 * 3
    with pytest.raises(ValueError, match="must be < 1"):
        _split(_clips(), val_fraction=0.5, test_fraction=0.3, evaluator_fraction=0.3)


def test_synth_configs_use_the_evaluators_default_split():
    from omegaconf import OmegaConf

    from ua3dtalk.cli.train import compose

    cfg = compose(["experiment=demo_synth"])
    assert {k: cfg.data[k] for k in SYNTH_SPLIT} == SYNTH_SPLIT
    assert OmegaConf.select(cfg, "data.test_fraction") > 0


def _manifest(d, clips):
    d.mkdir(parents=True, exist_ok=True)
    rec = {"evaluators": {}} if clips is None else {"evaluators": {}, "clips": clips}
    (d / "manifest.json").write_text(json.dumps(rec))
    return d


def _ci(key):
    subject, clip_id = key.split("/", 1)
    return SimpleNamespace(subject=subject, clip_id=clip_id)


def test_eval_protocol_refuses_an_overlap_and_names_the_clips(tmp_path):
    splits = {"train": [_ci("s/a/1")], "val": [_ci("s/a/2")], "test": [_ci("s/a/3"), _ci("s/b/3")]}
    ok = eval_protocol(_manifest(tmp_path / "ok", ["s/a/0", "s/b/0"]), splits)
    assert ok["evaluator_clips"] == ["s/a/0", "s/b/0"] and ok["test_clips"] == ["s/a/3", "s/b/3"]
    assert ok["disjoint"] and ok["overlap"] == [] and not ok["overlap_allowed"]
    bad = _manifest(tmp_path / "bad", ["s/a/0", "s/b/3"])
    with pytest.raises(ProtocolError, match="s/b/3") as e:
        eval_protocol(bad, splits)
    assert "allow_overlap" in str(e.value)
    with pytest.warns(UserWarning, match="optimistic"):
        rec = eval_protocol(bad, splits, allow_overlap=True)
    assert rec["overlap"] == ["s/b/3"] and rec["overlap_allowed"] and not rec["disjoint"]
    # scoring only val: the test clip the evaluators saw is not scored
    assert eval_protocol(bad, splits, scored=("val",))["overlap"] == []
    # a directory that does not record its clips is refused too; no directory: nothing to check
    with pytest.raises(ProtocolError, match="does not record"):
        eval_protocol(_manifest(tmp_path / "old", None), splits)
    assert evaluator_clips(None) == [] and eval_protocol(None, splits)["disjoint"]
    # test = val is recorded as not disjoint
    assert not eval_protocol(None, {**splits, "test": splits["val"]})["disjoint"]


def test_clip_key():
    assert clip_key(SimpleNamespace(subject="synth0", clip_id="happy/level_3/002")) == "synth0/happy/level_3/002"
    assert clip_key(SimpleNamespace(subject=None, clip_id="x")) == "x"


def test_datamodule_has_three_disjoint_splits_and_hides_evaluator_clips(synth_emotional_roles):
    from ua3dtalk.data.datamodule import EmotionalTalkingHeadDataModule

    dm = EmotionalTalkingHeadDataModule(str(synth_emotional_roles), **{k: v for k, v in SYNTH_SPLIT.items()})
    dm.setup("fit")
    keys = {r: {clip_key(c) for c in dm.split_clips[r]} for r in ROLES}
    assert all(keys[r] for r in ROLES)
    for i, a in enumerate(ROLES):
        for b in ROLES[i + 1:]:
            assert not keys[a] & keys[b], (a, b)
    # no loader position points into an evaluator clip
    ev = {id(c) for c in dm.split_clips["evaluator"]}
    for split in ("train", "val", "test"):
        used = {int(ci) for ci in dm.split_index[split][:, 0]}
        assert not {i for i in used if id(dm.clips[i]) in ev}, split
    with pytest.raises(ValueError, match="data.test_fraction"):
        EmotionalTalkingHeadDataModule(str(synth_emotional_roles), test_fraction=1.5)
