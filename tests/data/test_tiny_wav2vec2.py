"""The tiny random wav2vec2 model (``ua3dtalk.data.tiny_wav2vec2``) and the wav2vec2 path of the smoke experiment.

* the model is saved atomically (reused when complete, a foreign directory is never replaced), is the same
  for the same seed, and the real loading code (:class:`Wav2Vec2Extractor` on a local directory, the path of
  ``facebook/wav2vec2-base``) gives [T, hidden] features at 50 Hz; the cache record names the model and
  its weights;
* a missing model is one line naming ``data.feature=mel`` and where the weights were looked for;
* the emotion stage of the ``smoke`` experiment (``ensure_dataset`` → tiny model, ``prepare_data`` → cached
  features, a training step of the emotion distillation) feeds the student the tiny model's features —
  not log-mel — through the audio context (``data.context_feature=wav2vec2``), while the per-frame windows
  (audio view, prior content) stay log-mel.
"""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from dataset_builders import make_emotional
from ua3dtalk.data.audio import extract_features, load_wav
from ua3dtalk.data.extractors import MissingModelError, Wav2Vec2Extractor
from ua3dtalk.data.tiny_wav2vec2 import MARKER, TINY_W2V_SPEC, save_tiny_wav2vec2, tiny_wav2vec2_complete

HIDDEN = TINY_W2V_SPEC["hidden_size"]
CACHE = "aud_w2v_wav2vec2-tiny-random_h2.npy"  # last hidden state (layer -1 = 2) of the tiny model


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return save_tiny_wav2vec2(tmp_path_factory.mktemp("models") / "wav2vec2-tiny-random")


def test_tiny_model_is_saved_reused_and_loaded_by_the_real_code(tiny_dir, tmp_path):
    names = {p.name for p in tiny_dir.iterdir()}
    assert {"config.json", "model.safetensors", "preprocessor_config.json", MARKER} <= names
    assert tiny_wav2vec2_complete(tiny_dir)
    assert not [p for p in tiny_dir.parent.iterdir() if p.name.startswith(".")], "staging directory left behind"
    mtime = (tiny_dir / "model.safetensors").stat().st_mtime_ns
    assert save_tiny_wav2vec2(tiny_dir) == tiny_dir  # complete: reused, not rewritten
    assert (tiny_dir / "model.safetensors").stat().st_mtime_ns == mtime
    other = save_tiny_wav2vec2(tmp_path / "again")  # fixed seed: the same weights
    assert (other / "model.safetensors").read_bytes() == (tiny_dir / "model.safetensors").read_bytes()

    ex = Wav2Vec2Extractor(str(tiny_dir), layer=-1)  # the loading code of a real local checkpoint
    assert ex.hop == 320 and ex.dim == HIDDEN and ex.normalize is True  # preprocessor_config.json read
    assert ex.name == "w2v_wav2vec2-tiny-random_h2"
    t = np.arange(20800) / 16000.0
    wav = (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)
    y = ex(wav[:16000])
    assert y.shape == (50, HIDDEN) and y.dtype == np.float32 and np.isfinite(y).all()  # 1 s → 50 rows: 50 Hz
    assert ex(wav).shape == (math.ceil(20800 / 320), HIDDEN)
    assert float(y.std()) > 0.1
    with pytest.raises(ValueError, match="no trained CTC head"):  # a base model, like facebook/wav2vec2-base
        Wav2Vec2Extractor(str(tiny_dir), layer="logits")


def test_a_foreign_directory_is_never_replaced(tmp_path):
    d = tmp_path / "mine"
    d.mkdir()
    (d / "notes.txt").write_text("not a model")
    with pytest.raises(FileExistsError, match="not a tiny wav2vec2 model"):
        save_tiny_wav2vec2(d)
    assert (d / "notes.txt").read_text() == "not a model"
    half = tmp_path / "half"  # ours but incomplete (weights gone): rebuilt as a whole
    save_tiny_wav2vec2(half)
    (half / "model.safetensors").unlink()
    assert not tiny_wav2vec2_complete(half)
    assert tiny_wav2vec2_complete(save_tiny_wav2vec2(half))


def test_cache_records_which_model_made_the_features(tiny_dir, tmp_path):
    from ua3dtalk.data.synth.generate import cache_features

    root = tmp_path / "e"
    dirs = make_emotional(root, clips=(("angry", 1), ("sad", 2)), n=6)
    paths = cache_features(root, ["wav2vec2"], model=tiny_dir, layer=-1)
    assert sorted(p.parent for p in paths) == sorted(dirs) and all(p.name == CACHE for p in paths)
    for p in paths:
        seq = np.load(p)
        assert seq.shape == (math.ceil(6 * 640 / 320), HIDDEN)
        rec = json.loads(p.with_suffix(".json").read_text())["extractor"]
        assert rec["type"] == "wav2vec2" and rec["model"] == str(tiny_dir) and rec["layer"] == 2
        assert len(rec["weights_sha1"]) == 40
    ex = Wav2Vec2Extractor(str(tiny_dir), layer=-1)
    np.testing.assert_allclose(np.load(paths[0]), ex(load_wav(dirs[0] / "aud.wav")), rtol=1e-5, atol=1e-5)
    assert extract_features(dirs[0], ex) == paths[0]  # same model and weights: the cache is reused


def test_missing_model_is_one_line_naming_the_config_key(tmp_path):
    missing = tmp_path / "models" / "nope"
    with pytest.raises(MissingModelError) as e:
        Wav2Vec2Extractor(str(missing), layer=-1)
    msg = str(e.value)
    assert "\n" not in msg and str(missing) in msg
    assert "data.feature=mel" in msg and "data.extractor_model=DIR" in msg
    with pytest.raises(MissingModelError) as e:
        Wav2Vec2Extractor("nonexistent-org/nonexistent-w2v")
    msg = str(e.value)
    assert "\n" not in msg and "data.feature=mel" in msg and "Hugging Face cache (" in msg


# --------------------------------------------------------------------------------------------------
# the smoke experiment's emotion stage on the tiny model's features
# --------------------------------------------------------------------------------------------------


def _smoke_cfg(tmp_path, root, *extra):
    from ua3dtalk.cli.train import compose

    return compose(["experiment=smoke", f"data.root={root}", f"paths.data_dir={tmp_path / 'data'}",
                    f"paths.run_dir={tmp_path / 'run'}", "data.limit_val_frames=2", "~logger", *extra])


def test_smoke_emotion_stage_trains_on_tiny_wav2vec2_features(tmp_path, one_thread):
    import lightning as L
    from torch.utils.data import DataLoader, Subset

    from ua3dtalk.cli.train import build_datamodule, build_model, fill_data_info
    from ua3dtalk.data.batch import AudioBatch, collate_batches

    root = tmp_path / "emotional"
    make_emotional(root, clips=[(e, k) for e in ("angry", "happy") for k in (1, 2, 3) for _ in range(2)], n=8)
    cfg = _smoke_cfg(tmp_path, root / "M003")
    dm = build_datamodule(cfg)  # ensure_dataset saves the tiny model; prepare_data caches its features
    model_dir = tmp_path / "data" / "models" / "wav2vec2-tiny-random"
    assert tiny_wav2vec2_complete(model_dir)
    assert (dm.feature_name, dm.context_feature_name) == ("mel", "w2v_wav2vec2-tiny-random_h2")
    assert (dm.audio_channels, dm.context_channels) == (80, HIDDEN)  # windows log-mel, context the tiny model
    for clip in dm.clips:
        assert json.loads((clip.root / CACHE).with_suffix(".json").read_text())["extractor"]["model"] == str(model_dir)
    fill_data_info(cfg, dm)

    model = build_model(cfg, "emotion")
    student = model.emotion.student
    assert student.w2v_channels == HIDDEN and student.nets["w2v"].channels == HIDDEN
    assert model.prior.context_channels == HIDDEN and model.prior.in_channels == 80
    dm.stage = "emotion"
    ds = dm.audio_dataset("train")
    loader = DataLoader(Subset(ds, list(range(0, len(ds), max(1, len(ds) // 8)))[:8]), batch_size=8,
                        collate_fn=collate_batches)
    batch = next(iter(loader))
    assert isinstance(batch, AudioBatch) and batch.context.shape[1:] == (50, HIDDEN)
    assert batch.audio.shape[1:] == (16, 80)
    # the student's input really is the tiny model's output (its per-frame 50 Hz rows), not log-mel
    c = dm.clips[int(ds.index[0, 0])]
    seq = Wav2Vec2Extractor(str(model_dir), layer=-1)(load_wav(c.wav_path))
    i = int(batch.frame_index[0])
    np.testing.assert_allclose(batch.context[0, 25].numpy(), seq[2 * i: 2 * i + 2].mean(0), rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="w2v"):  # log-mel (80 channels) does not fit the student
        student(w2v=torch.zeros(2, 50, 80))

    before = {k: v.detach().clone() for k, v in student.state_dict().items()}
    trainer = L.Trainer(max_steps=1, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                        limit_val_batches=0)
    trainer.fit(model, train_dataloaders=loader)
    assert model.stage_step() == 1
    changed = [k for k, v in student.state_dict().items() if not torch.equal(v, before[k])]
    assert any(k.startswith("nets.w2v.") for k in changed), "the w2v branch was not trained"
    assert math.isfinite(float(trainer.callback_metrics["train/loss"]))


def test_smoke_falls_back_to_mel_and_names_the_key_without_weights(tmp_path):
    from hydra.utils import instantiate

    from ua3dtalk.cli.train import build_datamodule, datamodule_kwargs

    root = tmp_path / "emotional"
    make_emotional(root, clips=(("angry", 1), ("sad", 1)), n=4)
    cfg = _smoke_cfg(tmp_path, root / "M003", "data.synth.wav2vec2=null")  # no tiny model is made
    with pytest.raises(MissingModelError) as e:
        build_datamodule(cfg)
    msg = str(e.value)
    assert "\n" not in msg and "data.context_feature=mel" in msg and str(tmp_path / "data" / "models") in msg
    mel = _smoke_cfg(tmp_path, root / "M003", "data.context_feature=mel")  # the key the message names is enough
    kw = datamodule_kwargs(mel)
    assert "extractor_model" not in kw and "extractor_layer" not in kw
    dm = instantiate(kw, _recursive_=False)
    assert dm.feature_name == dm.context_feature_name == "mel"
