"""One rule for outputs (issue 18 item 1): an output argument that names one of the command's own inputs, a
file the command would read back, a directory, a path under an existing file, or an unwritable place is
refused before any work, exit 2 with one line naming the argument, and the inputs are left as they were."""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

from ua3dtalk.utils.io import OutputError, check_output


def _digest(*paths: Path) -> list[str]:
    return [hashlib.sha256(p.read_bytes()).hexdigest() + str(p.stat().st_mtime_ns) for p in paths]


def _one_line(capsys) -> str:
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(err) == 1 and "Traceback" not in err[0], err
    return err[0]


def test_check_output_rules(tmp_path):
    a = tmp_path / "a.wav"
    a.write_bytes(b"RIFF")
    link = tmp_path / "link.wav"
    link.symlink_to(a)
    with pytest.raises(OutputError, match=r"out=.*own input audio="):
        check_output(a, "out", {"audio": a})
    with pytest.raises(OutputError, match="own input"):
        check_output(link, "out", {"audio": a})  # the same file through a link
    runs = tmp_path / "runs"
    (runs / "r").mkdir(parents=True)
    with pytest.raises(OutputError, match="read back"):
        check_output(runs / "r" / "metrics.json", "--out", {"--runs": runs}, reads_back=("metrics.json",))
    check_output(runs / "table.md", "--out", {"--runs": runs}, reads_back=("metrics.json",))  # fine
    with pytest.raises(OutputError, match="is a file, not a directory"):
        check_output(a / "x.json", "--json")
    with pytest.raises(OutputError, match="is a directory"):
        check_output(runs, "--out")
    if os.geteuid() != 0:  # root writes anywhere
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o500)
        with pytest.raises(OutputError, match="not writable"):
            check_output(ro / "x.md", "--out")
    with pytest.raises(OutputError, match="MB free"):
        check_output(tmp_path / "x.md", "--out", min_free_bytes=1 << 62)


def test_score_json_over_its_prediction_is_refused(tmp_path, capsys):
    from ua3dtalk.cli.score import main

    pred, gt = tmp_path / "pred.mp4", tmp_path / "gt.mp4"
    pred.write_bytes(b"not really a video")
    gt.write_bytes(b"not really a video either")
    before = _digest(pred, gt)
    assert main([str(pred), str(gt), "--json", str(pred), "--no-progress"]) == 2
    assert "--json" in _one_line(capsys) and _digest(pred, gt) == before


def test_tables_out_over_a_runs_metrics_is_refused(tmp_path, capsys):
    from ua3dtalk.cli.tables import main

    run = tmp_path / "runs" / "r"
    run.mkdir(parents=True)
    mf = run / "metrics.json"
    mf.write_text(json.dumps({"experiment": "paper_mead", "seed": 0, "val/psnr": 30.0}))
    before = _digest(mf)
    assert main(["--runs", str(tmp_path / "runs"), "--table", "ablation", "--out", str(mf)]) == 2
    assert "--out" in _one_line(capsys) and _digest(mf) == before
    other = run / "sub" / "metrics.json"  # would be read as a run by the next call
    assert main(["--runs", str(tmp_path / "runs"), "--table", "ablation", "--out", str(other)]) == 2
    assert not other.exists()
    capsys.readouterr()
    assert main(["--runs", str(tmp_path / "runs"), "--table", "ablation", "--out", str(tmp_path / "t.md")]) == 0


def test_infer_out_over_its_audio_is_refused(tmp_path, capsys):
    from ua3dtalk.cli.infer import main

    ckpt, wav = tmp_path / "m.ckpt", tmp_path / "s.wav"
    ckpt.write_bytes(b"x")
    wav.write_bytes(b"RIFF....")
    before = _digest(ckpt, wav)
    assert main([f"ckpt={ckpt}", f"audio={wav}", f"out={wav}"]) == 2
    assert "out=" in _one_line(capsys) and _digest(ckpt, wav) == before
    assert main([f"ckpt={ckpt}", f"audio={wav}", f"out={ckpt}"]) == 2
    assert _digest(ckpt, wav) == before


def test_video_writer_removes_what_a_killed_run_left(tmp_path):
    """A SIGKILLed ua3dtalk-infer leaves its temporary mp4 (and the muxing one) next to out=; the next write of
    that output removes them."""
    import subprocess
    import sys

    import numpy as np

    from ua3dtalk.utils.io import _HOST as host
    from ua3dtalk.utils.io import write_video

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    out = tmp_path / "me.mp4"
    stale = [tmp_path / f".me.mp4.tmp-{host}-{dead}-abc123.mp4", tmp_path / f".me.mp4.tmp-{host}-{dead}-abc123.mux.mp4"]
    for p in stale:
        p.write_bytes(b"half an mp4")
    write_video(out, [np.zeros((16, 16, 3), np.uint8)] * 3, fps=25)
    assert out.is_file() and not any(p.exists() for p in stale)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["me.mp4"]


def test_check_output_dir_rules(tmp_path):
    from ua3dtalk.utils.io import check_output_dir

    data = tmp_path / "data"
    (data / "clip").mkdir(parents=True)
    (data / "clip" / "aud.wav").write_bytes(b"RIFF")
    with pytest.raises(OutputError, match=r"--out=.*own input --data="):
        check_output_dir(data, "--out", {"--data": data})  # replacing it would delete the input
    with pytest.raises(OutputError, match="own input"):
        check_output_dir(tmp_path, "--out", {"--data": data})  # holds the input
    with pytest.raises(OutputError, match="inside the input"):
        check_output_dir(data / "teacher", "--out", {"--data": data})
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(OutputError, match="not a directory"):
        check_output_dir(f, "--out")
    with pytest.raises(OutputError, match="is a file, not a directory"):
        check_output_dir(f / "sub" / "dir", "--out")
    with pytest.raises(OutputError, match="MB free"):
        check_output_dir(tmp_path / "new", "--out", min_free_bytes=1 << 62)
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "thesis.tex").write_text("mine")
    with pytest.raises(OutputError, match="non-empty directory"):
        check_output_dir(foreign, "--out", own=lambda d: (d / "manifest.json").is_file())
    (foreign / "manifest.json").write_text("{}")  # its own earlier output: accepted
    assert check_output_dir(foreign, "--out", own=lambda d: (d / "manifest.json").is_file()) == foreign
    assert check_output_dir(tmp_path / "a" / "b", "paths.run_dir") == tmp_path / "a" / "b"
    assert not (tmp_path / "a").exists()  # a check creates nothing
    if os.geteuid() != 0:  # root writes anywhere
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o500)
        with pytest.raises(OutputError, match="not writable"):
            check_output_dir(ro / "x", "--out")


def test_directory_outputs_of_the_commands_are_checked_before_work(tmp_path, capsys, regular):
    """evaluators / synth / teacher --out and the training run directory: under a file, inside or around the
    dataset, or a foreign non-empty directory → exit 2 with one line naming the argument, nothing changed."""
    from ua3dtalk.cli import evaluators, synth, teacher

    f = tmp_path / "file"
    f.write_text("x")
    before = sorted((p.relative_to(regular), p.stat().st_mtime_ns) for p in regular.rglob("*"))
    for main, args in ((evaluators.main, ["train", "--data", str(regular), "--out", str(f / "ev")]),
                       (evaluators.main, ["train", "--data", str(regular), "--out", str(regular / "ev")]),
                       (synth.main, ["--out", str(f / "synth"), "--preset", "tiny"]),
                       (teacher.main, ["--data", str(regular), "--out", str(regular.parent), "--force"])):
        assert main(args) == 2, args
        assert "--out" in _one_line(capsys)
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    assert evaluators.main(["train", "--data", str(regular), "--out", str(foreign)]) == 2
    assert "non-empty directory" in _one_line(capsys)
    assert sorted(p.name for p in foreign.iterdir()) == ["notes.txt"]
    assert sorted((p.relative_to(regular), p.stat().st_mtime_ns) for p in regular.rglob("*")) == before


def test_train_run_dir_under_a_file_is_refused_before_work(tmp_path):
    import subprocess
    import sys

    from ua3dtalk.cli.train import config_dir

    f = tmp_path / "file"
    f.write_text("x")
    env = {**os.environ, "WANDB_MODE": "offline", "HF_HUB_OFFLINE": "1", "UA3DTALK_CONFIG_DIR": str(config_dir())}
    r = subprocess.run([sys.executable, "-m", "ua3dtalk.cli.train", "experiment=smoke", f"paths.root={tmp_path}",
                        f"paths.run_dir={f / 'run'}"], cwd=tmp_path, env=env, capture_output=True, text=True,
                       timeout=300)
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert r.returncode == 2 and len(lines) == 1 and "paths.run_dir" in lines[0], r.stderr[-2000:]
    assert f.read_text() == "x"


def test_claim_run_dir_checks_the_place(tmp_path):
    from ua3dtalk.cli.identity import claim_run_dir

    data = tmp_path / "data"
    data.mkdir()
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(OutputError, match="paths.run_dir"):
        claim_run_dir(f / "run", False, {})
    with pytest.raises(OutputError, match="inside the input data.root"):
        claim_run_dir(data / "run", False, {}, {"data.root": data})
    assert claim_run_dir(tmp_path / "run", False, {}, {"data.root": data})
    assert (tmp_path / "run" / "run.json").is_file()


def test_tables_count_a_run_reached_twice_once(tmp_path, capsys):
    from ua3dtalk.reporting.runs import find_runs

    run = tmp_path / "runs" / "r"
    run.mkdir(parents=True)
    (run / "metrics.json").write_text(json.dumps({"experiment": "paper_mead", "seed": 0, "val/psnr": 30.0}))
    link = tmp_path / "alias"
    link.symlink_to(tmp_path / "runs")
    runs = find_runs([tmp_path / "runs", run, run / "metrics.json", link])
    assert len(runs) == 1


def test_feature_cache_without_room_or_rights_is_named_before_extraction(regular, monkeypatch):
    """A read-only or full dataset directory: the feature cache is refused naming the cache file, before the
    extractor runs, and the dataset is left as it was."""
    import shutil as _shutil
    from collections import namedtuple

    from ua3dtalk.data import audio
    from ua3dtalk.data.extractors import make_extractor
    from ua3dtalk.data.formats import DatasetError

    calls = []

    class Spy:
        def __init__(self, inner):
            self.inner, self.name = inner, inner.name

        def describe(self):
            return self.inner.describe()

        def __call__(self, x, progress=None):
            calls.append(1)
            return self.inner(x, progress=progress)

    ex = Spy(make_extractor("mel"))
    before = sorted(p.name for p in regular.iterdir())
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(_shutil, "disk_usage", lambda p: usage(1 << 30, 1 << 30, 1 << 20))
    with pytest.raises(DatasetError, match=r"aud_mel.*MB free"):
        audio.extract_features(regular, ex, force=True)
    monkeypatch.undo()
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, m: False if Path(p) == regular else real_access(p, m))
    with pytest.raises(DatasetError, match=r"aud_mel.*not writable"):
        audio.extract_features(regular, ex, force=True)
    assert not calls and sorted(p.name for p in regular.iterdir()) == before
