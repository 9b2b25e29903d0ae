"""``launcher=slurm`` submits (issue 16 item 1): a Hydra multirun through the real submitit launcher against
a stand-in ``sbatch``/``srun``/``sacct`` on PATH (``fake_slurm.py``): one array task per job, the GPUs,
tasks, nodes and time asked for, the job script's environment set-up intact, and every job's run in a
directory of its own."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from ua3dtalk.cli.train import compose

from fake_slurm import install, read_log  # tests/cli is on sys.path (pytest's prepend import mode)

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::DeprecationWarning")

QUIET = ["trainer.enable_progress_bar=false", "+trainer.enable_model_summary=false", "callbacks=none"]


def _train(cwd: Path, env: dict, *args: str, timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ua3dtalk.cli.train", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)


def _env(tmp_path: Path, mode: str) -> tuple[dict, Path]:
    from ua3dtalk.cli.train import config_dir

    log = tmp_path / "slurm.jsonl"
    env = install(tmp_path / "bin", log)
    env.update({"WANDB_MODE": "offline", "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1",
                "UA3DTALK_CONFIG_DIR": str(config_dir()), "FAKE_SLURM_MODE": mode})
    return env, log


def test_slurm_config_composes_with_explicit_devices(tmp_path, monkeypatch):
    """The launcher config resolves: the job's shell set-up reaches the script as written, trainer=ddp asks for a
    number of GPUs."""
    from hydra import compose as h_compose
    from hydra import initialize_config_dir

    from ua3dtalk.cli.train import config_dir

    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        ddp = h_compose("train", ["launcher=slurm", "trainer=ddp"], return_hydra_config=True)
        cpu = h_compose("train", ["launcher=slurm"], return_hydra_config=True)
        bad = h_compose("train", ["launcher=slurm", "trainer=ddp", "trainer.devices=-1"], return_hydra_config=True)
    assert list(ddp.hydra.launcher.setup) == ['[ -n "$WANDB_MODE" ] || export WANDB_MODE=offline']
    assert ddp.trainer.devices == 1 and ddp.hydra.launcher.gpus_per_node == 1 and ddp.hydra.launcher.tasks_per_node == 1
    assert cpu.hydra.launcher.gpus_per_node == 0 and cpu.hydra.launcher.tasks_per_node == 1
    with pytest.raises(Exception, match="trainer.devices must be a number"):
        _ = bad.hydra.launcher.gpus_per_node
    assert compose(["launcher=slurm"]).trainer.devices == 1


@pytest.mark.slow
def test_multirun_submits_one_array_task_per_job_and_every_job_trains(synth_emotional_small, tmp_path):
    env, log = _env(tmp_path, "run")
    p = _train(tmp_path, env, "-m", "experiment=smoke", "scale=tiny", *QUIET, "launcher=slurm", "seed=0,1",
               "model.lr_net=1e-3,2e-3", f"data.root={synth_emotional_small}", f"paths.root={tmp_path}",
               "stages=[face]", "stage_steps.face=1", "hydra.launcher.timeout_min=30")
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    subs = read_log(log)
    assert len(subs) == 1, subs  # one sbatch: a job array
    sub = subs[0]
    assert sub["tasks"] == [0, 1, 2, 3]  # one array task per job (2 seeds × 2 learning rates)
    f = sub["flags"]
    assert f["time"] == "30" and f["ntasks-per-node"] == "1" and f["nodes"] == "1"
    assert f.get("gpus-per-node", "0") == "0"  # a CPU trainer asks for no GPU
    assert f["array"].startswith("0-3")
    assert '[ -n "$WANDB_MODE" ] || export WANDB_MODE=offline' in sub["script"]
    runs = sorted((tmp_path / "outputs" / "runs" / "tiny").glob("smoke+*/synth0/seed*/metrics.json"))
    assert len(runs) == 4, runs  # four configurations, four directories
    for mf in runs:
        m = json.loads(mf.read_text())
        assert m["val/psnr"] > 5 and any(o.startswith("model.lr_net=") for o in m["identity_overrides"])
    assert len({json.loads(mf.read_text())["variant"] for mf in runs}) == 2


@pytest.mark.slow
def test_ddp_asks_for_its_gpus_tasks_nodes_and_time(tmp_path):
    """trainer=ddp with 4 devices on 2 nodes: the job asks SLURM for 4 GPUs and 4 tasks per node on 2 nodes."""
    env, log = _env(tmp_path, "record")
    p = _train(tmp_path, env, "-m", "experiment=paper_mead", "launcher=slurm", "trainer=ddp",
               "trainer.devices=4", "trainer.num_nodes=2", "hydra.launcher.timeout_min=90", "seed=0,1",
               f"paths.root={tmp_path}", timeout=300)
    assert p.returncode != 0  # the stand-in runs nothing in record mode
    (sub,) = read_log(log)
    f = sub["flags"]
    assert (f["gpus-per-node"], f["ntasks-per-node"], f["nodes"], f["time"]) == ("4", "4", "2", "90")
    assert sub["tasks"] == [0, 1]
    # all visible GPUs (-1) cannot be asked of SLURM: refused before anything is submitted
    env, log2 = _env(tmp_path / "b", "record")
    (tmp_path / "b").mkdir(exist_ok=True)
    p = _train(tmp_path / "b", env, "-m", "experiment=paper_mead", "launcher=slurm", "trainer=ddp",
               "trainer.devices=-1", f"paths.root={tmp_path / 'b'}", timeout=300)
    assert p.returncode != 0 and "trainer.devices" in p.stderr and read_log(log2) == []
