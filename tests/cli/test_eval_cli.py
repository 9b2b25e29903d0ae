"""``ua3dtalk-eval ckpt=...`` (issue 5 item 8): a checkpoint of a very short training run is re-loaded from
its stored config, the held-out split is rendered clip by clip in frame order and scored; metrics.json is
written (atomically) with ``<split>/<metric>`` keys and the evaluator of each; bad input → clear errors."""
from __future__ import annotations

import json

import pytest
import torch

from ua3dtalk.cli.eval import evaluate, main
from ua3dtalk.cli.train import compose, run


@pytest.fixture(scope="module")
def short_run(synth_emotional_small, tmp_path_factory):
    rd = tmp_path_factory.mktemp("eval_run") / "run"
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        run(compose(["experiment=smoke", "scale=tiny", "trainer.enable_progress_bar=false",
                     "+trainer.enable_model_summary=false", "callbacks=none", f"data.root={synth_emotional_small}",
                     f"paths.run_dir={rd}", "stages=[face]", "stage_steps.face=2", "~logger"]))
    finally:
        torch.set_num_threads(n)
    return rd


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_eval_writes_metrics_json(short_run, tmp_path):
    ckpt = short_run / "checkpoints" / "face" / "last.ckpt"
    out = tmp_path / "eval"
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        rc = main([f"ckpt={ckpt}", "split=val", f"out={out}", "metrics=psnr,ssim,lpips,lmd",
                   "lpips_random_backbone=true", "max_clips=2", "max_frames=6", "backend=torch"])
    finally:
        torch.set_num_threads(n)
    assert rc == 0
    m = json.loads((out / "metrics.json").read_text())
    for k in ("val/psnr", "val/ssim", "val/lpips_randbackbone", "val/lpips_face_randbackbone"):
        assert k in m and m[k] == m[k], k
    assert 0 < m["val/psnr"] < 60 and 0 < m["val/ssim"] <= 1
    assert "val/lmd" not in m and "lmd" in m["eval"]["val"]["skipped"]  # no evaluators=: skipped, not made up
    assert m["eval"]["val"]["clips"] == 2 and m["eval"]["val"]["frames"] == 12
    assert m["metrics_evaluators"]["val/lpips_randbackbone"].startswith("lpips v0.1 alex, random backbone")
    per_clip = m["eval"]["val"]["per_clip"]
    assert len(per_clip) == 2 and all(c["frames"] == 6 for c in per_clip.values())


def test_eval_bad_input(short_run, tmp_path, capsys):
    assert main([f"ckpt={tmp_path / 'none.ckpt'}"]) == 2
    assert "none.ckpt" in capsys.readouterr().err
    assert main(["data=x"]) == 2
    assert "ckpt" in capsys.readouterr().err
    ckpt = short_run / "checkpoints" / "face" / "last.ckpt"
    assert main([f"ckpt={ckpt}", "split=holdout"]) == 2
    assert "split" in capsys.readouterr().err
    with pytest.raises(FileNotFoundError, match="nowhere"):
        evaluate(ckpt, data=str(tmp_path / "nowhere"), metrics="psnr", progress=False)
    # control=true without an emotion classifier: refused before anything is rendered
    with pytest.raises(ValueError, match="emotion classifier"):
        evaluate(ckpt, split="val", metrics="psnr", control=True, progress=False)


def test_eval_refuses_a_run_config_that_would_run_code(tmp_path, synth_emotional_small):
    """The run's config.yaml is untrusted: a data `_target_` outside ua3dtalk.data is never instantiated."""
    from ua3dtalk.callbacks.checkpoint import CheckpointError
    from ua3dtalk.cli.eval import build_eval_datamodule

    run = tmp_path / "run"
    (run / "checkpoints" / "fuse").mkdir(parents=True)
    ckpt = run / "checkpoints" / "fuse" / "last.ckpt"
    ckpt.write_bytes(b"")
    marker = tmp_path / "pwned"
    (run / "config.yaml").write_text(f"data:\n  _target_: os.system\n  root: {synth_emotional_small}\n"
                                     f"  command: touch {marker}\n")
    with pytest.raises(CheckpointError, match="os.system"):
        build_eval_datamodule(None, ckpt)
    assert not marker.exists()


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_emotion_control_scores(short_run, synth_emotional_small):
    """control=true: one render per requested label, scored against that label. Identical prototypes give
    identical renders (emo_shift 0); distinct prototypes move the face (emo_shift > 0). Needs the classifier."""
    from ua3dtalk.callbacks.metrics import split_sequences
    from ua3dtalk.cli.eval import build_eval_datamodule, emotion_control_scores
    from ua3dtalk.cli.infer import load_model
    from ua3dtalk.metrics.evaluators import EmotionClassifier, EmotionClassifierConfig
    from ua3dtalk.metrics.evaluator_dir import Evaluators

    ckpt = short_run / "checkpoints" / "face" / "last.ckpt"
    model = load_model(ckpt, "torch")
    dm = build_eval_datamodule(model, ckpt)
    ds, seqs = split_sequences(dm, "val", 1, 4)
    torch.manual_seed(0)
    ev = Evaluators(emotion=EmotionClassifier(EmotionClassifierConfig()).eval())
    ctl = model.emotion_control
    names = ["neutral", "happy", "sad"]
    with torch.no_grad():
        ctl.prototypes.zero_()
        ctl.counts.zero_()
        ctl.counts[:, 2] = 1
        ctl.prototypes[:, 2] = torch.randn(ctl.dim)  # every emotion the same embedding
    same = emotion_control_scores(model, ds, seqs, ev, names, stride=2, progress=False)
    assert set(same["per_emotion"]) == set(names)
    assert all(0.0 <= v <= 1.0 for v in same["per_emotion"].values())
    assert same["emo_shift"] == 0.0
    with torch.no_grad():  # distinct embeddings, large enough to move the (barely trained) deformation
        ctl.prototypes[:, 2] = 30 * torch.randn(len(ctl.emotions), ctl.dim)
    diff = emotion_control_scores(model, ds, seqs, ev, names, stride=2, progress=False)
    assert diff["emo_shift"] > 0.0
    # the classifier sees the same frames whatever the label: each frame is right for at most one label
    assert sum(same["per_emotion"].values()) <= 1.0 + 1e-6
    with pytest.raises(ValueError, match="emotion classifier"):
        emotion_control_scores(model, ds, seqs, Evaluators(), names, progress=False)


def _evaluator_dir(path, clips):
    path.mkdir(parents=True)
    (path / "manifest.json").write_text(json.dumps({"evaluators": {}, "clips": clips}))
    return path


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_eval_refuses_evaluators_that_saw_a_scored_clip(short_run, tmp_path, capsys):
    """Evaluators never score clips they were trained on (DESIGN §5.5): refused before rendering, exit 2,
    the clip named; allow_overlap=true scores and the record says so."""
    from ua3dtalk.data.splits import ProtocolError

    ckpt = short_run / "checkpoints" / "face" / "last.ckpt"
    rec = evaluate(ckpt, split="test", out=tmp_path / "ok", metrics="psnr", max_clips=1, max_frames=2,
                   progress=False, evaluators=str(_evaluator_dir(tmp_path / "ev_ok", ["synth0/nowhere/001"])))
    p = rec["eval_protocol"]
    assert p["disjoint"] and p["evaluator_clips"] == ["synth0/nowhere/001"]
    assert p["test_clips"] and not set(p["test_clips"]) & set(p["val_clips"])  # a real test split
    assert not (set(p["train_clips"]) & set(p["test_clips"]))
    assert json.loads((tmp_path / "ok" / "metrics.json").read_text())["eval_protocol"] == p
    seen = p["test_clips"][0]
    bad = _evaluator_dir(tmp_path / "ev_bad", ["synth0/other/001", seen])
    out = tmp_path / "refused"
    assert main([f"ckpt={ckpt}", "split=test", f"evaluators={bad}", f"out={out}", "metrics=psnr"]) == 2
    err = capsys.readouterr().err
    assert seen in err and "allow_overlap" in err and "Traceback" not in err
    assert not out.exists()  # nothing rendered, nothing written
    with pytest.raises(ProtocolError, match="does not record"):
        evaluate(ckpt, split="test", metrics="psnr", progress=False,
                 evaluators=str(_evaluator_dir(tmp_path / "ev_old", None)))
    assert main([f"ckpt={ckpt}", "split=test", f"evaluators={bad}", f"out={out}", "metrics=psnr",
                 "max_clips=1", "max_frames=2", "allow_overlap=true"]) == 0
    assert "optimistic" in capsys.readouterr().out
    m = json.loads((out / "metrics.json").read_text())["eval_protocol"]
    assert m["overlap_allowed"] and m["overlap"] == [seen]


def test_metrics_callback_refuses_an_overlap_at_setup(synth_emotional_small, tmp_path):
    from ua3dtalk.callbacks.metrics import MetricsCallback
    from ua3dtalk.data.datamodule import EmotionalTalkingHeadDataModule
    from ua3dtalk.data.splits import ProtocolError, clip_key

    dm = EmotionalTalkingHeadDataModule(str(synth_emotional_small), val_fraction=0.12, test_fraction=0.22)
    dm.setup("fit")
    val = clip_key(dm.split_clips["val"][0])
    cb = MetricsCallback(metrics="psnr", evaluators=str(_evaluator_dir(tmp_path / "ev", [val])))
    with pytest.raises(ProtocolError, match=val):
        cb.check_protocol(dm)
    cb = MetricsCallback(metrics="psnr", evaluators=str(tmp_path / "ev"), allow_overlap=True)
    with pytest.warns(UserWarning, match="optimistic"):
        assert cb.check_protocol(dm)["overlap"] == [val]


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_eval_by_label_drives_each_clip_with_its_own_label(short_run, tmp_path, monkeypatch, capsys):
    """emotion=label: every clip rendered with the prototype of its own label and intensity, scored under
    ``<split>/label/…`` beside the audio-driven keys (which it leaves alone); refused without prototypes."""
    from ua3dtalk.callbacks.metrics import render_sequence, split_sequences
    from ua3dtalk.cli import infer
    from ua3dtalk.cli.eval import build_eval_datamodule
    from ua3dtalk.constants import EMOTIONS
    from ua3dtalk.metrics.image import psnr

    ckpt = short_run / "checkpoints" / "face" / "last.ckpt"
    assert main([f"ckpt={ckpt}", "split=val", "emotion=sad", "metrics=psnr"]) == 2
    assert "emotion must be audio or label" in capsys.readouterr().err
    # a face-stage checkpoint has no label prototypes yet: refused, the cause named, nothing written
    out = tmp_path / "none"
    assert main([f"ckpt={ckpt}", "split=val", "emotion=label", "metrics=psnr", f"out={out}", "max_clips=1"]) == 2
    assert "prototype" in capsys.readouterr().err and not out.exists()
    model = infer.load_model(ckpt, "torch")
    ctl = model.emotion_control
    torch.manual_seed(0)
    with torch.no_grad():  # distinct prototypes per label and level, large enough to move the deformation
        ctl.counts.fill_(1)
        ctl.prototypes.copy_(30 * torch.randn_like(ctl.prototypes))
    monkeypatch.setattr(infer, "load_model", lambda *a, **k: model)
    out = tmp_path / "eval"
    kw = dict(split="val", out=out, metrics="psnr", max_clips=2, max_frames=4, progress=False)
    audio = evaluate(ckpt, **kw)["val/psnr"]
    evaluate(ckpt, emotion="label", **kw)
    m = json.loads((out / "metrics.json").read_text())
    assert m["val/psnr"] == audio and m["eval"]["val/label"]["emotion"] == "label"
    assert m["val/label/psnr"] != audio
    dm = build_eval_datamodule(model, ckpt)
    ds, seqs = split_sequences(dm, "val", 2, 4)
    assert len({(q.clip.emotion, q.clip.intensity) for q in seqs}) == 2  # two different labels
    for q in seqs:
        with torch.no_grad():
            pred, gt, _, _ = render_sequence(model, ds, q, emotion=ctl.from_label(EMOTIONS[q.clip.emotion],
                                                                                    int(q.clip.intensity)))
        assert m["eval"]["val/label"]["per_clip"][q.name]["psnr"] == pytest.approx(psnr(pred, gt), abs=1e-4)
