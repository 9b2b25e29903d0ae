"""Typed, range-checked ``ua3dtalk-train`` settings (issue 18 item 2): a bad value is refused before any work
starts, with a message naming the key, and nothing is written."""
from __future__ import annotations

import pytest

from ua3dtalk.cli.config_checks import check_train_config
from ua3dtalk.cli.train import compose, run

BAD = [
    ("seed=abc", "seed"), ("seed=-1", "seed"), ("val_every=0", "val_every"),
    ("checkpoint_every=-1", "checkpoint_every"),
    ("stage_steps.face=-3", "stage_steps"), ("stages=[face,face]", "stages"), ("stages=[]", "stages"),
    ("model.lr_net=nan", "model.lr_net"), ("model.lr_grid=-1", "model.lr_grid"), ("model.lr_net=0", "model.lr_net"),
    ("data.root=null", "data.root"), ("interrupt_at={stage: x, step: 1}", "interrupt_at.stage"),
    ("interrupt_at={stage: face, step: -2}", "interrupt_at.step"), ("resume=maybe", "resume"),
    ("checkpoint_monitor=psnr", "checkpoint_monitor"), ("model.face.num_points=inf", "model.face.num_points"),
    ("cpu_allocator=tcmalloc", "cpu_allocator"),
]


@pytest.mark.parametrize("override,key", BAD, ids=[b[0] for b in BAD])
def test_bad_setting_is_refused_naming_the_key_before_any_work(override, key, tmp_path, monkeypatch):
    monkeypatch.setenv("UA3DTALK_ROOT", str(tmp_path))
    cfg = compose(["experiment=smoke", override])
    with pytest.raises(ValueError) as e:
        check_train_config(cfg)
    assert str(e.value).startswith(key + ":") or f"; {key}:" in str(e.value), str(e.value)
    with pytest.raises(ValueError):
        run(cfg)
    assert not (tmp_path / "outputs").exists()  # refused before the run directory or a dataset was made


def test_good_settings_pass():
    check_train_config(compose(["experiment=smoke"]))
    check_train_config(compose(["experiment=paper_mead", "checkpoint_every=5", "interrupt_at={stage: face, step: 0}"]))


def test_cli_exit_2_one_line(tmp_path):
    import os
    import subprocess
    import sys

    from ua3dtalk.cli.train import config_dir

    env = {**os.environ, "WANDB_MODE": "offline", "HF_HUB_OFFLINE": "1", "UA3DTALK_CONFIG_DIR": str(config_dir())}
    p = subprocess.run([sys.executable, "-m", "ua3dtalk.cli.train", "experiment=smoke", "seed=abc",
                        f"paths.root={tmp_path}"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
    assert p.returncode == 2 and len(lines) == 1 and lines[0].startswith("ua3dtalk-train: error: seed:"), p.stderr
