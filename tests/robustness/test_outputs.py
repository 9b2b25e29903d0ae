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
