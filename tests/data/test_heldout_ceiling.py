"""``scripts/heldout_ceiling.py``: the held-out ceiling of the synthetic set (what no audio-driven model can
predict). The decomposition must reproduce a clip exactly from its own random stream, and the scores must rank
exact > sharp prediction."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest



@pytest.fixture(scope="module")
def ceiling(load_script):
    return load_script("heldout_ceiling")


def _expression_stream(clip_dir: Path) -> np.random.Generator:
    """The expression random stream the generator gave a clip of ``generate_emotional`` (seed 0)."""
    from ua3dtalk.data.synth.generate import _seed

    e, level, c = clip_dir.parts[-3], clip_dir.parts[-2], int(clip_dir.parts[-1])
    k = int(level.split("_")[1])
    rng = np.random.default_rng(_seed("emotional", 0, e, k) if c == 1 else _seed("emotional", 0, e, k, c))
    seeds = [int(s) for s in rng.integers(0, 2**63 - 1, size=4)]  # write_clip: speech, expression, pose, bg
    return np.random.default_rng(seeds[1])


def _clip(subject: Path, emotion: str, level: int) -> Path:
    return sorted((subject / emotion / f"level_{level}").iterdir())[0]


@pytest.mark.parametrize("emotion,level", [("neutral", 1), ("happy", 3)])
def test_the_clips_own_stream_gives_back_its_expression(ceiling, synth_emotional_roles, emotion, level):
    d = _clip(synth_emotional_roles, emotion, level)
    expr = np.load(d / "expr.npy")
    draws = ceiling.draw_expressions(d, 2, _expression_stream(d))
    np.testing.assert_allclose(draws[0], expr, atol=1e-6)
    # another draw keeps what the model is given (articulation, blinks) and changes what it is not
    from ua3dtalk.data.synth.head import EXPR_NAMES

    given = [EXPR_NAMES.index(k) for k in ("jaw_open", "lip_round", "lip_spread", "eye_open")]
    other = ceiling.draw_expressions(d, 3, np.random.default_rng(123))
    if emotion == "neutral":  # no emotion part: the given coefficients are exactly the clip's
        np.testing.assert_array_equal(other[:, :, given], np.broadcast_to(expr[:, given], other[:, :, given].shape))
    wander = [EXPR_NAMES.index(k) for k in ceiling.WANDER]
    assert np.abs(other[:, :, wander] - expr[None, :, wander]).mean() > 0.01
    assert not np.allclose(other[0], other[1])
    # label unknown: the draws cover the set's emotions, whose coefficients the known label keeps at the clip's
    frown = EXPR_NAMES.index("frown")
    unknown = ceiling.draw_expressions(d, 24, np.random.default_rng(5), label=False)
    assert np.abs(unknown[:, :, frown] - expr[None, :, frown]).max() > 0.2
    if emotion == "neutral":
        assert (other[:, :, frown] == expr[None, :, frown]).all()


def test_ceiling_ranks_the_exact_expression_first(ceiling, synth_emotional_roles, one_thread):
    from ua3dtalk.data.loading import load_dataset
    from ua3dtalk.metrics.image import psnr_per_frame

    d = _clip(synth_emotional_roles, "happy", 3)
    clip = next(c for c in load_dataset(synth_emotional_roles).clips if Path(c.root) == d.resolve())
    r = ceiling.clip_ceiling(clip, 3, seed=0)
    n = len(clip)
    for k in ("gt", "mean", "sharp", "exact"):
        assert r[k].shape[0] == n and r[k].shape[1] == 3
    exact = float(psnr_per_frame(r["exact"], r["gt"]).mean())
    sharp = float(psnr_per_frame(r["sharp"], r["gt"]).mean())
    raw_mean = psnr_per_frame(r["mean"], r["gt"]).numpy()
    assert exact > 30 and exact > sharp  # the re-render differs from the ground truth by its JPEG only
    assert np.isfinite(r["psnr_mean_corrected"]).all()
    assert (r["psnr_mean_corrected"] >= raw_mean - 1e-9).all()  # removing the draws' variance can only help
    assert r["spread_px"] > 0


def test_bad_arguments_exit_2(ceiling, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        ceiling.main([])
    assert e.value.code == 2
    assert ceiling.main(["--data", str(tmp_path / "missing")]) == 2
    assert "missing" in capsys.readouterr().err
    run = tmp_path / "run"
    run.mkdir()
    assert ceiling.main(["--run", str(run)]) == 2
    assert "config.yaml" in capsys.readouterr().err
    (tmp_path / "regular").mkdir()
    (tmp_path / "regular" / "x.json").write_text(json.dumps({}))
    assert ceiling.main(["--data", str(tmp_path / "regular")]) == 2
