"""``scripts/quality_vs.py``: two trees' models scored on the same clips by the same scorer. Predictions another
tree rendered must score exactly like this tree's own renders of them, a changed prediction must change the score,
and predictions of other clips or frames must be refused, not scored."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def qv(load_script):
    return load_script("quality_vs")


@pytest.fixture(scope="module")
def short_run(synth_emotional_roles, tmp_path_factory):
    from ua3dtalk.cli.train import compose, run

    rd = tmp_path_factory.mktemp("qv_run") / "run"
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        run(compose(["experiment=smoke", "scale=tiny", "trainer.enable_progress_bar=false",
                     "+trainer.enable_model_summary=false", "callbacks=none", f"data.root={synth_emotional_roles}",
                     f"paths.run_dir={rd}", "stages=[face]", "stage_steps.face=2", "~logger"]))
    finally:
        torch.set_num_threads(n)
    return rd


@pytest.fixture(scope="module")
def dumped(qv, short_run, tmp_path_factory):
    """The run's test clips rendered by the script's dump program (here with this tree's package)."""
    out = tmp_path_factory.mktemp("qv_pred") / "pred"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-c", qv.DUMP, str(short_run), str(out)], capture_output=True, text=True,
                       env=env, cwd=str(ROOT), timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    assert not out.with_name("pred.partial").exists()
    return out


def _scores(qv, run, pred=None):
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return qv.score(run, None, pred, groups="psnr,ssim")
    finally:
        torch.set_num_threads(n)


@pytest.mark.slow
def test_predictions_of_another_tree_score_like_the_renders(qv, short_run, dumped, tmp_path):
    own = _scores(qv, short_run)
    read = _scores(qv, short_run, dumped)
    assert own["clips"] == read["clips"] and own["frames"] == read["frames"] > 0
    assert read["checkpoint"] == json.loads((short_run / "metrics.json").read_text())["checkpoint"]
    assert abs(own["metrics"]["psnr"] - read["metrics"]["psnr"]) < 0.02  # float16 storage only
    assert abs(own["metrics"]["ssim"] - read["metrics"]["ssim"]) < 1e-3
    # a worse prediction scores worse: the predictions are read, not the run's renders
    bad = tmp_path / "bad"
    bad.mkdir()
    for f in dumped.iterdir():
        (bad / f.name).write_bytes(f.read_bytes())
    first = bad / (read["clips"][0].replace("/", "_") + ".npz")
    z = dict(np.load(first))
    z["pred"] = (z["pred"].astype(np.float32) + 0.2).astype(np.float16)
    np.savez(first, **z)
    assert _scores(qv, short_run, bad)["metrics"]["psnr"] < read["metrics"]["psnr"] - 0.5


@pytest.mark.slow
def test_predictions_of_other_clips_or_frames_are_refused(qv, short_run, dumped, tmp_path):
    other = tmp_path / "other"
    other.mkdir()
    for f in dumped.iterdir():
        (other / f.name).write_bytes(f.read_bytes())
    meta = json.loads((other / "clips.json").read_text())
    (other / "clips.json").write_text(json.dumps({**meta, "clips": meta["clips"][1:]}))
    with pytest.raises(ValueError, match="holds the clips"):
        _scores(qv, short_run, other)
    (other / "clips.json").write_text(json.dumps(meta))
    f = other / (meta["clips"][0].replace("/", "_") + ".npz")
    z = dict(np.load(f))
    np.savez(f, pred=z["pred"][:-1], gt=z["gt"][:-1], label=z["label"])  # a frame short
    with pytest.raises(ValueError, match="has frames"):
        _scores(qv, short_run, other)
    z["gt"] = np.flip(z["gt"], axis=-1).copy()  # the same frame count, other ground truth
    np.savez(f, **z)
    with pytest.raises(ValueError, match="other ground truth"):
        _scores(qv, short_run, other)


def test_summary_pairs_seeds_and_the_table_prints_intervals(qv):
    from scipy import stats

    base = {s: {"metrics": {"psnr": p, "lmd": m}} for s, p, m in ((0, 33.0, 1.0), (1, 33.4, 0.9), (2, 33.2, 1.1))}
    ours = {s: {"metrics": {"psnr": p, "lmd": m}} for s, p, m in ((0, 34.0, 0.8), (1, 34.6, 0.8), (2, 34.0, 0.9))}
    rows = {r["metric"]: r for r in qv.summarise(base, ours)}
    assert set(rows) == {"psnr", "lmd"}
    d = np.array([1.0, 1.2, 0.8])
    half = stats.t.ppf(0.975, 2) * d.std(ddof=1) / np.sqrt(3)
    assert rows["psnr"]["diff_cell"]["mean"] == pytest.approx(1.0)
    assert rows["psnr"]["diff_cell"]["ci95"] == pytest.approx(half)
    assert rows["lmd"]["ours_cell"]["mean"] == pytest.approx(2.5 / 3)
    t = qv.table(list(rows.values()), "abc1234")
    assert "| PSNR, dB | 33.20 ± " in t and "(n=3)" in t and "this tree − abc1234" in t


def test_baseline_split_and_bad_arguments(qv, tmp_path, capsys):
    d = tmp_path / "b" / "experiments" / "data"
    d.mkdir(parents=True)
    (d / "synth_tiny_emotional.yaml").write_text("val_fraction: 0.25\n")
    assert qv.baseline_split(tmp_path / "b") == 0.25
    assert qv.main([str(tmp_path / "w"), "--seeds", "a,b"]) == 2
    assert "--seeds" in capsys.readouterr().err
    with pytest.raises(FileNotFoundError, match="no finished run"):
        qv.final_checkpoint(tmp_path)
