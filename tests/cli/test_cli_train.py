"""``ua3dtalk-train`` at scale (issue 6 items 2–4): every ablation row trains in a Hydra multirun,
``resume=true`` after an interruption equals an uninterrupted run, a 2-process ``ddp_cpu`` run keeps both
ranks identical, wandb logs offline with group = experiment and tags = components."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from ua3dtalk.callbacks.checkpoint import read_checkpoint
from ua3dtalk.callbacks.loggers import wandb_mode
from ua3dtalk.cli.train import compose, run
from ua3dtalk.curriculum import SimulatedInterruption
from ua3dtalk.data.epoch_sampler import EpochBatchSampler

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::DeprecationWarning")

TINY = ["scale=tiny", "trainer.enable_progress_bar=false", "+trainer.enable_model_summary=false", "callbacks=none"]
"""Overrides of every run here: test scale, quiet trainer, no extra callbacks."""


def _sd(path: Path) -> dict:
    return read_checkpoint(path)["state_dict"]


# --------------------------------------------------------------------------------------------------
# training order: resumable and sharded
# --------------------------------------------------------------------------------------------------


def _factory(n=10, seed=3):
    from torch.utils.data import RandomSampler

    return lambda: RandomSampler(range(n), generator=torch.Generator().manual_seed(seed))


def test_epoch_batch_sampler_fast_forward_reproduces_the_order():
    ref = EpochBatchSampler(_factory(), batch_size=3)
    epochs = [list(ref) for _ in range(3)]
    assert len(epochs[0]) == len(ref) == 4 and sorted(sum(epochs[0], [])) == list(range(10))
    assert epochs[0] != epochs[1]  # a new order every epoch
    resumed = EpochBatchSampler(_factory(), batch_size=3, start_epoch=1, skip_batches=2)
    assert list(resumed) == epochs[1][2:]
    assert list(resumed) == epochs[2]
    at_end = EpochBatchSampler(_factory(), batch_size=3, start_epoch=0, skip_batches=4)  # saved after the last batch
    assert list(at_end) == epochs[1]


def test_epoch_batch_sampler_shards_are_disjoint_and_cover():
    full = sum(list(EpochBatchSampler(_factory(11), batch_size=2)), [])
    shards = [sum(list(EpochBatchSampler(_factory(11), batch_size=2, rank=r, world=2)), []) for r in range(2)]
    assert len(shards[0]) == len(shards[1]) == 6  # padded to a multiple of the world size
    assert sorted(set(shards[0]) | set(shards[1])) == list(range(11))
    assert shards[0] == full[0::2] and shards[1] == (full + full[:1])[1::2]


# --------------------------------------------------------------------------------------------------
# resume
# --------------------------------------------------------------------------------------------------


def test_resume_after_interruption_equals_uninterrupted_run(synth_emotional_small, tmp_path, one_thread):
    """Stop a run mid-stage (after a checkpoint, one step later), resume: same weights, same metrics."""
    base = ["experiment=smoke", *TINY, f"data.root={synth_emotional_small}", "stages=[mouth,face]",
            "stage_steps.mouth=2", "stage_steps.face=5", "checkpoint_every=2"]
    a = run(compose(base + [f"paths.run_dir={tmp_path / 'a'}"]))
    b_dir = tmp_path / "b"
    with pytest.raises(SimulatedInterruption):
        run(compose(base + [f"paths.run_dir={b_dir}", "interrupt_at={stage: face, step: 3}"]))
    assert (b_dir / "checkpoints" / "mouth" / "done.json").is_file()
    assert not (b_dir / "checkpoints" / "face" / "done.json").exists()
    mid = read_checkpoint(b_dir / "checkpoints" / "face" / "last.ckpt")
    assert 0 < mid["global_step"] < 10  # a mid-stage checkpoint (2 optimizer steps per batch)
    b = run(compose(base + [f"paths.run_dir={b_dir}", "resume=true"]))
    assert a["val/psnr"] == b["val/psnr"] and math.isfinite(a["val/psnr"])
    sa = _sd(tmp_path / "a" / "checkpoints" / "face" / "last.ckpt")
    sb = _sd(b_dir / "checkpoints" / "face" / "last.ckpt")
    assert sa.keys() == sb.keys()
    for k in sa:
        assert sa[k].shape == sb[k].shape, k
        assert torch.equal(sa[k], sb[k]), f"{k} differs after resume"
    env = json.loads((b_dir / "env.json").read_text())
    assert {"git_commit", "git_dirty", "packages", "argv"} <= set(env) and env["packages"]["torch"]
    assert (b_dir / "config.yaml").read_text().count("name: smoke")


# --------------------------------------------------------------------------------------------------
# wandb
# --------------------------------------------------------------------------------------------------


def test_wandb_mode_resolution(monkeypatch, tmp_path):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "none"))
    assert wandb_mode("auto") == "offline"  # no key configured
    (tmp_path / "netrc").write_text("machine api.wandb.ai\n  login user\n  password abc\n")
    monkeypatch.setenv("NETRC", str(tmp_path / "netrc"))
    assert wandb_mode("auto") == "online"
    monkeypatch.setenv("NETRC", str(tmp_path / "none"))
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    assert wandb_mode("auto") == "online"
    monkeypatch.setenv("WANDB_MODE", "offline")  # the environment always wins
    assert wandb_mode("auto") == "offline" and wandb_mode("online") == "offline"
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert wandb_mode("auto") == "disabled"
    monkeypatch.delenv("WANDB_MODE")
    with pytest.raises(ValueError, match="mode"):
        wandb_mode("sometimes")


@pytest.mark.slow
def test_wandb_offline_run_has_group_tags_and_summary(synth_emotional_roles, tmp_path, one_thread):
    """An ablation row at tiny scale with wandb: one offline run with the components as tags, validation renders,
    and — every run evaluates — test/* in metrics.json and the summary, and the rendered test clip."""
    rd = tmp_path / "run"
    m = run(compose(["experiment=abl_fusion_uniform", *TINY, "logger=wandb", f"data.root={synth_emotional_roles}",
                     f"paths.run_dir={rd}", f"test.evaluator_dir={tmp_path / 'evaluators'}", "stages=[face]",
                     "stage_steps.face=2"]))
    assert (rd / "logs" / "face" / "metrics.csv").is_file()  # CSV is always on
    import wandb

    # run.finish() hands the records to wandb's service process, which writes the .wandb file asynchronously (read
    # too early, the file can still hold only its 8-byte header on a loaded machine); teardown waits for it to exit
    wandb.teardown()
    files = list((rd / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(files) == 1, "one offline wandb run per training run"
    raw = files[0].read_bytes()
    run_id = (rd / "wandb_id.txt").read_text().strip()
    assert run_id in files[0].name
    for needle in ("abl_fusion_uniform", "fusion:uniform", "prior:learned", "heads:multi", "best/val/psnr",
                   "trainer/global_step", "val/renders", "test/clip", "test/psnr", "abl_fusion_uniform+"):
        assert needle.encode() in raw, f"{needle!r} not in the wandb run"
    assert m["components"]["fusion"] == "uniform" and "fusion:uniform" in m["tags"]
    assert math.isfinite(m["test/psnr"]) and math.isfinite(m["test/lmd"]) and (rd / "test_clip.mp4").is_file()
    assert set(m["eval_protocol"]["evaluator_clips"]).isdisjoint(m["eval_protocol"]["test_clips"])


# --------------------------------------------------------------------------------------------------
# multirun over the ablation table, DDP
# --------------------------------------------------------------------------------------------------


# every ablation row in one Hydra multirun, evaluated, into the table: tests/experiments/test_sweep_table.py


@pytest.mark.slow
def test_ddp_cpu_two_processes_agree(synth_emotional_small, tmp_path, train_cli):
    """trainer=ddp_cpu: 2 gloo processes train mouth + face (with densification); both ranks end with
    bit-identical weights and the same Gaussians."""
    p = train_cli(tmp_path, "experiment=smoke", *TINY, "trainer=ddp_cpu", f"data.root={synth_emotional_small}",
                  f"paths.root={tmp_path}", "name=ddp", "stages=[mouth,face]", "stage_steps.face=4", timeout=900)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    (rd,) = (tmp_path / "outputs" / "runs" / "tiny").glob("ddp+*/synth0/seed0")
    fps = [json.loads((rd / "fingerprints" / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert fps[0]["world_size"] == fps[1]["world_size"] == 2
    assert fps[0]["sha256"] == fps[1]["sha256"]
    assert fps[0]["num_face"] == fps[1]["num_face"] != 300  # densification ran, identically on both ranks
    m = json.loads((rd / "metrics.json").read_text())
    assert m["world_size"] == 2 and math.isfinite(m["val/psnr"])
