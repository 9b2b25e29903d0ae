"""``ua3dtalk-infer`` renders through the training DataModule's predict path (``predict_dataloader``) and
the LightningModule's ``predict_step``; with a camera-track file it needs no dataset."""
from __future__ import annotations

import json

import numpy as np
import torch


def test_infer_renders_through_predict_step(trained_ckpt, tmp_path, speech, monkeypatch):
    from ua3dtalk.cli import infer as inf
    from ua3dtalk.models.module import UA3DTalk

    calls = []
    real = UA3DTalk.predict_step

    def spy(self, batch, batch_idx=0, dataloader_idx=0):
        out = real(self, batch, batch_idx, dataloader_idx)
        calls.append((type(batch).__name__, tuple(out["images"].shape), self.predict_emotion is not None))
        return out

    monkeypatch.setattr(UA3DTalk, "predict_step", spy)
    res = inf.infer(trained_ckpt, speech, tmp_path / "a.mp4", emotion="happy", intensity=3)
    assert res["frames"] == 10 == len(calls)
    assert all(c[0] == "PredictBatch" and c[1][0] == 1 and c[1][1] == 3 and c[2] for c in calls)


def test_predict_datamodule_matches_the_checkpoints_training_features(trained_ckpt, speech):
    from ua3dtalk.cli import infer as inf

    model = inf.load_model(trained_ckpt)
    dm = inf.predict_datamodule(model.data_config, speech)
    assert dm.feature == (model.data_config.get("feature") or "mel") and dm.clips is not None
    batch = next(iter(dm.predict_dataloader()))
    with torch.no_grad():
        a = model.predict_step(batch)["images"]
        b = model.render_predict(batch)  # the same frames as the module renders them
    assert torch.equal(a, b) and a.shape[0] == 1


def test_a_camera_track_file_needs_no_dataset(trained_ckpt, speech, tmp_path):
    """pose=FILE: the DataModule's predict set-up loads no clip, so the avatar drives without its data."""
    from ua3dtalk.cli import infer as inf
    from ua3dtalk.data import load_dataset

    model = inf.load_model(trained_ckpt)
    clip = load_dataset(model.data_config["root"]).clips[0]
    track = tmp_path / "track.json"
    cams = clip.cameras
    track.write_text(json.dumps({"viewmats": np.asarray(cams.viewmats[:4]).tolist(), "K": np.asarray(cams.K).tolist(),
                                 "width": int(cams.width), "height": int(cams.height)}))
    cfg = {**model.data_config, "root": str(tmp_path / "gone")}
    dm = inf.predict_datamodule(cfg, speech, pose=str(track))
    assert dm.clips is None
    batch = next(iter(dm.predict_dataloader()))
    assert bool((batch.background == 1).all())  # white
    with torch.no_grad():
        img = model.predict_step(batch)["images"]
    assert img.shape[-2:] == (cams.height, cams.width) and torch.isfinite(img).all()
