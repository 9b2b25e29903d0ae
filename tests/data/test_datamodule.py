"""Datasets, batches, samplers and DataModules (ua3dtalk.data.datamodule / samplers)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from torch.utils.data import DataLoader

from dataset_builders import make_regular
from ua3dtalk.data import DatasetError, FrameBatch, load_clip, read_frame
from ua3dtalk.data.audio import features_for_clip
from ua3dtalk.data.batch import AudioBatch, PredictBatch, collate_audio, collate_batches
from ua3dtalk.data.datamodule import EmotionalTalkingHeadDataModule, TalkingHeadDataModule, split_emotional_clips
from ua3dtalk.data.datasets import AudioFrameDataset, FrameDataset, all_positions
from ua3dtalk.data.features import audio_context_np, frame_features_np, lip_target, synthetic_blinks, waveform_segment
from ua3dtalk.data.predict import PredictDataset
from ua3dtalk.constants import EMOTIONS
from ua3dtalk.data.synth.head import EXPR_NAMES
from ua3dtalk.data.samplers import (
    BlinkCurriculumSampler,
    MouthOpenCurriculumSampler,
    jaw_column,
    mouth_aspect_ratio,
    mouth_openness,
)


def listing(root: Path) -> dict[str, int]:
    """{relative path: size} of every file under root (to check that nothing is written)."""
    return {str(p.relative_to(root)): p.stat().st_size for p in sorted(Path(root).rglob("*")) if p.is_file()}


# --------------------------------------------------------------------------------------------------
# audio context / lip target / waveform: definitions
# --------------------------------------------------------------------------------------------------


def test_audio_context_matches_models_torch_version():
    from ua3dtalk.models.prior.module import audio_context, frame_features

    g = np.random.default_rng(0)
    for n, c, ctx in ((7, 5, 50), (120, 3, 50), (60, 4, 11)):
        win = g.normal(size=(n, 16, c)).astype(np.float32)
        frames = np.array([0, 1, n // 2, n - 2, n - 1])
        ff_np = frame_features_np(win)
        ff_t = frame_features(torch.from_numpy(win))
        assert torch.equal(torch.from_numpy(ff_np), ff_t)
        got = audio_context_np(ff_np, frames, ctx)
        want = audio_context(ff_t, torch.from_numpy(frames), ctx)
        assert got.dtype == np.float32 and got.shape == (len(frames), ctx, c)
        assert torch.equal(torch.from_numpy(got), want)
    with pytest.raises(ValueError, match="frames must index"):
        audio_context_np(ff_np, np.array([n]), 50)


def test_lip_target_hand_made():
    lm = np.zeros((68, 2))
    lm[36:42] = [10.0, 20.0]  # left eye centre (10, 20)
    lm[42:48] = [30.0, 20.0]  # right eye centre (30, 20) → inter-ocular distance 20
    mouth = np.stack([np.linspace(15, 25, 20), np.linspace(40, 44, 20)], 1)
    lm[48:68] = mouth
    want = ((mouth - mouth.mean(0)) / 20.0).reshape(40)
    np.testing.assert_allclose(lip_target(lm), want, rtol=1e-6, atol=1e-7)
    assert lip_target(lm).dtype == np.float32 and lip_target(lm[None]).shape == (1, 40)
    # translation and scale invariant
    np.testing.assert_allclose(lip_target(lm * 3.0 + [7.0, -2.0]), want, rtol=1e-5, atol=1e-6)


def test_waveform_segment_centred_and_zero_padded():
    wav = np.arange(1, 3201, dtype=np.float32)  # 5 frames of 640 samples
    seg = waveform_segment(wav, 2, 640)  # centre sample 1600 → [1280, 1920)
    np.testing.assert_array_equal(seg, wav[1280:1920])
    seg = waveform_segment(wav, 0, 1000)  # [-180, 820)
    assert (seg[:180] == 0).all() and np.array_equal(seg[180:], wav[:820])
    seg = waveform_segment(wav, 4, 1000)  # centre 2880 → [2380, 3380)
    assert np.array_equal(seg[:820], wav[2380:]) and (seg[820:] == 0).all()


# --------------------------------------------------------------------------------------------------
# hand-made dataset: AudioBatch lip / context / waveform values
# --------------------------------------------------------------------------------------------------


@pytest.fixture
def hand_made(tmp_path):
    """make_regular (11 frames) + a feature file whose 50 Hz step t holds t in channel 0, -t in channel 1,
    and landmarks with a known mouth per frame."""
    spec = make_regular(tmp_path / "subj", n=11, ds=False)
    seq = np.stack([np.arange(22.0), -np.arange(22.0)], 1).astype(np.float32)  # [T=22, C=2] → 11 frames
    np.save(spec.root / "aud_ramp.npy", seq)
    for i in range(11):
        lm = np.zeros((68, 2))
        lm[36:42], lm[42:48] = [2.0, 5.0], [12.0, 5.0]  # inter-ocular distance 10
        lm[48:68] = np.stack([np.linspace(4, 10, 20), np.full(20, 15.0 + i)], 1)
        lm[57, 1] += i  # mouth opens with i
        np.savetxt(spec.root / "ori_imgs" / f"{i}.lms", lm, "%.3f")
    return spec


def test_audio_batch_context_and_lip_on_hand_made_example(hand_made):
    clip = load_clip(hand_made.root)
    ds = AudioFrameDataset([clip], all_positions([clip]), "ramp", segment_seconds=0.1, context=6)
    assert len(ds) == 11 and ds.audio_dim == 2
    b = collate_audio([ds[k] for k in range(11)])
    assert isinstance(b, AudioBatch) and len(b) == 11
    assert b.audio.shape == (11, 16, 2) and b.context.shape == (11, 6, 2) and b.waveform.shape == (11, 1600)
    assert b.expr.shape == (11, 5) and b.lip.shape == (11, 40)
    # per-frame feature of frame j = mean(2j, 2j+1) = 2j + 0.5; context of i = frames i-3 … i+2 clamped
    for i in range(11):
        js = np.clip(np.arange(i - 3, i + 3), 0, 10)
        np.testing.assert_array_equal(b.context[i, :, 0].numpy(), 2 * js + 0.5)
        np.testing.assert_array_equal(b.context[i, :, 1].numpy(), -(2 * js + 0.5))
        # window of frame i: 50 Hz steps 2i-8 … 2i+7, zeros outside [0, 22)
        steps = np.arange(2 * i - 8, 2 * i + 8)
        np.testing.assert_array_equal(b.audio[i, :, 0].numpy(), np.where((steps >= 0) & (steps < 22), steps, 0))
    # lip: mouth x spans 4..10 (centred: -3..3), y equal except point 57 (index 9) → after /10
    lm = np.loadtxt(hand_made.root / "ori_imgs" / "4.lms")
    mouth = lm[48:68]
    np.testing.assert_allclose(b.lip[4].numpy(), ((mouth - mouth.mean(0)) / 10.0).reshape(40), atol=1e-6)
    assert b.lip[4, 0].item() == pytest.approx(-0.3, abs=1e-5)
    # waveform: the 0.1 s segment centred on frame 5 of aud.wav
    wav, sr = sf.read(str(hand_made.root / "aud.wav"), dtype="float32")
    np.testing.assert_allclose(b.waveform[5].numpy(), wav[5 * 640 + 320 - 800: 5 * 640 + 320 + 800], atol=1e-6)
    # emotion unknown in a regular dataset; frame_index = img_id; clip ids
    assert b.emotion.tolist() == [-1] * 11 and b.intensity.tolist() == [0] * 11
    assert b.frame_index.tolist() == list(range(11)) and b.clip_id == ["subj"] * 11


def test_audio_batch_ops_and_errors(hand_made):
    clip = load_clip(hand_made.root)
    ds = AudioFrameDataset([clip], all_positions([clip]), "ramp")
    b = collate_batches([ds[0], ds[3], ds[5]])
    assert isinstance(b, AudioBatch) and b.waveform.shape == (3, 32000) and b.context.shape == (3, 50, 2)
    assert b.to("cpu").audio.data_ptr() == b.audio.data_ptr()
    sub = b[1:]
    assert len(sub) == 2 and sub.clip_id == ["subj", "subj"] and sub.frame_index.tolist() == [3, 5]
    with pytest.raises(ValueError, match="`audio`"):
        AudioBatch(audio=torch.zeros(2, 15, 2), context=b.context[:2], waveform=b.waveform[:2],
                   emotion=b.emotion[:2], intensity=b.intensity[:2], frame_index=b.frame_index[:2],
                   clip_id=["a", "b"])
    # the context has its own channel count (the DataModule's context_feature), its batch size is checked
    AudioBatch(audio=b.audio[:1], context=torch.zeros(1, 50, 3), waveform=b.waveform[:1],
               emotion=b.emotion[:1], intensity=b.intensity[:1], frame_index=b.frame_index[:1], clip_id=["a"])
    with pytest.raises(ValueError, match="`context`"):
        AudioBatch(audio=b.audio[:1], context=torch.zeros(2, 50, 3), waveform=b.waveform[:1],
                   emotion=b.emotion[:1], intensity=b.intensity[:1], frame_index=b.frame_index[:1], clip_id=["a"])
    no_lip = AudioFrameDataset([clip], all_positions([clip]), "ramp", lip=False)[0]
    with pytest.raises(ValueError, match="`lip`"):
        collate_audio([ds[0], no_lip])


# --------------------------------------------------------------------------------------------------
# FrameDataset
# --------------------------------------------------------------------------------------------------


def test_frame_dataset_matches_read_frame_plus_context(synth_regular):
    from ua3dtalk.models.prior.module import audio_context, frame_features

    clip = load_clip(synth_regular)
    feats = features_for_clip(clip, "mel")
    ds = FrameDataset([clip], all_positions([clip]), "mel", neighbours=8, background="bc+torso")
    ff = frame_features(torch.from_numpy(feats.to_array()))
    for pos in (0, 1, 37, len(clip) - 1):
        got = ds[pos]
        want = read_frame(clip, pos, audio=feats, neighbours=8, background="bc+torso")
        assert isinstance(got, FrameBatch) and len(got) == 1
        for k, v in want.tensor_fields().items():
            assert torch.equal(getattr(got, k), v), k
        assert got.clip_id == want.clip_id
        i = int(clip.img_ids[pos])
        assert torch.equal(got.audio_context, audio_context(ff, torch.tensor([i]), 50))
        assert got.audio_context.shape == (1, 50, 80)


def test_frame_dataset_lru_cache_is_bounded(synth_regular):
    clip = load_clip(synth_regular)
    ds = FrameDataset([clip], all_positions([clip]), "mel", cache_size=5)
    for k in range(20):
        ds[k]
        assert len(ds.cache) <= 5
    info = ds.cache_info()
    assert info == {"size": 5, "maxsize": 5, "hits": 0, "misses": 20}
    a = ds[19]  # most recent: a hit, same values as a fresh decode
    assert ds.cache_info()["hits"] == 1
    fresh = FrameDataset([clip], all_positions([clip]), "mel", cache_size=0)
    assert torch.equal(a.image, fresh[19].image) and len(fresh.cache) == 0
    ds[0]
    assert (0, 14) not in ds.cache and (0, 19) in ds.cache and len(ds.cache) == 5  # LRU evicted 14, not 19
    # pickling (what DataLoader workers get) drops the cache
    import pickle

    assert len(pickle.loads(pickle.dumps(ds)).cache) == 0


def test_worker_loading_and_corrupted_image(synth_regular, tmp_path):
    root = tmp_path / "subj"
    shutil.copytree(synth_regular, root)
    dm = TalkingHeadDataModule(str(root), num_workers=2, batch_size=4, limit_val_frames=3)
    dm.setup("fit")
    ds = dm.frame_dataset("train")
    loader = dm.train_dataloader()
    assert loader.persistent_workers and loader.num_workers == 2
    n = sum(len(b) for b in loader)
    assert n == len(ds)
    # same values from workers as in the main process
    seq = DataLoader(ds, batch_size=4, collate_fn=collate_batches, num_workers=2)
    first = next(iter(seq))
    assert torch.equal(first.image, collate_batches([ds[k] for k in range(4)]).image)
    # an image corrupted after setup (one the main process has not cached — forked workers inherit its
    # cache): the worker's error is a DatasetError naming the file
    bad = root / "gt_imgs" / "12.jpg"
    bad.write_bytes(bad.read_bytes()[:40] + b"\x00garbage" * 20)
    it = iter(DataLoader(ds, batch_size=2, collate_fn=collate_batches, num_workers=2))
    try:
        with pytest.raises(DatasetError, match=r"gt_imgs/12\.jpg"):
            for _ in it:
                pass
    finally:  # stop the workers now: left to the garbage collector, torch waits 5 s per worker
        it._shutdown_workers()
    # and at setup time the loader's checks name it too (a fresh DataModule)
    bad.write_bytes(b"not a jpeg at all")
    with pytest.raises(DatasetError, match=r"gt_imgs/12\.jpg"):
        TalkingHeadDataModule(str(root)).setup("fit")


# --------------------------------------------------------------------------------------------------
# DataModules
# --------------------------------------------------------------------------------------------------


def test_regular_datamodule_iterates_all_stages(synth_regular):
    before = listing(synth_regular)
    dm = TalkingHeadDataModule(str(synth_regular), batch_size=2, audio_batch_size=16, limit_val_frames=4)
    with pytest.raises(RuntimeError, match="setup"):
        dm.audio_channels
    dm.prepare_data()
    dm.setup("fit")
    clip = dm.clips[0]
    assert dm.audio_channels == 80 and dm.expr_dim == len(EXPR_NAMES) and dm.image_size == (64, 64)
    n_train, n_val = len(clip.splits["train"]), len(clip.splits["val"])
    assert len(dm.frame_dataset("train")) == n_train and len(dm.frame_dataset("val")) == min(4, n_val)
    assert len(dm.frame_dataset("test")) == n_val  # test = val (unlimited)

    b = next(iter(dm.train_dataloader()))
    assert isinstance(b, FrameBatch) and len(b) == 2
    assert b.image.shape == (2, 3, 64, 64) and b.audio.shape == (2, 16, 80)
    assert b.audio_neighbours.shape == (2, 8, 16, 80) and b.audio_context.shape == (2, 50, 80)
    assert b.expr.shape == (2, len(EXPR_NAMES)) and b.emotion.tolist() == [-1, -1]
    vb = list(dm.val_dataloader())
    assert sum(len(x) for x in vb) == min(4, n_val)
    assert all(int(i) in set(clip.img_ids[clip.splits["val"]].tolist()) for x in vb for i in x.frame_index)

    dm.stage = "prior"
    a = next(iter(dm.train_dataloader()))
    assert isinstance(a, AudioBatch) and len(a) == 16
    assert a.audio.shape == (16, 16, 80) and a.context.shape == (16, 50, 80) and a.waveform.shape == (16, 32000)
    assert a.expr.shape == (16, len(EXPR_NAMES)) and a.lip.shape == (16, 40)
    assert isinstance(next(iter(dm.val_dataloader())), AudioBatch)
    assert isinstance(next(iter(dm.test_dataloader())), AudioBatch)
    with pytest.raises(ValueError, match="stage"):
        dm.stage = "render"

    p = list(dm.predict_dataloader())
    assert all(isinstance(x, PredictBatch) for x in p)
    assert sum(len(x) for x in p) == clip.num_frames  # the val clip's audio, re-rendered
    assert p[0].background.shape == (2, 3, 64, 64) and p[0].audio_context.shape == (2, 50, 80)
    assert p[0].emotion.tolist() == [-1, -1]
    assert listing(synth_regular) == before  # nothing written (features were cached already)


@pytest.mark.filterwarnings("ignore:You passed in a `val_dataloader`", "ignore:.*LeafSpec")
def test_datamodule_trains_with_lightning(synth_regular):
    """The loaders work inside a Trainer (device transfer of the dataclasses, sampler epochs)."""
    import lightning as L

    class Probe(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))
            self.seen = []

        def training_step(self, batch, i):
            self.seen.append(type(batch).__name__)
            return (self.w - batch.audio.mean()) ** 2

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    for stage in ("face", "prior"):
        dm = TalkingHeadDataModule(str(synth_regular), batch_size=2, audio_batch_size=8, sampler="mouth", stage=stage)
        model = Probe()
        trainer = L.Trainer(max_steps=3, accelerator="cpu", logger=False, enable_checkpointing=False,
                            enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0)
        trainer.fit(model, datamodule=dm)
        assert model.seen == ["FrameBatch" if stage == "face" else "AudioBatch"] * 3


def test_prepare_data_computes_only_missing_feature_cache(synth_regular, tmp_path):
    root = tmp_path / "subj"
    shutil.copytree(synth_regular, root)
    for f in ("aud_mel.npy", "aud_mel.json"):
        (root / f).unlink()
    before = listing(root)
    dm = TalkingHeadDataModule(str(root))
    with pytest.raises(DatasetError, match=r"aud_mel\.npy"):
        dm.setup("fit")  # no cache yet: a clear error naming the file
    dm.prepare_data()
    after = listing(root)
    assert set(after) - set(before) == {"aud_mel.npy", "aud_mel.json"}
    assert {k: v for k, v in after.items() if k in before} == before
    np.testing.assert_array_equal(np.load(root / "aud_mel.npy"), np.load(synth_regular / "aud_mel.npy"))
    dm2 = TalkingHeadDataModule(str(root))
    dm2.setup("fit")
    assert dm2.audio_channels == 80
    with pytest.raises(DatasetError, match=r"aud_ds\.npy"):
        TalkingHeadDataModule(str(root), feature="ds").setup("fit")


def test_prepare_data_with_a_wav2vec2_model(synth_regular, tiny_w2v, tmp_path):
    root = tmp_path / "subj"
    shutil.copytree(synth_regular, root)
    dm = TalkingHeadDataModule(str(root), feature="wav2vec2", extractor_model=str(tiny_w2v), batch_size=2)
    assert dm.feature_name == "w2v_tiny-w2v_logits"
    dm.prepare_data()
    assert (root / "aud_w2v_tiny-w2v_logits.npy").is_file()
    dm.setup("fit")
    assert dm.audio_channels == 12  # the tiny model's CTC vocabulary
    b = next(iter(dm.train_dataloader()))
    assert b.audio.shape == (2, 16, 12) and b.audio_context.shape == (2, 50, 12)
    # a stored file can be named directly, without the extractor
    dm2 = TalkingHeadDataModule(str(root), feature="w2v_tiny-w2v_logits")
    dm2.setup("fit")
    assert dm2.audio_channels == 12 and dm2.extractor() is None


def test_emotional_datamodule_splits_by_clip(synth_emotional):
    dm = EmotionalTalkingHeadDataModule(str(synth_emotional), batch_size=2, audio_batch_size=8,
                                        holdout_emotions=("sad",))
    dm.prepare_data()
    dm.setup("fit")
    ids = {k: {c.clip_id for c in v} for k, v in dm.split_clips.items()}
    assert ids["train"] and ids["val"] and ids["test"]
    assert not (ids["train"] & ids["val"]) and not (ids["train"] & ids["test"]) and not (ids["val"] & ids["test"])
    assert len(ids["train"] | ids["val"] | ids["test"]) == len(dm.clips)
    emo = {k: {c.emotion_name for c in v} for k, v in dm.split_clips.items()}
    assert emo["test"] == {"sad"} and "sad" not in emo["train"] | emo["val"]
    assert emo["train"] == {"neutral", "angry", "happy"}  # every (non held-out) emotion keeps train clips
    # frames follow their clip: every frame of a clip is in the clip's split
    for split in ("train", "val", "test"):
        idx = dm.split_index[split]
        assert {dm.clips[int(ci)].clip_id for ci in np.unique(idx[:, 0])} == ids[split]
        assert len(idx) == sum(len(c) for c in dm.split_clips[split])

    b = next(iter(dm.train_dataloader()))
    assert isinstance(b, FrameBatch) and b.image.shape == (2, 3, 64, 64)
    labels = {c.clip_id: json.loads((c.root / "emotion.json").read_text()) for c in dm.clips}
    for cid, e, k in zip(b.clip_id, b.emotion.tolist(), b.intensity.tolist()):
        assert (EMOTIONS[e], k) == (labels[cid]["emotion"], labels[cid]["intensity"])
    dm.stage = "emotion"
    seen = set()
    for a in dm.train_dataloader():
        assert isinstance(a, AudioBatch) and a.waveform.shape[1] == 32000
        seen |= {EMOTIONS[e] for e in a.emotion.tolist()}
    assert seen == {"neutral", "angry", "happy"}
    for t in dm.test_dataloader():
        assert set(t.emotion.tolist()) == {EMOTIONS.index("sad")}
    v = next(iter(dm.val_dataloader()))
    assert isinstance(v, AudioBatch) and set(v.clip_id) <= ids["val"]
    dm.stage = "face"
    assert isinstance(next(iter(dm.val_dataloader())), FrameBatch)
    p = next(iter(dm.predict_dataloader()))
    assert isinstance(p, PredictBatch)


def test_emotional_split_deterministic_stratified_and_intensity_holdout(synth_emotional):
    dm = EmotionalTalkingHeadDataModule(str(synth_emotional), holdout_intensities=(3,), split_seed=5)
    dm.setup("fit")
    clips = dm.clips
    s1 = split_emotional_clips(clips, 0.34, (), (3,), seed=5)
    s2 = split_emotional_clips(list(reversed(clips)), 0.34, (), (3,), seed=5)
    assert {k: [clips[i].clip_id for i in v] for k, v in s1.items()} == \
        {k: sorted(c.clip_id for c in v) for k, v in dm.split_clips.items()}
    rev = list(reversed(clips))
    assert {k: sorted(rev[i].clip_id for i in v) for k, v in s2.items()} == \
        {k: sorted(clips[i].clip_id for i in v) for k, v in s1.items()}  # independent of the clip order
    assert all(clips[i].intensity == 3 for i in s1["test"]) and len(s1["test"]) == 4
    for e in ("neutral", "angry", "happy", "sad"):  # 2 clips per emotion left: 1 train + 1 val each
        assert sum(clips[i].emotion_name == e for i in s1["train"]) == 1
        assert sum(clips[i].emotion_name == e for i in s1["val"]) == 1
    splits = [split_emotional_clips(clips, 0.34, seed=s)["val"] for s in range(6)]
    assert len({tuple(v) for v in splits}) > 1  # the seed matters
    for s in range(6):  # stratified by intensity: an emotion's val clips have distinct intensities
        val = split_emotional_clips(clips, 0.67, seed=s)["val"]
        for e in ("neutral", "angry", "happy", "sad"):
            levels = [clips[i].intensity for i in val if clips[i].emotion_name == e]
            assert len(levels) == 2 and len(set(levels)) == 2, (s, e, levels)
    # ... and the emotions' val clips do not all share one intensity (seed 0 used to hold out level 3 only)
    assert len({clips[i].intensity for i in split_emotional_clips(clips, 0.34, seed=0)["val"]}) > 1
    with pytest.raises(ValueError, match="unknown holdout emotion"):
        split_emotional_clips(clips, holdout_emotions=("bored",))
    # no hold-out: test = val
    dm2 = EmotionalTalkingHeadDataModule(str(synth_emotional))
    dm2.setup("fit")
    assert np.array_equal(dm2.split_index["test"], dm2.split_index["val"])


# --------------------------------------------------------------------------------------------------
# samplers
# --------------------------------------------------------------------------------------------------


def test_mouth_sampler_prefers_open_mouths():
    g = np.random.default_rng(0)
    m = g.uniform(0, 1, 200)
    s = MouthOpenCurriculumSampler(m, power=2.0, uniform_mix=0.3, num_samples=20000, seed=1)
    idx = np.array(list(s))
    assert len(s) == 20000 and len(idx) == 20000
    assert m[idx].mean() > m.mean() + 0.15
    counts = np.bincount(idx, minlength=200) / len(idx)
    w = 0.3 / 200 + 0.7 * m ** 2 / (m ** 2).sum()
    assert np.abs(counts - w).max() < 0.004  # frequencies follow the documented weights
    assert np.corrcoef(counts, m)[0, 1] > 0.8
    # seeded: same seed and epoch → same draw; new epoch → another draw
    s.set_epoch(3)
    a = list(s)
    s.set_epoch(3)
    assert list(s) == a
    s.set_epoch(4)
    assert list(s) != a
    u = MouthOpenCurriculumSampler(m, uniform_mix=1.0, num_samples=20000)
    assert abs(m[np.array(list(u))].mean() - m.mean()) < 0.02
    with pytest.raises(ValueError):
        MouthOpenCurriculumSampler(m, uniform_mix=1.5)


def test_blink_sampler_prefers_blinks():
    blink = np.zeros(300)
    blink[[10, 11, 12, 100, 101, 250]] = [0.5, 1.0, 0.4, 0.9, 0.8, 1.0]
    s = BlinkCurriculumSampler(blink, uniform_mix=0.5, num_samples=10000, seed=0)
    idx = np.array(list(s))
    assert (blink[idx] > 0).mean() > 0.45  # 2% of the frames, ≈ 52% of the draws
    assert (blink[idx] > 0).mean() == pytest.approx(0.5 + 0.5 * 6 / 300, abs=0.03)
    assert set(idx.tolist()) - set(np.nonzero(blink)[0].tolist())  # uniform part still visits the rest


def test_mouth_openness_sources(synth_regular, tmp_path):
    clip = load_clip(synth_regular)
    pos = np.arange(len(clip))
    assert jaw_column(clip) == 0
    jaw = mouth_openness(clip, pos)
    np.testing.assert_array_equal(jaw, np.load(synth_regular / "expr.npy")[clip.img_ids, 0])
    # without synth.json: the landmarks' mouth aspect ratio, which tracks the jaw
    root = tmp_path / "nosynth"
    shutil.copytree(synth_regular, root)
    (root / "synth.json").unlink()
    c2 = load_clip(root)
    assert jaw_column(c2) is None
    mar = mouth_openness(c2, pos)
    lms = np.stack([c2.landmarks(j) for j in pos])
    np.testing.assert_allclose(mar, mouth_aspect_ratio(lms))
    assert np.corrcoef(mar, jaw)[0, 1] > 0.6
    np.testing.assert_array_equal(mouth_openness(c2, pos, column=0), jaw)


def test_datamodule_samplers_draw_open_mouths_and_blinks(synth_regular):
    dm = TalkingHeadDataModule(str(synth_regular), sampler="mouth", sampler_uniform_mix=0.2, sampler_power=2.0)
    dm.setup("fit")
    s = dm.curriculum_sampler()
    assert isinstance(s, MouthOpenCurriculumSampler) and len(s) == len(dm.frame_dataset("train"))
    clip = dm.clips[0]
    idx = dm.split_index["train"]
    jaw = np.load(synth_regular / "expr.npy")[clip.img_ids[idx[:, 1]], 0]
    s.num_samples = 5000
    draws = np.array(list(s))
    assert jaw[draws].mean() > jaw.mean() * 1.3
    assert isinstance(dm.train_dataloader().sampler, MouthOpenCurriculumSampler)
    dmb = TalkingHeadDataModule(str(synth_regular), sampler="blink")
    dmb.setup("fit")
    sb = dmb.curriculum_sampler()
    blink = clip.blink()[clip.img_ids[idx[:, 1]]]
    assert isinstance(sb, BlinkCurriculumSampler) and blink.max() > 0
    sb.num_samples = 5000
    assert blink[np.array(list(sb))].mean() > 3 * blink.mean()


# --------------------------------------------------------------------------------------------------
# PredictDataset
# --------------------------------------------------------------------------------------------------


def test_predict_dataset_from_any_wav_and_camera_track(synth_regular, tmp_path):
    before = listing(synth_regular)
    clip = load_clip(synth_regular)
    L = len(clip)  # 75 cameras
    sr, seconds = 44100, 4.0  # 44.1 kHz stereo, longer than the camera track
    t = np.arange(int(sr * seconds)) / sr
    x = 0.3 * np.sin(2 * np.pi * 180 * t) * (0.5 + 0.5 * np.sin(2 * np.pi * 3 * t))
    wav = tmp_path / "speech.wav"
    sf.write(str(wav), np.stack([x, 0.5 * x], 1).astype(np.float32), sr)
    ds = PredictDataset(wav, "mel", cameras=clip, emotion="happy", intensity=2, background="bc", blink="synthetic")
    n = int(round(seconds * 25))
    assert len(ds) == n == 100 and ds.audio_dim == 80
    b = collate_batches([ds[j] for j in (0, L - 1, L, L + 5, n - 1)])
    assert isinstance(b, PredictBatch) and b.audio.shape == (5, 16, 80) and b.audio_neighbours.shape == (5, 8, 16, 80)
    assert b.audio_context.shape == (5, 50, 80) and b.waveform.shape == (5, 32000)
    assert b.background.shape == (5, 3, 64, 64) and b.K.shape == (5, 3, 3)
    vm = torch.from_numpy(clip.cameras.viewmats)
    # mirror looping: frame L is camera L-1, L+5 is L-6
    for got, cam in zip(b.viewmat, (0, L - 1, L - 1, L - 6, 2 * L - 1 - (n - 1))):
        assert torch.equal(got, vm[cam])
    assert b.emotion.tolist() == [EMOTIONS.index("happy")] * 5 and b.intensity.tolist() == [2] * 5
    assert torch.allclose(b.background[0], clip.background())
    assert (ds.blink >= 0).all() and ds.blink.max() == 1.0 and np.array_equal(ds.blink, synthetic_blinks(n, 0))

    # a camera file of viewmats (trimmed: longer than the audio), other size → K scaled
    track = tmp_path / "pose.npy"
    np.save(track, np.concatenate([clip.cameras.viewmats] * 2))
    short = tmp_path / "short.wav"
    sf.write(str(short), x[: int(sr * 1.0)].astype(np.float32), sr)
    with pytest.raises(ValueError, match="intrinsics"):
        PredictDataset(short, "mel", cameras=track, width=32, height=32)
    ds2 = PredictDataset(short, "mel", cameras=track, K=clip.cameras.K, width=64, height=64, emotion="audio")
    assert len(ds2) == 25 and ds2[24].emotion.item() == -1 and torch.equal(ds2[24].viewmat[0], vm[24])
    assert torch.equal(ds2[0].background, torch.ones(1, 3, 64, 64)) and ds2[3].blink.item() == 0.0
    ds3 = PredictDataset(short, "mel", cameras=clip, width=32, height=32, background="bc")
    assert ds3[0].background.shape == (1, 3, 32, 32)
    np.testing.assert_allclose(ds3.K[:2], clip.cameras.K[:2] / 2)
    bad = tmp_path / "pose6.npy"
    np.save(bad, np.zeros((10, 6)))
    with pytest.raises(DatasetError, match="pose6.npy"):
        PredictDataset(short, "mel", cameras=bad, K=clip.cameras.K, width=64, height=64)
    with pytest.raises(ValueError, match="unknown emotion"):
        PredictDataset(short, "mel", cameras=clip, emotion="bored")
    assert listing(synth_regular) == before  # inference never writes into the dataset
