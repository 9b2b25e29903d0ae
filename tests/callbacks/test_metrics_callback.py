"""MetricsCallback inside ``ua3dtalk-train`` (issue 5 item 7): a very short training run with
``callbacks=metrics`` writes the metrics to ``metrics.json`` / the loggers, writes side-by-side frames,
costly metrics run every ``every_n_epochs`` validations, and a metric whose evaluator is missing is skipped
with exactly one warning (over several validations)."""
from __future__ import annotations

import json
import warnings

import numpy as np

from ua3dtalk.cli.train import compose, run



def _overrides(root, run_dir, *extra):
    return ["experiment=smoke", "scale=tiny", "trainer.enable_progress_bar=false",
            "+trainer.enable_model_summary=false", "callbacks=metrics", f"data.root={root}",
            f"paths.run_dir={run_dir}", "stages=[face]", *extra]


def test_callback_writes_metrics_and_warns_once_for_missing_evaluator(synth_emotional_small, tmp_path, one_thread):
    rd = tmp_path / "run"
    cfg = compose(_overrides(synth_emotional_small, rd, "stage_steps.face=4", "val_every=2",
                             "callbacks.metrics.metrics=[psnr,ssim,lpips,lmd,sync]",
                             "callbacks.metrics.lpips_random_backbone=true", "callbacks.metrics.max_clips=1",
                             "callbacks.metrics.max_frames=8", "callbacks.metrics.num_images=2",
                             "callbacks.metrics.every_n_epochs=2"))
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        m = run(cfg)
    skipped = [w for w in rec if "metrics skipped" in str(w.message)]
    assert len(skipped) == 1, [str(w.message) for w in skipped]
    msg = str(skipped[0].message)
    # names what is missing: the landmark regressor for lmd/f_lmd, SyncNet for sync_c/sync_d
    assert "lmd" in msg and "landmark_regressor" in msg and "sync_c" in msg and "SyncNet" in msg
    for key in ("val/ssim", "val/psnr_full", "val/lpips_randbackbone", "val/lpips_face_randbackbone"):
        assert key in m, f"{key} missing from the run metrics {sorted(m)}"
    # the module's own head-masked val/psnr is kept (not replaced by the callback's full-frame value)
    assert m["val/psnr"] != m["val/psnr_full"]
    saved = json.loads((rd / "metrics.json").read_text())
    assert "val/lpips_randbackbone" in saved and "val/lpips" not in saved  # never mixed with real LPIPS
    assert not any(k.startswith("val/lmd") or k.startswith("val/sync") for k in saved)  # no made-up numbers
    pngs = sorted((rd / "metric_images").glob("val_face_*.png"))
    assert pngs, "side-by-side frames written"
    from PIL import Image

    img = np.asarray(Image.open(pngs[0]))
    h, w = img.shape[:2]
    assert w == 3 * h  # rendered | gt | error of square 64² frames
    import csv

    with open(rd / "logs" / "face" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    cheap = [r for r in rows if r.get("val/ssim")]
    costly = [r for r in rows if r.get("val/lpips_randbackbone")]
    # every logger gets the values; costly metrics every 2nd validation (runs 0 and 2 of 3), still one warning
    assert len(cheap) == 3 and len(costly) == 2, (len(cheap), len(costly))
