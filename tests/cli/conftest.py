"""Helpers of the CLI tests: run ``ua3dtalk-train`` in a subprocess with an offline, 1-thread environment."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from ua3dtalk.cli.train import config_dir


def cli_env(**extra) -> dict:
    env = dict(os.environ)
    env.update({"WANDB_MODE": "offline", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1",
                "MKL_NUM_THREADS": "1", "UA3DTALK_CONFIG_DIR": str(config_dir()), "PYTHONUNBUFFERED": "1"})
    env.update(extra)
    return env


@pytest.fixture
def train_cli():
    """``train_cli(cwd, *overrides, timeout=...)`` → CompletedProcess of ``python -m ua3dtalk.cli.train``."""
    def run(cwd: Path, *overrides: str, timeout: float = 600):
        return subprocess.run([sys.executable, "-m", "ua3dtalk.cli.train", *overrides], cwd=cwd, env=cli_env(),
                              capture_output=True, text=True, timeout=timeout)
    return run

