"""The notebooks execute top to bottom (nbclient) on the tiny synthetic dataset, and are stored without outputs."""
from __future__ import annotations

import json
import os
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NB_DIR = Path(__file__).resolve().parents[2] / "notebooks"


def _execute(name: str, env: dict, cwd: Path, timeout: int = 900) -> nbformat.NotebookNode:
    nb = nbformat.read(NB_DIR / name, as_version=4)
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)  # the kernel inherits this process's environment
    try:
        NotebookClient(nb, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": str(cwd)}}).execute()
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return nb


def _text(nb) -> str:
    out = []
    for c in nb.cells:
        for o in c.get("outputs", []):
            out.append(o.get("text", "") + json.dumps(o.get("data", {}), ensure_ascii=False))
    return "\n".join(out)


def test_notebooks_are_stored_without_outputs():
    names = sorted(p.name for p in NB_DIR.glob("*.ipynb"))
    assert names == ["01_quickstart.ipynb", "02_ablations.ipynb"]
    for n in names:
        nb = nbformat.read(NB_DIR / n, as_version=4)
        nbformat.validate(nb)
        for c in nb.cells:
            if c.cell_type == "code":
                assert not c.outputs and c.execution_count is None, f"{n}: outputs must be stripped"


@pytest.mark.slow
def test_quickstart_executes(synth_emotional_small, tmp_path):
    nb = _execute("01_quickstart.ipynb", {"UA3DTALK_NB_DATA": str(synth_emotional_small),
                                          "UA3DTALK_NB_OUT": str(tmp_path), "UA3DTALK_NB_FAST": "1",
                                          "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg"}, tmp_path)
    for f in ("dataset.png", "training.png", "gt_vs_render.png", "drive_happy.mp4", "drive_audio.mp4",
              "run/metrics.json", "run/checkpoints/fuse/last.ckpt"):
        assert (tmp_path / f).is_file(), f
    assert "PSNR over these frames" in _text(nb)


# notebook 02 runs on the real runs of the tiny sweep: tests/experiments/test_sweep_table.py
