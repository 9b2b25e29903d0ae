"""Run identity (issue 16 item 2, DESIGN §9.1): a run directory, a wandb run and a table row stand for one
configuration. Overrides that change what is trained make a variant of their own; a run never starts
over another one (exit 2, nothing changed); a resume with another configuration is refused."""
from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import pytest

from ua3dtalk.cli.identity import (RunExistsError, claim_run_dir, config_differences, identity_overrides,
                                   variant_name)
from ua3dtalk.cli.train import compose, run

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::DeprecationWarning")

QUIET = ["trainer.enable_progress_bar=false", "+trainer.enable_model_summary=false", "callbacks=none"]


def _tree(root: Path) -> dict[str, str]:
    """Every file under ``root`` → sha256 of its bytes (and its mtime), to show nothing changed."""
    out = {}
    for p in sorted(root.rglob("*")):
        if p.is_file():
            out[str(p.relative_to(root))] = hashlib.sha256(p.read_bytes()).hexdigest() + f"@{p.stat().st_mtime_ns}"
    return out


# --------------------------------------------------------------------------------------------------
# the variant name
# --------------------------------------------------------------------------------------------------


def test_variant_leaves_out_where_and_how_a_run_executes():
    assert variant_name([]) == ""
    assert variant_name(["experiment=smoke", "seed=3", "scale=demo", "launcher=slurm", "trainer=ddp",
                         "trainer.devices=4", "logger=wandb", "paths.root=/x", "resume=true", "name=foo",
                         "data.subject=M030", "callbacks=metrics", "+trainer.enable_model_summary=false",
                         "hydra.launcher.partition=a100", "val_every=5", "checkpoint_every=2",
                         "cpu_allocator=system"]) == ""


def test_variant_is_sorted_deterministic_and_tells_configurations_apart():
    a = variant_name(["model.lr_net=1e-3", "model/deformation/fusion=uniform"])
    assert a == variant_name(["model/deformation/fusion=uniform", "model.lr_net=1e-3", "seed=1"])
    assert a == "+model.deformation.fusion-uniform+model.lr_net-1e-3"
    names = {variant_name([f"model.lr_net={lr}", f"model/deformation/fusion={f}"])
             for lr in ("1e-3", "2e-3", "5e-3") for f in ("diagonal", "uniform")}
    assert len(names) == 6  # the 6-job sweep: 6 folders
    assert identity_overrides(["+model.x=1", "~model.y", "trainer.devices=2"]) == ["+model.x=1", "~model.y"]


def test_long_or_unsafe_variants_are_shortened_with_a_hash():
    long = [f"model.deformation.option_{i}={'x' * 20}" for i in range(6)]
    v = variant_name(long)
    assert len(v) <= 1 + 64 and re.fullmatch(r"\+[A-Za-z0-9._+\-]+-[0-9a-f]{8}", v)
    assert v != variant_name(long[:-1] + ["model.deformation.option_5=" + "y" * 20])  # the hash tells them apart
    odd = variant_name(["data.root=/tmp/a b/c", "stages=[face]"])
    assert re.fullmatch(r"\+[A-Za-z0-9._+\-]+-[0-9a-f]{8}", odd)  # safe in paths and Hydra override values


def test_compose_puts_the_variant_into_the_run_directory(tmp_path, monkeypatch):
    monkeypatch.setenv("UA3DTALK_ROOT", str(tmp_path))
    dirs = {compose(["experiment=smoke", f"model.lr_net={lr}", f"model/deformation/fusion={f}"]).paths.run_dir
            for lr in ("1e-3", "2e-3", "5e-3") for f in ("diagonal", "uniform")}
    assert len(dirs) == 6
    base = compose(["experiment=smoke", "seed=2"])
    assert base.variant == "" and list(base.identity_overrides) == []
    assert Path(base.paths.run_dir) == tmp_path / "outputs" / "runs" / "tiny" / "smoke" / "synth0" / "seed2"
    demo = compose(["experiment=abl_fusion_uniform", "scale=demo"])
    assert Path(demo.paths.run_dir).parts[-4:] == ("demo", "abl_fusion_uniform", "synth0", "seed0")
    assert compose(["experiment=smoke", "logger=wandb"]).logger.wandb.group == "smoke@tiny"
    v = compose(["experiment=smoke", "logger=wandb", "model.lr_net=1e-3"]).logger.wandb
    assert v.group == "smoke+model.lr_net-1e-3@tiny" and v.name.startswith("smoke+model.lr_net-1e-3/")


# --------------------------------------------------------------------------------------------------
# claiming a directory, resume checks
# --------------------------------------------------------------------------------------------------


def test_claim_refuses_a_directory_that_holds_a_run(tmp_path):
    d = tmp_path / "run"
    assert claim_run_dir(d, False, {"experiment": "x"}) is True
    assert json.loads((d / "run.json").read_text())["experiment"] == "x"
    with pytest.raises(RunExistsError, match="already holds a run.*resume=true"):
        claim_run_dir(d, False, {"experiment": "x"})
    assert claim_run_dir(d, True, {"experiment": "x"}) is False  # a resume continues it
    legacy = tmp_path / "legacy"
    (legacy / "checkpoints").mkdir(parents=True)  # a run written before run.json existed
    with pytest.raises(RunExistsError):
        claim_run_dir(legacy, False, {})
    assert claim_run_dir(tmp_path / "fresh", True, {}) is True  # resume=true into nothing starts a run


def test_config_differences_name_the_keys():
    a = {"model": {"face": {"num_points": 300}, "lr_net": 5e-4}, "trainer": {"devices": 1}, "resume": False}
    b = {"model": {"face": {"num_points": 600}, "lr_net": 5e-4}, "trainer": {"devices": 2}, "resume": True}
    assert config_differences(a, b) == ["model.face.num_points: 300 → 600"]
    assert config_differences(a, a) == []
    # the allocator changes the speed, not the result; a run stored before the key existed resumes too
    assert config_differences({**a, "cpu_allocator": "system"}, {**a, "cpu_allocator": "reuse"}) == []
    assert config_differences(a, {**a, "cpu_allocator": "reuse"}) == []


@pytest.mark.slow
def test_a_second_run_into_a_run_directory_is_refused_and_changes_nothing(synth_emotional_small, tmp_path,
                                                                           train_cli, one_thread):
    base = ["experiment=smoke", "scale=tiny", *QUIET, f"data.root={synth_emotional_small}", f"paths.root={tmp_path}",
            "stages=[face]", "stage_steps.face=2"]
    first = run(compose(base))
    rd = Path(first["run_dir"])
    assert first["variant"].startswith("+") and rd.is_dir() and (rd / "run.json").is_file()
    before = _tree(rd)
    p = train_cli(tmp_path, *base, timeout=300)  # the same configuration, resume not given
    assert p.returncode == 2, p.stderr[-2000:]
    err = [ln for ln in p.stderr.splitlines() if ln.strip()]
    assert len(err) == 1 and "already holds a run" in err[0] and "resume=true" in err[0] and "Traceback" not in p.stderr
    assert _tree(rd) == before
    # a resume of this directory with a changed model size is refused, naming the key, and changes nothing
    p = train_cli(tmp_path, *base, "resume=true", f"paths.run_dir={rd}", "model.face.num_points=123", timeout=300)
    assert p.returncode == 2 and "model.face.num_points" in p.stderr and "→ 123" in p.stderr, p.stderr[-2000:]
    assert "Traceback" not in p.stderr
    assert _tree(rd) == before
    # a corrupt record of a finished stage: named, exit 2, no traceback
    (rd / "checkpoints" / "face" / "done.json").write_text("{half a reco")
    p = train_cli(tmp_path, *base, "resume=true", f"paths.run_dir={rd}", timeout=300)
    assert p.returncode == 2 and "done.json" in p.stderr and "Traceback" not in p.stderr, p.stderr[-2000:]
