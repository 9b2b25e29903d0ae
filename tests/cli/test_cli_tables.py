"""``ua3dtalk-tables`` on fixture run directories, against hand-computed means and 95 % t-intervals."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from ua3dtalk.cli.tables import main
from ua3dtalk.reporting.runs import TablesError, find_runs, wandb_runs
from ua3dtalk.reporting.tables import load_published, make_table

# experiment, subject, seed, kind, metrics
RUNS = [
    ("paper_mead", "M003", 0, "mead", {"val/psnr": 30.0, "test/lpips": 0.05, "test/sync_c": 6.0,
                                       "test/e_fid_landmark": 10.0, "val/lpips": 0.9}),
    ("paper_mead", "M003", 1, "mead", {"val/psnr": 31.0, "test/lpips": 0.07}),
    ("paper_mead", "M030", 0, "mead", {"val/psnr": 32.5, "test/lpips": 0.06}),
    ("abl_fusion_uniform", "M003", 0, "mead", {"val/psnr": 29.0, "test/lpips": 0.08}),
    ("abl_fusion_uniform", "M003", 1, "mead", {"val/psnr": 30.0, "test/lpips": 0.09, "val/lpips_randbackbone": 0.01}),
    ("baseline_talkinggaussian", "M003", 0, "mead", {"val/psnr": 28.0, "test/lpips": 0.1, "test/sync_c": 5.0,
                                                     "test/e_fid_landmark": 12.5}),
    ("paper_hdtf", "RD_Radio34_009", 0, "hdtf", {"val/psnr": 27.0, "test/lmd": 3.2}),
    ("paper_hdtf", "RD_Radio34_009", 1, "hdtf", {"val/psnr": 27.5, "test/lmd": 3.0}),
]
# hand-computed, ± = t(0.975, n−1)·s/√n with t(0.975, 2) = 4.3027, t(0.975, 1) = 12.7062:
#   psnr 30, 31, 32.5 → mean 31.1667, s 1.2583 → ± 3.1258;  lpips .05 .07 .06 → .0600, s .0100 → ± .0248
#   psnr 29, 30 → 29.50, s 0.7071 → ± 6.35;  lpips .08 .09 → .0850, s .0071 → ± .0635;  E-FID 10 vs 12.5 → −20.0 %


@pytest.fixture
def runs_dir(tmp_path) -> Path:
    for exp, subj, seed, ds, metrics in RUNS:
        kind = "emotional" if ds == "mead" else "regular"
        d = tmp_path / "runs" / exp / subj / f"seed{seed}"
        d.mkdir(parents=True)
        (d / "metrics.json").write_text(json.dumps({"experiment": exp, "subject": subj, "seed": seed,
                                                    "data": f"/data/{ds}/{subj}", "data_kind": kind,
                                                    "stages": {}, **metrics}))
    (tmp_path / "runs" / "notes.json").write_text("{}")  # not a metrics.json: ignored
    return tmp_path / "runs"


@pytest.fixture
def published(tmp_path) -> Path:
    p = tmp_path / "pub.yaml"
    p.write_text("""
source: {citation: "A. Author, Peer Paper, 2025.", url: "https://example.org/peer"}
rows:
  - {method: PeerNet, table: ablation, metrics: {psnr: 31.5, lpips: 0.07}}
  - {method: OtherNet, table: paper_t1, metrics: {psnr: 26.0}}
claims:
  - {metric: e_fid, kind: relative, value: -0.052, vs: "DEGSTalk / EDTalk", tables: [ablation]}
""")
    return p


def _row(text: str, label: str) -> list[str]:
    for line in text.splitlines():
        if line.startswith(f"| {label} "):
            return [c.strip() for c in line.strip("|").split("|")]
    raise AssertionError(f"no row {label!r} in\n{text}")


def test_ablation_table_means_std_and_bold(runs_dir):
    text = make_table(find_runs([runs_dir]), "ablation", "md", published=[], metrics=["psnr", "lpips", "sync_c"])
    head = [c.strip() for c in text.splitlines()[2].strip("|").split("|")]
    assert head == ["Method", "PSNR ↑", "LPIPS ↓", "Sync-C ↑", "n"]
    full = ["UA-3DTalk (full)", "**31.17 ± 3.13**", "**0.0600 ± 0.0248**", "**6.000** (n=1)", "3"]
    assert _row(text, "UA-3DTalk (full)") == full
    assert _row(text, "uniform fusion") == ["uniform fusion", "29.50 ± 6.35", "0.0850 ± 0.0635", "—", "2"]
    assert _row(text, "TalkingGaussian-like baseline")[1:] == ["28.00 (n=1)", "0.1000 (n=1)", "5.000 (n=1)", "1"]
    labels = [line.split("|")[1].strip() for line in text.splitlines() if line.startswith("| ") and "---" not in line]
    assert labels[1:] == ["UA-3DTalk (full)", "uniform fusion", "TalkingGaussian-like baseline"]  # paper order
    assert "paper_hdtf" not in text  # not an ablation row


def test_published_rows_and_claims(runs_dir, published):
    pub = load_published([published])
    text = make_table(find_runs([runs_dir]), "ablation", "md", published=pub, metrics=["psnr", "lpips", "e_fid"])
    assert _row(text, "PeerNet [1]") == ["PeerNet [1]", "31.50", "0.0700", "—", "–"]  # cited: never bold
    assert _row(text, "UA-3DTalk (full)")[1] == "**31.17 ± 3.13**"  # bold marks the best of our runs only
    assert _row(text, "UA-3DTalk (full)")[2] == "**0.0600 ± 0.0248**"
    assert "[1] A. Author, Peer Paper, 2025. https://example.org/peer" in text
    claim = next(line for line in text.splitlines() if line.startswith("- E-FID"))
    assert "-5.2 %" in claim and claim.endswith("-20.0 %")  # (10 − 12.5) / 12.5 from the runs
    assert "OtherNet" not in text


def test_paper_tables_select_by_dataset_kind(runs_dir):
    runs = find_runs([runs_dir])
    t1 = make_table(runs, "paper_t1", "md", metrics=["psnr", "lmd"])
    assert _row(t1, "paper_hdtf")[1:] == ["**27.25 ± 3.18**", "**3.100 ± 1.271**", "2"]
    assert "paper_mead" not in t1
    t2 = make_table(runs, "paper_t2", "md", metrics=["psnr"])
    assert "paper_mead" in t2 and "baseline_talkinggaussian" in t2 and "abl_fusion_uniform" not in t2
    only = make_table(runs, "paper_t2", "md", metrics=["psnr"], experiments=["baseline_*"])
    assert "paper_mead" not in only and "baseline_talkinggaussian" in only


def test_latex_format(runs_dir):
    tex = make_table(find_runs([runs_dir]), "ablation", "latex", metrics=["psnr", "lpips"])
    assert tex.startswith("\\begin{table}") and tex.rstrip().endswith("\\end{table}")
    assert "PSNR $\\uparrow$ & LPIPS $\\downarrow$" in tex
    assert "UA-3DTalk (full) & \\textbf{31.17 $\\pm$ 3.13} & \\textbf{0.0600 $\\pm$ 0.0248} & 3 \\\\" in tex
    assert "TalkingGaussian-like baseline & 28.00 (n=1) & 0.1000 (n=1) & 1 \\\\" in tex
    assert "95\\,\\% confidence interval" in tex and "Student's $t$" in tex


def test_random_backbone_lpips_is_never_used_as_lpips(tmp_path):
    d = tmp_path / "r"
    d.mkdir()
    (d / "metrics.json").write_text(json.dumps({"experiment": "abl_heads_single", "seed": 0,
                                                "val/lpips_randbackbone": 0.2, "val/psnr": 20.0}))
    text = make_table(find_runs([d]), "ablation", "md", metrics=["psnr", "lpips"])
    header = next(ln for ln in text.splitlines() if ln.startswith("| ") and "PSNR" in ln)
    # runs without the AlexNet weights: a column of its own, labelled, never called LPIPS
    assert "| LPIPS |" not in header and "LPIPS (random AlexNet" in header
    assert _row(text, "single head")[1:3] == ["**20.00** (n=1)", "**0.2000** (n=1)"]
    e = tmp_path / "e"
    e.mkdir()
    (e / "metrics.json").write_text(json.dumps({"experiment": "abl_fusion_uniform", "seed": 0, "test/lpips": 0.1,
                                                "val/psnr": 21.0}))
    mixed = make_table(find_runs([d, e]), "ablation", "md", metrics=["psnr", "lpips"])
    assert _row(mixed, "single head")[2] == "—" and _row(mixed, "uniform fusion")[2] == "**0.1000** (n=1)"


def test_cli_main_writes_file_and_reports_errors(runs_dir, published, tmp_path, capsys):
    out = tmp_path / "t.md"
    assert main(["--runs", str(runs_dir), "--table", "ablation", "--published", str(published), "--out", str(out)]) == 0
    assert "UA-3DTalk (full)" in out.read_text()
    assert main(["--runs", str(tmp_path / "missing"), "--table", "ablation"]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["--runs", str(runs_dir), "--table", "ablation", "--metrics", "psnr,fid"]) == 2
    assert "unknown" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["--runs", str(empty), "--table", "ablation", "--published"]) == 2
    assert "no run matches" in capsys.readouterr().err
    bad = tmp_path / "bad.yaml"
    bad.write_text("rows: []\n")
    with pytest.raises(TablesError, match="bad.yaml.*citation"):
        load_published([bad])


def test_repository_published_file_is_cited_and_valid():
    from ua3dtalk.reporting.tables import default_published_dir

    docs = load_published([default_published_dir()])
    assert docs and all(d["source"]["citation"] and d["source"].get("url") for d in docs)
    claims = {c["metric"]: c["value"] for d in docs for c in d.get("claims") or []}
    assert claims == {"e_fid": -0.052, "sync_c": 0.031, "lpips": -0.015}  # the paper's abstract


def _labels(text: str) -> list[str]:
    rows = [line for line in text.splitlines() if line.startswith("| ") and "---" not in line]
    return [line.split("|")[1].strip() for line in rows][1:]  # without the header


def test_repository_published_rows_name_paper_and_table_and_come_after_our_rows(runs_dir):
    """The real files of experiments/published/: every absolute row has a url and the table of the paper it
    was copied from; in the table it follows our rows, marked [k], and changes none of our cells."""
    from ua3dtalk.reporting.runs import TABLES
    from ua3dtalk.reporting.tables import PUBLISHED_NOTE, default_published_dir

    docs = load_published([default_published_dir()])
    pub_rows = [(d, r) for d in docs for r in d.get("rows") or []]
    assert pub_rows, "no absolute published row in experiments/published/"
    for d, r in pub_rows:
        src = d["source"]
        assert src["citation"] and str(src.get("url", "")).startswith("https://") and src.get("extracted_from")
        assert r["table"] in TABLES and (r.get("source_table") or src.get("table")), (d["_file"], r)
        assert r["metrics"] and all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                    for v in r["metrics"].values()), (d["_file"], r)
    runs = find_runs([runs_dir])
    for table in sorted({r["table"] for _, r in pub_rows}):
        expected = [r["method"] for _, r in pub_rows if r["table"] == table]
        plain, cited = (json.loads(make_table(runs, table, "json", published=p)) for p in ([], docs))
        ours = plain["rows"]
        assert ours and not any(r["published"] for r in ours)
        assert [r["label"] for r in cited["rows"]] == [r["label"] for r in ours] + expected  # ours first
        for mine, same in zip(ours, cited["rows"]):  # our cells: same mean, interval and n as without them
            assert same["n_runs"] == mine["n_runs"] and not same["published"]
            for mid, cell in mine["cells"].items():
                assert {k: same["cells"][mid][k] for k in ("mean", "ci95", "std", "n")} == \
                    {k: cell[k] for k in ("mean", "ci95", "std", "n")}, (table, mine["label"], mid)
        for r in cited["rows"][len(ours):]:
            assert r["published"] and r["cite"].startswith("[") and r["source_table"] and r["n_runs"] is None
        by_cite = {s["cite"]: s for s in cited["sources"]}
        for r in cited["rows"][len(ours):]:
            assert r["source_table"] in by_cite[r["cite"]]["paper_tables"] and by_cite[r["cite"]]["url"]
        assert cited["published_note"] == PUBLISHED_NOTE

        text = make_table(runs, table, "md", published=docs)
        labels = _labels(text)
        n_ours = len(ours)
        assert len(labels) == n_ours + len(expected)
        assert all(lab.rsplit(" ", 1)[-1].startswith("[") for lab in labels[n_ours:])  # cited as [k]
        for lab in labels[n_ours:]:
            assert _row(text, lab)[-1] == "–"  # no run count: a published number
        lines = text.splitlines()
        assert PUBLISHED_NOTE in lines and "Sources:" in lines
        for s in cited["sources"]:
            line = next(ln for ln in lines if ln.startswith(s["cite"] + " "))
            assert s["citation"] in line and s["url"] in line
            assert all(t in line for t in s["paper_tables"])


def test_published_source_table_is_checked_and_printed(runs_dir, tmp_path):
    p = tmp_path / "peer.yaml"
    p.write_text("""
source: {citation: "B. Author, Other Paper, 2024.", url: "https://example.org/other", table: "Table 2"}
rows:
  - {method: NetX, table: paper_t1, metrics: {psnr: 30.5}}
  - {method: NetY, table: paper_t1, source_table: "Table 5 (supplement)", metrics: {psnr: 29.5}}
""")
    text = make_table(find_runs([runs_dir]), "paper_t1", "md", load_published([p]), metrics=["psnr"])
    assert _labels(text) == ["paper_hdtf", "NetX [1]", "NetY [1]"]
    assert "[1] B. Author, Other Paper, 2024. Table 2; Table 5 (supplement). https://example.org/other" in text
    assert _row(text, "paper_hdtf")[1] == "**27.25 ± 3.18**"  # the runs' mean is untouched by the cited rows
    for row, msg in (("{method: N, table: paper_t9, metrics: {psnr: 1.0}}", "table must be one of"),
                     ("{method: N, table: paper_t1, source_table: 3, metrics: {psnr: 1.0}}", "source_table")):
        p.write_text(f'source: {{citation: "C."}}\nrows:\n  - {row}\n')
        with pytest.raises(TablesError, match=msg):
            load_published([p])
    p.write_text('source: {citation: "C.", table: 1}\n')
    with pytest.raises(TablesError, match="source.table"):
        load_published([p])


def test_wandb_runs_from_the_api():
    class FakeRun:
        def __init__(self, i, group, seed, psnr):
            self.id, self.name, self.group = f"r{i}", f"run{i}", group
            self.config = {"seed": seed, "data": {"subject": "M003", "root": "/d/mead/M003"}}
            self.summary = {"val/psnr": psnr, "best/val/psnr": psnr + 1, "_step": 10}

    class FakeApi:
        def runs(self, path):
            assert path == "team/ua3dtalk"
            return [FakeRun(0, "paper_mead", 0, 30.0), FakeRun(1, "paper_mead", 1, 32.0)]

    runs = wandb_runs("team/ua3dtalk", api=FakeApi())
    text = make_table(runs, "ablation", "md", metrics=["psnr"])
    assert _row(text, "UA-3DTalk (full)")[1:] == ["**31.00 ± 12.71**", "2"]


def test_ties_at_the_displayed_precision_are_all_bold(tmp_path):
    for i, (exp, v) in enumerate((("abl_heads_single", 31.004), ("abl_fusion_uniform", 30.996),
                                  ("abl_fusion_concat", 30.9))):
        d = tmp_path / f"r{i}"
        d.mkdir()
        (d / "metrics.json").write_text(json.dumps({"experiment": exp, "seed": 0, "val/psnr": v}))
    text = make_table(find_runs([tmp_path]), "ablation", "md", metrics=["psnr"])
    assert _row(text, "single head")[1] == _row(text, "uniform fusion")[1] == "**31.00** (n=1)"
    assert _row(text, "concatenation fusion")[1] == "30.90 (n=1)"


def test_nonfinite_values_are_flagged_not_averaged_silently(tmp_path, capsys):
    for seed, v in enumerate((30.0, 32.0, float("nan"))):
        d = tmp_path / f"s{seed}"
        d.mkdir()
        (d / "metrics.json").write_text(json.dumps({"experiment": "paper_mead", "seed": seed, "val/psnr": v}))
    text = make_table(find_runs([tmp_path]), "ablation", "md", metrics=["psnr"])
    assert _row(text, "UA-3DTalk (full)")[1:] == ["**31.00 ± 12.71** (n=2) †", "3"]  # mean of the 2 finite runs, marked
    assert "† some runs" in text
    err = capsys.readouterr().err
    assert "s2" in err and "val/psnr" in err and "nan" in err


def test_label_control_columns_on_request(runs_dir, tmp_path):
    """``--metrics …,acc_emo_label,emo_shift``: the label-control scores of ``ua3dtalk-eval control=true`` get
    columns of their own (mean ± t-interval like every column); a run without them shows "—"."""
    for seed, (acc, shift) in enumerate(((0.30, 1.2), (0.40, 1.4))):
        d = tmp_path / "runs" / "abl_heads_single" / "M003" / f"seed{seed}"
        d.mkdir(parents=True)
        (d / "metrics.json").write_text(json.dumps({"experiment": "abl_heads_single", "subject": "M003", "seed": seed,
                                                    "data": "/data/mead/M003", "data_kind": "emotional",
                                                    "test/psnr": 30.0, "test/acc_emo_label": acc,
                                                    "test/emo_shift": shift}))
    text = make_table(find_runs([runs_dir]), "ablation", "md", metrics=["psnr", "acc_emo_label", "emo_shift"])
    header = next(line for line in text.splitlines() if line.startswith("| Method"))
    assert "Acc_emo by label ↑" in header and "label shift (0–255) ↑" in header
    # 0.30, 0.40 → 0.350 ± 12.7062·0.0707/√2 = 0.635; 1.2, 1.4 → 1.30 ± 1.27
    assert _row(text, "single head")[2:4] == ["**0.350 ± 0.635**", "**1.30 ± 1.27**"]
    assert _row(text, "UA-3DTalk (full)")[2:4] == ["—", "—"]
