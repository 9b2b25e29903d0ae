"""``ua3dtalk-teacher`` (issue [3/6] item 6) on the tiny synthetic emotional set: trains the three-branch
emotion teacher, writes a directory that ``load_teacher`` and ``experiment=paper_hdtf`` read, with a
manifest; refuses to overwrite; bad input gives one line and exit 2.

The trained run uses ``--val-fraction 0.34 --test-fraction 0`` (2 training and 1 held-out clip per emotion):
with the default MEAD fractions the 3-clip-per-emotion fixture leaves one training clip per emotion — one
utterance, which cannot generalise — so the default split is checked without training
(:func:`test_default_split_never_trains_on_test_clips`).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

ARGS = ["--feature", "mel", "--epochs", "3", "--batch-size", "16", "--seed", "0", "--no-progress",
        "--val-fraction", "0.34", "--test-fraction", "0"]


def _run(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
           "TRANSFORMERS_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "ua3dtalk.cli.teacher", *args], env=env, capture_output=True,
                          text=True, timeout=timeout)


def _leftovers(out: Path) -> list[str]:
    """Staging directories / temporaries of ``out`` left next to it."""
    return [p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.")]


@pytest.fixture(scope="module")
def trained(synth_emotional_small, tmp_path_factory):
    """One run of the command (≈ 10 s on one core) over an existing directory, with --force."""
    out = tmp_path_factory.mktemp("teacher") / "emotion_mead"
    out.mkdir()
    (out / "old.txt").write_text("replaced by --force")
    r = _run("--data", str(synth_emotional_small), "--out", str(out), "--force", *ARGS)
    assert r.returncode == 0, r.stderr[-3000:]
    return out, r


def test_writes_a_loadable_teacher_with_a_manifest(trained, synth_emotional_small):
    from ua3dtalk.data.splits import clip_key, split_emotional_clips
    from ua3dtalk.data.loading import load_emotional
    from ua3dtalk.models.emotion import EMOTIONS, EmotionEncoder, load_teacher

    out, r = trained
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "teacher.json", "teacher.safetensors"]
    assert _leftovers(out) == []  # the staging directory was moved into place
    teacher = load_teacher(out)
    assert isinstance(teacher.model, EmotionEncoder) and teacher.model.branches == ("mel", "mfcc", "w2v")
    assert teacher.input == "both"
    logits, emb = teacher(waveform=torch.randn(3, 32000) * 0.1, w2v=torch.randn(3, 50, 80))
    assert logits.shape == (3, len(EMOTIONS)) == (3, 8) and emb.shape == (3, 128)
    assert bool(torch.isfinite(logits).all())

    m = json.loads((out / "manifest.json").read_text())
    for k in ("dataset", "clips", "heldout_clips", "accuracy", "epochs", "seed", "created"):
        assert k in m, k
    assert m["epochs"] == 3 and m["seed"] == 0 and m["feature"] == "mel" and m["w2v_channels"] == 80
    clips = list(load_emotional(synth_emotional_small).clips)
    roles = split_emotional_clips(clips, 0.34, seed=0, test_fraction=0.0)
    assert m["clips"] == [clip_key(clips[i]) for i in roles["train"]]  # the avatar's train clips only
    assert m["heldout_clips"] == [clip_key(clips[i]) for i in roles["val"]]
    assert not set(m["clips"]) & set(m["heldout_clips"]) and len(m["clips"]) == 8 and len(m["heldout_clips"]) == 4

    # it learned: the loss fell, and the held-out clips (other utterances and intensities) are classified
    # above chance (4 emotions; measured 0.525 per frame with seed 0, 0.675 / 0.75 with seeds 1 / 2)
    losses = [h["loss"] for h in m["history"]]
    assert len(losses) == 3 and losses[-1] < 0.5 * losses[0], losses
    acc = m["accuracy"]
    assert acc["chance"] == 0.25 and acc["heldout_frames"] == 120
    assert acc["heldout_acc"] > acc["chance"] + 0.1, acc
    assert f"held-out accuracy {acc['heldout_acc']:.3f}" in r.stdout


def test_paper_hdtf_builds_with_the_written_teacher(trained, tmp_path, monkeypatch):
    from ua3dtalk.cli.train import build_model, compose
    from ua3dtalk.models.emotion import EmotionTeacher
    from ua3dtalk.models.emotion.distill import load_teacher

    out, _ = trained
    monkeypatch.setenv("UA3DTALK_ROOT", str(tmp_path))
    cfg = compose(["experiment=paper_hdtf", f"model.emotion.teacher_path={out}"])
    model = build_model(cfg)
    t = model.emotion.teacher
    assert isinstance(t, EmotionTeacher) and not model.emotion.self_distillation
    ref = load_teacher(out).model.state_dict()
    assert all(torch.equal(v, ref[k]) for k, v in t.model.state_dict().items())
    w, f = torch.randn(2, 32000) * 0.1, torch.randn(2, 50, 80)
    t_out, s_out = model.emotion(waveform=w, w2v=f)
    assert t_out[0].shape == s_out.logits.shape == (2, 8)
    assert bool(torch.isfinite(model.emotion.losses(t_out, s_out, torch.tensor([1, 2]))["total"]))


def test_existing_out_is_refused_and_left_untouched(synth_emotional_small, tmp_path, capsys):
    from ua3dtalk.cli.teacher import main

    out = tmp_path / "teacher"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert main(["--data", str(synth_emotional_small), "--out", str(out), *ARGS]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--out" in err and str(out) in err and "--force" in err
    assert [p.name for p in out.iterdir()] == ["keep.txt"] and (out / "keep.txt").read_text() == "mine"
    assert _leftovers(out) == []


def test_bad_data_is_one_line_and_exit_2(tmp_path):
    missing = tmp_path / "no_such_dataset"
    r = _run("--data", str(missing), "--out", str(tmp_path / "t"))
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [f"ua3dtalk-teacher: error: --data: dataset directory not found: {missing}"]
    assert "Traceback" not in r.stderr and not (tmp_path / "t").exists()


@pytest.mark.parametrize("case", ["regular", "empty", "epochs", "batch", "lr", "feature", "argparse"])
def test_bad_inputs(case, synth_emotional_small, tmp_path, capsys):
    from ua3dtalk.cli.teacher import main

    data, extra, expect = str(synth_emotional_small), [], "--data"
    if case == "regular":  # a regular (single-video) dataset has no emotion labels
        (tmp_path / "reg").mkdir()
        (tmp_path / "reg" / "transforms_train.json").write_text("{}")
        data, expect = str(tmp_path / "reg"), "regular"
    elif case == "empty":
        (tmp_path / "empty").mkdir()
        data, expect = str(tmp_path / "empty"), "no clips found"
    elif case in ("epochs", "batch", "lr"):
        flag = {"epochs": "--epochs", "batch": "--batch-size", "lr": "--lr"}[case]
        extra, expect = [flag, "0"], flag
    elif case == "feature":  # a stored feature name that the clips do not have
        extra, expect = ["--feature", "nosuch"], "aud_nosuch.npy"
    else:
        extra, expect = ["--epochs", "many"], "--epochs"
    out = tmp_path / "t"
    args = ["--data", data, "--out", str(out), "--no-progress", "--epochs", "1", *extra]
    if case == "argparse":
        with pytest.raises(SystemExit) as e:
            main(args)
        code = e.value.code
    else:
        code = main(args)
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and err.startswith("ua3dtalk-teacher: error: "), err
    assert expect in err
    assert not out.exists() and _leftovers(out) == []


def test_failure_after_training_leaves_nothing(synth_emotional_small, tmp_path, monkeypatch, capsys):
    """A failure while writing (after training) leaves neither ``--out`` nor a staging directory."""
    import ua3dtalk.models.emotion as emo
    from ua3dtalk.cli.teacher import main

    def broken(path):
        raise ValueError(f"cannot load {path}")

    monkeypatch.setattr(emo, "load_teacher", broken)
    out = tmp_path / "t"
    args = ["--data", str(synth_emotional_small), "--out", str(out), "--threads", "1", *ARGS]
    args[args.index("--epochs") + 1] = "1"
    assert main(args) == 2
    assert "cannot load" in capsys.readouterr().err
    assert not out.exists() and _leftovers(out) == []


def test_default_split_never_trains_on_test_clips(synth_emotional_small):
    """The default (MEAD) fractions are ``experiments/data/mead.yaml``'s, and the clips the teacher trains on
    are exactly the avatar's train clips: never a val, test or evaluator clip."""
    from ua3dtalk.cli.teacher import MEAD_SPLIT, load_splits
    from ua3dtalk.cli.train import config_dir
    from ua3dtalk.data.datamodule import EmotionalTalkingHeadDataModule

    mead = yaml.safe_load((Path(config_dir()) / "data" / "mead.yaml").read_text())
    assert MEAD_SPLIT == {k: mead[k] for k in MEAD_SPLIT}
    dm, roles = load_splits(synth_emotional_small, "mel", 16, 0, MEAD_SPLIT)
    avatar = EmotionalTalkingHeadDataModule(str(synth_emotional_small), feature="mel", stage="emotion", **MEAD_SPLIT)
    avatar.setup()
    ids = {k: [c.clip_id for c in v] for k, v in roles.items()}
    assert ids["train"] == [c.clip_id for c in avatar.split_clips["train"]] and len(ids["train"]) == 4
    assert ids["test"] and not set(ids["train"]) & set(ids["test"] + ids["val"] + ids["evaluator"])
