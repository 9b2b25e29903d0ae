"""Numerical faults (issue 8 item 4) at the level of ``ua3dtalk-train``: a NaN injected into a weight
mid-stage stops the run with exit status 3 and a message naming the step and the tensor; the
checkpoint on disk stays the last good one (finite, the weights before the NaN), and ``resume=true``
continues from it. (Unit-level NaN/Inf checks of losses, gradients and checkpoint writes are in
``tests/models/test_module.py``.)"""
from __future__ import annotations

import re

import pytest
import torch

from robustness_helpers import call_main, train_overrides

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::DeprecationWarning")


def test_nan_in_training_stops_cleanly_and_keeps_the_last_good_checkpoint(synth_emotional_small, tmp_path):
    from ua3dtalk.callbacks.checkpoint import read_checkpoint
    from ua3dtalk.cli.train import main

    import robustness_faults

    run_dir = tmp_path / "run"
    base = train_overrides(synth_emotional_small, run_dir, "stages=[face]", "stage_steps.face=4", "checkpoint_every=1")
    r = call_main(main, base + ["+callbacks.nan._target_=robustness_faults.InjectNaN", "+callbacks.nan.at=2",
                                "+callbacks.nan.param=head.face.sh"])
    torch.set_grad_enabled(True)
    assert r.exc is None, r.tb
    assert r.code == 3, f"exit {r.code}:\n{r.text[-3000:]}"
    assert re.search(r"\bstep 2\b", r.err) and "head.face.sh" in r.err, r.err[-2000:]
    assert "Traceback" not in r.text
    last = run_dir / "checkpoints" / "face" / "last.ckpt"
    ck = read_checkpoint(last)  # finite (read_checkpoint refuses NaN)
    before = robustness_faults.SNAPSHOTS["nan"]
    assert all(torch.equal(ck["state_dict"][k], v) for k, v in before.items()), \
        "the checkpoint on disk is not the state of the last good step"
    assert not (run_dir / "checkpoints" / "face" / "done.json").exists()
    assert not (run_dir / "metrics.json").exists()

    # the run continues from the last good checkpoint (without the fault) and completes
    r = call_main(main, base + ["resume=true"])
    torch.set_grad_enabled(True)
    assert r.code == 0, r.text[-3000:]
    assert re.search(r"stage face: resuming from .*last\.ckpt", r.text)
    assert (run_dir / "metrics.json").exists()
