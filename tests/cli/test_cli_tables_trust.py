"""``ua3dtalk-tables`` you can trust: Student-t intervals with n, one E-FID column per extractor, claims that
say what the runs compare, and no silently dropped ``metrics.json``."""
from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

import pytest

from test_cli_tables import _row  # the same table-row parser as the table tests

from ua3dtalk.cli.tables import main
from ua3dtalk.reporting.runs import TablesError, find_runs
from ua3dtalk.reporting.tables import load_published, make_table

T_975_2 = 4.302652729911275  # Student t quantile, two-sided 95 %, 2 degrees of freedom (tables)


def _write(root: Path, exp: str, seed: int, metrics: dict, *, dataset: str = "mead", kind: str = "emotional",
           subject: str = "M003") -> Path:
    d = root / exp / subject / f"seed{seed}"
    d.mkdir(parents=True)
    p = d / "metrics.json"
    p.write_text(json.dumps({"experiment": exp, "seed": seed, "subject": subject,
                             "data": f"/data/{dataset}/{subject}", "data_kind": kind, **metrics}))
    return p


def _head(text: str) -> list[str]:
    line = next(ln for ln in text.splitlines() if ln.startswith("| Method"))
    return [c.strip() for c in line.strip("|").split("|")]


def test_interval_is_the_student_t_half_width_for_n3(tmp_path):
    vals = (30.0, 31.0, 32.5)
    for seed, v in enumerate(vals):
        _write(tmp_path, "paper_mead", seed, {"val/psnr": v})
    mean = sum(vals) / 3
    s = math.sqrt(sum((v - mean) ** 2 for v in vals) / 2)  # 1.2583
    hand = T_975_2 * s / math.sqrt(3)  # 3.1258
    z_based = 1.959963984540054 * s / math.sqrt(3)  # 1.4230: what a normal quantile would give
    assert round(hand, 2) not in (round(s, 2), round(z_based, 2))

    runs = find_runs([tmp_path])
    text = make_table(runs, "ablation", "md", metrics=["psnr"])
    assert _row(text, "UA-3DTalk (full)")[1:] == [f"**{mean:.2f} ± {hand:.2f}**", "3"] == ["**31.17 ± 3.13**", "3"]
    assert "95 % confidence interval" in text and "Student's t" in text and "n−1" in text

    cell = json.loads(make_table(runs, "ablation", "json", metrics=["psnr"]))["rows"][0]["cells"]["psnr"]
    assert cell["n"] == 3
    assert cell["mean"] == pytest.approx(mean)
    assert cell["std"] == pytest.approx(statistics.stdev(vals))
    assert cell["ci95"] == pytest.approx(hand, rel=1e-9)
    assert cell["ci95"] != pytest.approx(s) and cell["ci95"] != pytest.approx(z_based)


def test_single_run_has_no_interval_and_partial_cells_show_their_n(tmp_path):
    _write(tmp_path, "baseline_talkinggaussian", 0, {"val/psnr": 28.0, "test/lpips": 0.1})
    _write(tmp_path, "paper_mead", 0, {"val/psnr": 30.0, "test/lpips": 0.05})
    _write(tmp_path, "paper_mead", 1, {"val/psnr": 31.0, "test/lpips": 0.07})
    _write(tmp_path, "paper_mead", 2, {"val/psnr": 32.5})  # no LPIPS in this run
    runs = find_runs([tmp_path])
    text = make_table(runs, "ablation", "md", metrics=["psnr", "lpips"], published=[])
    assert _row(text, "TalkingGaussian-like baseline")[1:] == ["28.00 (n=1)", "0.1000 (n=1)", "1"]
    full = _row(text, "UA-3DTalk (full)")
    assert full[1] == "**31.17 ± 3.13**" and full[3] == "3"  # all 3 runs: no per-cell n
    # LPIPS of 2 of the 3 runs: .05, .07 → s = .01414, ± = t(0.975, 1)·s/√2 = 12.706 · .01 = .1271
    assert full[2] == "**0.0600 ± 0.1271** (n=2)"
    tex = make_table(runs, "ablation", "latex", metrics=["psnr", "lpips"], published=[])
    assert "TalkingGaussian-like baseline & 28.00 (n=1) & 0.1000 (n=1) & 1 \\\\" in tex
    base = json.loads(make_table(runs, "ablation", "json", metrics=["psnr"], published=[]))["rows"][1]
    assert base["experiment"] == "baseline_talkinggaussian"
    assert base["cells"]["psnr"] == {"mean": 28.0, "ci95": None, "std": None, "n": 1, "nonfinite": 0, "best": False}


def test_one_efid_column_per_extractor_never_averaged(tmp_path):
    _write(tmp_path, "paper_mead", 0, {"val/psnr": 30.0, "test/efid_landmark": 10.0})
    _write(tmp_path, "paper_mead", 1, {"val/psnr": 31.0, "test/efid_regressor": 20.0})
    _write(tmp_path, "baseline_talkinggaussian", 0, {"val/psnr": 28.0, "test/efid_landmark": 12.5,
                                                     "val/efid_landmark": 99.0})
    text = make_table(find_runs([tmp_path]), "ablation", "md", metrics=["psnr", "e_fid"], published=[])
    assert _head(text) == ["Method", "PSNR ↑", "E-FID (landmark) ↓", "E-FID (regressor) ↓", "n"]
    assert _row(text, "UA-3DTalk (full)")[2:] == ["**10.000** (n=1)", "**20.000** (n=1)", "2"]
    assert _row(text, "TalkingGaussian-like baseline")[2:] == ["12.500 (n=1)", "—", "1"]  # test/ before val/
    assert "15.000" not in text  # (10 + 20) / 2: the two extractors were never merged
    one = make_table(find_runs([tmp_path]), "ablation", "md", metrics=["e_fid_regressor"], published=[])
    assert _head(one) == ["Method", "E-FID (regressor) ↓", "n"]


def test_published_efid_goes_to_the_papers_own_column(tmp_path):
    runs_dir = tmp_path / "runs"
    _write(runs_dir, "paper_mead", 0, {"test/efid_landmark": 10.0, "val/psnr": 30.0})
    stated, unstated = tmp_path / "a.yaml", tmp_path / "b.yaml"
    stated.write_text("""
source: {citation: "Paper A", e_fid_extractor: Deep3DFaceRecon}
rows:
  - {method: NetA, table: ablation, metrics: {psnr: 31.0, e_fid: 1.5}}
""")
    unstated.write_text("""
source: {citation: "Paper B"}
rows:
  - {method: NetB, table: ablation, metrics: {e_fid: 2.5}}
""")
    pub = load_published([stated, unstated])
    text = make_table(find_runs([runs_dir]), "ablation", "md", pub, metrics=["psnr", "e_fid"])
    assert _head(text) == ["Method", "PSNR ↑", "E-FID (landmark) ↓", "E-FID (paper: Deep3DFaceRecon) ↓",
                           "E-FID (paper [2], extractor not stated) ↓", "n"]
    assert _row(text, "UA-3DTalk (full)")[2:5] == ["**10.000** (n=1)", "—", "—"]
    assert _row(text, "NetA [1]")[1:5] == ["31.00", "—", "1.500", "—"]  # cited rows are never bold
    assert _row(text, "NetB [2]")[2:5] == ["—", "—", "2.500"]


def test_claims_are_followed_by_what_the_runs_compare(tmp_path):
    runs_dir = tmp_path / "runs"
    for seed, v in enumerate((0.05, 0.07)):
        _write(runs_dir, "paper_mead", seed, {"test/lpips": v, "test/efid_landmark": 10.0 + seed},
               dataset="mead", subject=f"M00{seed}")
    _write(runs_dir, "baseline_talkinggaussian", 0, {"test/lpips": 0.1, "test/efid_landmark": 12.5},
           dataset="synth_small_emotional", subject="synth0")
    pub = tmp_path / "p.yaml"
    pub.write_text("""
source: {citation: "The Paper"}
claims:
  - {metric: lpips, kind: absolute, value: -0.015, vs: "DEGSTalk / EDTalk"}
  - {metric: e_fid, kind: relative, value: -0.052, vs: "DEGSTalk / EDTalk"}
""")
    text = make_table(find_runs([runs_dir]), "ablation", "md", load_published([pub]), metrics=["lpips", "e_fid"])
    lines = text.splitlines()
    claims = [i for i, ln in enumerate(lines) if ln.startswith("- ")]
    assert claims and lines[claims[1]].endswith("E-FID (landmark) -16.0 %")  # (10.5 − 12.5) / 12.5
    compare = [ln for ln in lines if ln.startswith("What these runs compare:")]
    assert len(compare) == 1 and lines.index(compare[0]) > max(claims)
    line = compare[0]
    assert "paper_mead (2 runs on mead [emotional]" in line
    assert "baseline_talkinggaussian (1 run on synth_small_emotional [emotional]" in line
    assert "not the paper's comparison" in line and "DEGSTalk / EDTalk" in line


def test_a_metrics_json_that_is_not_an_object_is_reported(tmp_path, capsys):
    _write(tmp_path, "paper_mead", 0, {"val/psnr": 30.0})
    bad = tmp_path / "paper_mead" / "M003" / "seed1" / "metrics.json"
    bad.parent.mkdir(parents=True)
    bad.write_text(json.dumps([{"experiment": "paper_mead", "val/psnr": 10.0}]))
    with pytest.raises(TablesError, match=r"seed1/metrics\.json.*JSON list"):
        find_runs([tmp_path])
    assert main(["--runs", str(tmp_path), "--table", "ablation", "--published"]) == 2
    captured = capsys.readouterr()
    assert str(bad) in captured.err and captured.out == ""
