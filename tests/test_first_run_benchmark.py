"""benchmarks/first_run.py: the first-run table (set-up = wall time − the demo's steps; budgets judged)."""
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "first_run.py"


def _module():
    spec = importlib.util.spec_from_file_location("first_run", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _row(text, name):
    return next(line for line in text.splitlines() if line.startswith(f"| {name} |")).split("|")[1:-1]


def test_table_derives_setup_and_judges_budgets():
    steps = {"data: ./data/x": 50.0, "evaluators": 70.0, "train: experiment demo_synth, stages [...]": 300.0,
             "evaluate": 100.0, "render: held-out frames": 20.0, "report": 0.5}
    t = _module().table(steps, 600.0)
    assert [c.strip() for c in _row(t, "set-up")][:2] == ["set-up", "60"]  # 600 − 540.5
    assert _row(t, "data")[4].strip() == "yes" and _row(t, "evaluators")[4].strip() == "no"
    assert _row(t, "total")[4].strip() == "yes"
    assert _module().table(steps, 700.0).splitlines()[-1].split("|")[5].strip() == "no"


def test_cli_reads_an_earlier_demo(tmp_path):
    m = tmp_path / "metrics.json"
    m.write_text(json.dumps({"demo_seconds": {"data: d": 10.0, "train: t": 20.0}}))
    r = subprocess.run([sys.executable, str(SCRIPT), "--metrics", str(m), "--total", "40"], capture_output=True,
                       text=True)
    assert r.returncode == 0, r.stderr
    assert "| set-up | 10 |" in r.stdout and "| train | 20 |" in r.stdout
    r = subprocess.run([sys.executable, str(SCRIPT), "--metrics", str(tmp_path / "none.json"), "--total", "1"],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "Traceback" not in r.stderr and "none.json" in r.stderr


def _smoke():
    spec = importlib.util.spec_from_file_location("smoke_bench", ROOT / "benchmarks" / "smoke.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_smoke_table_reads_the_stages_and_judges_the_budget(tmp_path):
    for stage, sec in (("prior", 5.0), ("emotion", 40.0), ("fuse", 10.0)):
        (tmp_path / "checkpoints" / stage).mkdir(parents=True)
        (tmp_path / "checkpoints" / stage / "done.json").write_text(json.dumps({"seconds": sec, "steps": 3}))
    mod = _smoke()
    assert mod.stage_seconds(tmp_path) == {"prior": 5.0, "emotion": 40.0, "fuse": 10.0}
    t = mod.table(mod.stage_seconds(tmp_path), 100.0, data=30.0)
    assert "| start-up | 45 |" in t and "| total (budget 120) | 100 | within |" in t and "| 30 |" in t
    assert "| over |" in mod.table({"emotion": 200.0}, 230.0)
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "smoke.py"), "--run-dir", str(tmp_path), "--total",
                        "90"], capture_output=True, text=True)
    assert r.returncode == 0 and "| emotion | 40 |" in r.stdout, r.stderr
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "smoke.py"), "--run-dir", str(tmp_path / "none"),
                        "--total", "1"], capture_output=True, text=True)
    assert r.returncode == 2 and "no finished stage" in r.stderr and "Traceback" not in r.stderr
