"""``ua3dtalk-evaluators train`` (issue 5 item 6) on the tiny synthetic emotional set: writes loadable
evaluators (landmark / expression regressors, emotion classifier, SyncNet) with a manifest, in the layout
the metric suite reads; bad input gives a clear error.

:func:`shared_evaluators` trains one evaluator directory per test session (cached under the session's base
temporary directory) that ``test_score_cli.py`` reuses for Sync-C/D — training SyncNet is the expensive part.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

SYNC_STEPS, SYNC_BATCH, EPOCHS = 150, 32, 3


def shared_evaluators(tmp_path_factory, data) -> Path:
    """Evaluators trained on ``data`` once per session (≈ 1–2 min on one loaded core)."""
    from ua3dtalk.cli.evaluators import train_evaluators

    d = tmp_path_factory.getbasetemp() / "shared_evaluators"
    m = d / "manifest.json"
    if not (m.is_file() and "syncnet" in json.loads(m.read_text())["evaluators"]):
        n = torch.get_num_threads()
        try:
            # every clip (the tiny set has no clip to spare for the evaluators): these evaluators score
            # ground truth and arbitrary videos in the tests, never the clips of a run
            train_evaluators(data, d, epochs=EPOCHS, sync_steps=SYNC_STEPS, sync_batch=SYNC_BATCH, seed=0,
                             threads=1, progress=False, clips="all")
        finally:
            torch.set_num_threads(n)
    return d


@pytest.mark.slow
def test_train_writes_loadable_evaluators(synth_emotional_small, tmp_path_factory):
    from ua3dtalk.metrics.evaluator_dir import load_evaluators
    from ua3dtalk.metrics.suite import MetricSuite

    d = shared_evaluators(tmp_path_factory, synth_emotional_small)
    man = json.loads((d / "manifest.json").read_text())
    assert set(man["evaluators"]) == {"landmark", "expression", "emotion", "syncnet"}
    assert man["evaluators"]["syncnet"]["report"]["steps"] == SYNC_STEPS
    assert man["evaluators"]["emotion"]["report"]["val_frames"] > 0  # held-out clips
    ev = load_evaluators(d, "psnr,efid,lmd,blink,acc_emo,sync")
    assert ev.missing == {}
    for name in ("landmark", "expression", "emotion", "syncnet"):
        assert getattr(ev, name) is not None and str(d) in ev.sources[name]
    # the ground truth scored against itself through the suite: LMD 0, E-FID ≈ 0 for every extractor
    from ua3dtalk.metrics.syncnet_training import clips_from_dataset

    clip = clips_from_dataset(synth_emotional_small)[0]
    frames = clip.load_frames()
    suite = MetricSuite(ev, ["psnr", "lmd", "efid", "acc_emo"], warn=False)
    suite.update(frames, frames, landmarks=clip.landmarks, emotion=0, name=clip.name)
    suite.update(frames.flip(0), frames.flip(0), landmarks=clip.landmarks[::-1].copy(), emotion=0)
    out = suite.compute()
    assert out["psnr"] == float("inf") and out["lmd"] == 0 and out["f_lmd"] == 0
    assert abs(out["efid_landmark"]) < 1e-6 and abs(out["efid_regressor"]) < 1e-6
    assert 0 <= out["acc_emo"] <= 1
    assert "landmark regressor" in suite.provenance()["lmd"]


def test_train_bad_input_names_the_problem(tmp_path, capsys):
    from ua3dtalk.cli.evaluators import main

    assert main(["train", "--data", str(tmp_path / "nope"), "--out", str(tmp_path / "o")]) == 2
    assert "nope" in capsys.readouterr().err
    assert main(["train", "--data", str(tmp_path), "--out", str(tmp_path / "o"), "--only", "landmark,fancy"]) == 2
    assert "fancy" in capsys.readouterr().err
    assert main(["show", str(tmp_path)]) == 2
    assert "manifest.json" in capsys.readouterr().err


def test_load_evaluators_reports_missing_files(tmp_path):
    from ua3dtalk.metrics.evaluator_dir import load_evaluators
    from ua3dtalk.metrics.suite import MetricSuite

    ev = load_evaluators(tmp_path, ["psnr", "lmd", "sync"])
    assert set(ev.missing) == {"landmark", "syncnet"}
    assert "landmark_regressor" in ev.missing["landmark"] and "syncnet" in ev.missing["syncnet"]
    with pytest.raises(FileNotFoundError, match="nowhere"):
        load_evaluators(tmp_path / "nowhere")
    suite = MetricSuite(ev, ["psnr", "lmd", "sync"])
    x = torch.rand(8, 3, 64, 64)
    lms = torch.rand(8, 68, 2) * 40 + 10
    with pytest.warns(UserWarning, match="metrics skipped") as rec:
        suite.update(x, x * 0.5, landmarks=lms, audio=torch.zeros(8 * 640).numpy())
        out = suite.compute()
    assert len([w for w in rec if "metrics skipped" in str(w.message)]) == 1
    assert set(out) == {"psnr"}  # nothing made up for the skipped metrics
    suite.reset()
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # second evaluation: no second warning
        suite.update(x, x * 0.5, landmarks=lms)
        suite.compute()


def test_sync_checks_score_held_out_ground_truth_with_own_and_other_audio(synth_emotional_roles, tmp_path, capsys,
                                                                          monkeypatch):
    """Training SyncNet writes ``sync_checks``: the held-out test clips' ground truth scored through the metric
    suite with their own audio and with the next clip's; ``check`` prints the same numbers for the directory
    (writing nothing) and refuses a dataset whose evaluator clips are not the directory's."""
    import shutil

    import numpy as np

    from ua3dtalk.cli import evaluators as cli
    from ua3dtalk.metrics.suite import MetricSuite

    calls = []
    real = MetricSuite.update

    def spy(self, pred, gt, *, audio=None, name=None, **kw):
        calls.append((name, np.asarray(audio).copy()))
        assert torch.equal(torch.as_tensor(pred), torch.as_tensor(gt))  # ground truth against itself
        return real(self, pred, gt, audio=audio, name=name, **kw)

    monkeypatch.setattr(MetricSuite, "update", spy)
    out = tmp_path / "ev"
    m = cli.train_evaluators(synth_emotional_roles, out, only=("syncnet",), sync_steps=5, sync_batch=4, progress=False)
    checks = m["sync_checks"]
    n = len(m["heldout_clips"])
    assert n >= 2 and checks["heldout_clips"] == n and len(calls) == 2 * n
    assert all(np.isfinite(v) for v in checks.values()) and 0.0 <= checks["heldout_offset_ok"] <= 1.0
    own, other = calls[:n], calls[n:]
    assert [c[0] for c in own] == [c[0] for c in other]
    for i in range(n):  # each clip with its own audio, then with the next clip's
        assert np.array_equal(other[i][1], own[(i + 1) % n][1]) and not np.array_equal(other[i][1], own[i][1])
    assert json.loads((out / "manifest.json").read_text())["sync_checks"] == checks

    monkeypatch.undo()
    before = sorted((p.name, p.stat().st_mtime_ns) for p in out.iterdir())
    capsys.readouterr()  # the training's lines
    assert cli.main(["check", str(out), "--data", str(synth_emotional_roles)]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert "emotion_checks" not in printed  # no classifier in this directory
    for k, v in checks.items():
        assert printed["sync_checks"][k] == pytest.approx(v, rel=1e-6, abs=1e-9), k
    assert sorted((p.name, p.stat().st_mtime_ns) for p in out.iterdir()) == before  # nothing written

    other_dir = tmp_path / "other"
    shutil.copytree(out, other_dir)
    man = json.loads((other_dir / "manifest.json").read_text())
    man["clips"] = man["clips"][1:]
    (other_dir / "manifest.json").write_text(json.dumps(man))
    assert cli.main(["check", str(other_dir), "--data", str(synth_emotional_roles)]) == 2
    err = capsys.readouterr().err
    assert "are not those" in err and "\n" == err[-1] and err.count("\n") == 1


def test_sync_checks_leave_out_a_held_out_clip_without_audio(synth_emotional_roles, tmp_path):
    """A held-out clip SyncNet cannot read (here: its aud.wav removed) is left out of the check and named,
    not an error after the training; fewer than two readable clips give no scores."""
    import shutil

    from ua3dtalk.cli.evaluators import evaluator_split, sync_checks
    from ua3dtalk.data.loading import load_dataset
    from ua3dtalk.metrics.syncnet import SyncNet, SyncNetConfig

    data = tmp_path / "synth0"
    shutil.copytree(synth_emotional_roles, data)
    _, heldout = evaluator_split(load_dataset(data))
    assert len(heldout) >= 3
    (heldout[0].root / "aud.wav").unlink()
    torch.manual_seed(0)
    net = SyncNet(SyncNetConfig.small()).eval()
    checks = sync_checks(net, heldout)
    assert checks["heldout_clips"] == len(heldout) - 1
    assert list(checks["skipped_clips"]) == [str(heldout[0].clip_id)]
    assert "aud.wav" in next(iter(checks["skipped_clips"].values()))
    only_one = sync_checks(net, heldout[:2])
    assert "heldout_sync_c" not in only_one and list(only_one["skipped_clips"]) == [str(heldout[0].clip_id)]


def test_evaluators_of_another_schedule_are_retrained_not_reused(synth_emotional_roles, tmp_path, monkeypatch):
    """``ensure_evaluators`` (``test.evaluators=auto`` and the demo) reuses a set trained on the same clips with the
    same schedule, and retrains one of another schedule (other epochs or SyncNet steps: other figures) or of
    unknown schedule; the old set is replaced only by a finished one."""
    import ua3dtalk.cli.evaluators as evcli
    from ua3dtalk.cli.run_eval import _complete, ensure_evaluators
    from ua3dtalk.data.loading import load_dataset
    from ua3dtalk.data.splits import clip_key

    calls = []

    def fake_train(data, out, *, epochs, sync_steps, split=None, **kw):
        calls.append((epochs, sync_steps))
        want = [clip_key(c) for c in evcli.evaluator_split(load_dataset(data), "evaluator", split)[0]]
        evs = {k: {"path": k, "epochs": epochs} for k in evcli.KINDS if k != "syncnet"}
        evs["syncnet"] = {"path": "syncnet.safetensors", "report": {"steps": sync_steps}}
        Path(out).mkdir(parents=True)
        (Path(out) / "manifest.json").write_text(json.dumps({"clips": want, "evaluators": evs}))

    monkeypatch.setattr(evcli, "train_evaluators", fake_train)
    out = tmp_path / "ev"
    ensure_evaluators(synth_emotional_roles, out, {}, 8, 150)
    ensure_evaluators(synth_emotional_roles, out, {}, 8, 150)
    assert calls == [(8, 150)]  # reused
    ensure_evaluators(synth_emotional_roles, out, {}, 8, 1000)
    ensure_evaluators(synth_emotional_roles, out, {}, 12, 1000)
    assert calls == [(8, 150), (8, 1000), (12, 1000)]
    m = json.loads((out / "manifest.json").read_text())
    assert m["evaluators"]["syncnet"]["report"]["steps"] == 1000 and m["evaluators"]["landmark"]["epochs"] == 12
    want = m["clips"]
    assert _complete(out, want) and _complete(out, want, 12, 1000)
    assert not _complete(out, want, 12, 150) and not _complete(out, want, 8, 1000)
    assert not _complete(out, want[1:], 12, 1000)  # other clips
    del m["evaluators"]["syncnet"]["report"]  # a set of unknown schedule is not reused for a given one
    (out / "manifest.json").write_text(json.dumps(m))
    assert _complete(out, want) and not _complete(out, want, 12, 1000)
    (out / "manifest.json").write_text("[1, 2]")
    assert not _complete(out, want)
