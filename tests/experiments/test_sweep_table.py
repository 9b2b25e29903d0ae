"""The sweep → table path for real (issue 16 item 3): ``scripts/sweep_ablation.sh`` at tiny scale trains
every ablation row, each run scores its best checkpoint on the held-out test clips with evaluators trained
on the evaluator clips, and ``outputs/tables/ablation.md`` has no empty cell; notebook 02 runs on those runs."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
ROWS = {"paper_mead": ("fusion", "diagonal"), "abl_prior_none": ("prior", "none"),
        "abl_emotion_none": ("emotion", "none"), "abl_fusion_uniform": ("fusion", "uniform"),
        "abl_fusion_concat": ("fusion", "concat"), "abl_uncertainty_aleatoric": ("uncertainty", "aleatoric"),
        "abl_uncertainty_epistemic": ("uncertainty", "epistemic"), "abl_heads_single": ("heads", "single"),
        "abl_fusion_fullcov": ("fusion", "full_cov"), "baseline_talkinggaussian": ("fusion", "concat")}


@pytest.mark.slow
def test_sweep_script_fills_every_cell_of_the_ablation_table(synth_emotional_roles, tmp_path):
    env = dict(os.environ)
    env.update({"SCALE": "tiny", "SEEDS": "0", "UA3DTALK_ROOT": str(tmp_path), "PY": sys.executable,
                "WANDB_MODE": "offline", "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1",
                "TORCH_HOME": str(tmp_path / "torch")})  # no AlexNet weights here: LPIPS is the labelled stand-in
    p = subprocess.run(["bash", str(REPO / "scripts" / "sweep_ablation.sh"), "local", *(
        "trainer.enable_progress_bar=false", "+trainer.enable_model_summary=false", "callbacks=none",
        f"data.root={synth_emotional_roles}", "stages=[face]", "stage_steps.face=2")],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=1500)
    assert p.returncode == 0, p.stdout[-4000:] + p.stderr[-4000:]
    runs = tmp_path / "outputs" / "runs" / "tiny"
    for name, (key, variant) in ROWS.items():
        found = list(runs.glob(f"{name}+*/synth0/seed0/metrics.json"))
        assert len(found) == 1, f"{name}: {found}"
        m = json.loads(found[0].read_text())
        assert m["experiment"] == name and m["components"][key] == variant
        for k in ("test/psnr", "test/lmd", "test/sync_c", "test/acc_emo", "test/lpips_randbackbone"):
            assert math.isfinite(m[k]), (name, k)
        assert set(m["eval_protocol"]["evaluator_clips"]).isdisjoint(m["eval_protocol"]["test_clips"])
        assert m["best_checkpoint"]["path"].endswith("best.ckpt")
    table = (tmp_path / "outputs" / "tables" / "ablation.md").read_text()
    rows = [ln for ln in table.splitlines() if ln.startswith("|") and "---" not in ln]
    header, body = rows[0], rows[1:]
    assert "LPIPS (random AlexNet" in header and "E-FID (landmark)" in header and "Acc_emo" in header
    ours = [r for r in body if not r.startswith("| [")]  # published rows (cited) come after ours
    assert len(ours) >= len(ROWS), table
    for r in ours[:len(ROWS)]:
        cells = [c.strip() for c in r.strip("|").split("|")]
        assert all(c and c != "—" for c in cells), f"empty cell in {r!r}\n{table}"
    assert (tmp_path / "outputs" / "tables" / "ablation.tex").is_file()
    assert "sweep_ablation:" in p.stdout and " s wall" in p.stdout

    # notebook 02 on these real runs
    from test_notebooks import _execute, _text  # this directory is on sys.path (pytest's prepend import mode)

    nb = _execute("02_ablations.ipynb", {"UA3DTALK_NB_RUNS": str(runs), "UA3DTALK_NB_OUT": str(tmp_path / "nb"),
                                                 "MPLBACKEND": "Agg"}, tmp_path)
    text = _text(nb)
    assert f"{len(ROWS)} runs under" in text and "UA-3DTalk (full)" in text
    assert (tmp_path / "nb" / "ablation.png").is_file()


def test_local_sweep_runs_the_seeds_one_after_the_other_with_a_table_after_each(tmp_path):
    """``scripts/sweep_ablation.sh`` locally: every row of seed 0, then of seed 1 (one multirun per seed), the table
    written after each seed — a one-seed table early in an hours-long CPU sweep. A stand-in Python records the
    calls."""
    log = tmp_path / "calls.txt"
    fake = tmp_path / "py"
    fake.write_text("#!/usr/bin/env bash\n"
                    f'echo "$*" >> {log}\n'
                    'for ((i=1;i<=$#;i++)); do if [ "${!i}" = "--out" ]; then\n'
                    '  j=$((i+1)); echo "| t |" > "${!j}"\n'
                    'fi; done\n')
    fake.chmod(0o755)
    env = {**os.environ, "PY": str(fake), "SEEDS": "0,1", "UA3DTALK_ROOT": str(tmp_path)}
    p = subprocess.run(["bash", str(REPO / "scripts" / "sweep_ablation.sh"), "local", "x=1"], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    calls = log.read_text().splitlines()
    kinds = ["train" if "ua3dtalk.cli.train" in c else "tables" for c in calls]
    assert kinds == ["train", "tables", "tables", "train", "tables", "tables"]
    assert [c.split("seed=")[1].split()[0] for c in calls if "cli.train" in c] == ["0", "1"]
    assert all("grid=ablation" in c and "scale=demo" in c and "resume=true" in c and c.endswith("x=1")
               for c in calls if "cli.train" in c)
    assert "sweep_ablation: seed 0 done" in p.stdout and " s wall" in p.stdout


def _grid_rows() -> list[str]:
    grid = yaml.safe_load((REPO / "experiments" / "grid" / "ablation.yaml").read_text())
    return grid["hydra"]["sweeper"]["params"]["experiment"].split(",")


def test_local_sweep_with_jobs_runs_every_row_once_as_its_own_process(tmp_path):
    """``JOBS=2``: the grid's rows are a queue worked by two processes at a time (one single run per row and
    seed, on nproc/2 threads, its output in outputs/sweep-logs/), the table after each seed; a failing run
    makes the sweep fail after the others, naming the run and its log."""
    log = tmp_path / "calls.txt"
    fake = tmp_path / "py"
    fake.write_text("#!/usr/bin/env bash\n"
                    f'echo "$* threads=$OMP_NUM_THREADS" >> {log}\n'
                    'for a in "$@"; do [ "$a" = "experiment=$FAIL_ROW" ] && { echo boom; exit 3; }; done\n'
                    'for ((i=1;i<=$#;i++)); do if [ "${!i}" = "--out" ]; then\n'
                    '  j=$((i+1)); echo "| t |" > "${!j}"\n'
                    'fi; done\n')
    fake.chmod(0o755)
    env = {**os.environ, "PY": str(fake), "SEEDS": "0,1", "JOBS": "2", "UA3DTALK_ROOT": str(tmp_path), "FAIL_ROW": ""}
    p = subprocess.run(["bash", str(REPO / "scripts" / "sweep_ablation.sh"), "local", "x=1"], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    calls = log.read_text().splitlines()
    train = [c for c in calls if "ua3dtalk.cli.train" in c]
    rows = _grid_rows()
    for s in ("0", "1"):
        ran = sorted(c.split("experiment=")[1].split()[0] for c in train if f"seed={s} " in c)
        assert ran == sorted(rows), ran
    assert all(" -m " not in c and "scale=demo" in c and "resume=true" in c and "x=1 threads=" in c for c in train)
    threads = max(1, (os.cpu_count() or 1) // 2)
    assert all(c.endswith(f"threads={threads}") for c in train)
    assert sum("cli.tables" in c for c in calls) == 4  # md + tex after each seed
    assert len(list((tmp_path / "outputs" / "sweep-logs" / "demo" / "seed1").glob("*.log"))) == len(rows)
    assert "sweep_ablation: seed 1 done" in p.stdout and f"{rows[-1]} seed1 done" in p.stdout

    log.unlink()
    p = subprocess.run(["bash", str(REPO / "scripts" / "sweep_ablation.sh"), "local"], cwd=tmp_path,
                       env={**env, "SEEDS": "0", "FAIL_ROW": rows[1]}, capture_output=True, text=True, timeout=120)
    assert p.returncode != 0
    assert f"{rows[1]} seed0 FAILED (exit 3" in p.stderr and "boom" in (
        tmp_path / "outputs" / "sweep-logs" / "demo" / "seed0" / f"{rows[1]}.log").read_text()
    assert sum("cli.train" in c for c in log.read_text().splitlines()) == len(rows)  # the others still ran
    bad = subprocess.run(["bash", str(REPO / "scripts" / "sweep_ablation.sh"), "local"], cwd=tmp_path,
                         env={**env, "JOBS": "two"}, capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "JOBS" in bad.stderr
