"""benchmarks/model_vs.py: the side-by-side step table (parsing benchmarks/model.py's rows, the ratio)."""
from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "model_vs.py"

OUTPUT = """`compute_dtype=auto` resolves to bfloat16 here

| measurement | float32 | bfloat16 matmuls | ratio | target |
|---|---|---|---|---|
| training step, face stage, all modules, stage-B ensemble, 256², 10k | 0.527 s | 0.457 s | 1.15× | ≤ 0.35 s |
| the same + landmark term (frame + 32 bank frames) + emotion swap | 0.623 s | 0.574 s | 1.09× | |
| inference (deformation + render, no grad), fused statistics kernel | 10.3 frames/s | 13.2 frames/s | 1.28× | ≥ 20 |
| inference as above, torch reference | 9.4 frames/s | 10.6 frames/s | 1.10× / 1.25× | |
"""


def load_module():
    spec = importlib.util.spec_from_file_location("model_vs_bench", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_rows_are_parsed_and_the_ratio_is_this_over_the_baseline():
    mod = load_module()
    rows = mod.parse_rows(OUTPUT)
    assert rows == {"training step, all modules": (0.527, 0.457),
                    "the same + landmark term + emotion swap (every term on)": (0.623, 0.574),
                    "inference, fused statistics kernel": (10.3, 13.2)}
    base = {k: (2 * a, 2 * b) for k, (a, b) in rows.items()}
    table = mod.ratio_table(base, rows, "abc123")
    lines = table.splitlines()
    assert len(lines) == 2 + 3
    assert "| 0.50×" in lines[2] and "| 0.50×" in lines[3] and f"≤ {mod.TARGET_RATIO:.2f}" in lines[3]
    assert "0.914 s (1.054)" in lines[2] and "0.457 s (0.527)" in lines[2]
    # a row missing from one side is left out, not made up
    assert len(mod.ratio_table({}, rows, "abc123").splitlines()) == 2
    # this tree with the system allocator: two more columns, its own ratio
    sys_rows = {k: (a, 1.5 * b) for k, (a, b) in base.items()}
    lines = mod.ratio_table(base, rows, "abc123", sys_rows).splitlines()
    assert "system allocator" in lines[0] and lines[1].count("|") == lines[0].count("|")
    assert "| 0.50× |" in lines[3] and "| 1.50× |" in lines[3]


def test_a_bad_revision_is_refused_in_one_line():
    r = subprocess.run([sys.executable, str(SCRIPT), "--rev", "no-such-revision-xyz"], capture_output=True,
                       text=True, cwd=ROOT)
    assert r.returncode == 2
    assert "cannot export --rev no-such-revision-xyz" in r.stderr and "Traceback" not in r.stderr
