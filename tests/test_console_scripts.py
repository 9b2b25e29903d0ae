"""Every console script of ``setup.cfg`` answers ``--help`` with a usage text, exit 0, without importing torch
(issue "A house a newcomer can live in": help must be instant, so parsing arguments imports no torch,
Lightning or transformers). The list of scripts is read from ``setup.cfg``, not repeated here."""
from __future__ import annotations

import configparser
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "lightning", "transformers")

# runs main() with --help in a fresh interpreter, then reports the exit code and which heavy modules were imported
WRAPPER = """
import json, sys
name, module, func = sys.argv[1:4]
sys.argv = [name, "--help"]
code = 0
try:
    r = getattr(__import__(module, fromlist=[func]), func)()
    code = r or 0
except SystemExit as e:
    code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
sys.stdout.flush()
sys.stderr.write("\\nUA3DTALK-RESULT " + json.dumps({"code": code,
                 "imported": {m: m in sys.modules for m in %r}}) + "\\n")
""" % (HEAVY,)


def console_scripts() -> dict[str, str]:
    cp = configparser.ConfigParser()
    cp.read(ROOT / "setup.cfg")
    out = {}
    for line in cp.get("options.entry_points", "console_scripts").splitlines():
        if "=" in line:
            name, target = (s.strip() for s in line.split("=", 1))
            out[name] = target
    return out


SCRIPTS = console_scripts()


def test_setup_cfg_lists_console_scripts():
    assert len(SCRIPTS) >= 10 and all(":" in t for t in SCRIPTS.values()), SCRIPTS


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_help_exits_0_without_torch(name, tmp_path):
    module, func = SCRIPTS[name].split(":")
    env = {**os.environ, "WANDB_MODE": "offline", "HF_HUB_OFFLINE": "1"}
    r = subprocess.run([sys.executable, "-c", WRAPPER, name, module, func], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=300)
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("UA3DTALK-RESULT ")]
    assert r.returncode == 0 and lines, (r.returncode, r.stderr[-2000:])
    res = json.loads(lines[-1].split(" ", 1)[1])
    assert res["code"] == 0, (res, r.stdout[-1000:], r.stderr[-2000:])
    assert r.stdout.strip(), f"{name} --help printed nothing"
    assert "usage" in r.stdout.lower() or "powered by hydra" in r.stdout.lower(), r.stdout[:500]
    assert res["imported"] == {m: False for m in HEAVY}, f"{name} --help imported {res['imported']}"


def test_bench_lists_and_refuses_unknown(tmp_path, capsys):
    from ua3dtalk.cli.bench import main

    (tmp_path / "bench").mkdir()
    (tmp_path / "bench" / "fast.py").write_text('"""A fast benchmark."""\nprint("| ratio | 1.0 |")\n')
    (tmp_path / "bench" / "broken.py").write_text('"""Fails."""\nraise SystemExit(3)\n')
    assert main(["--dir", str(tmp_path / "bench")]) == 0
    out = capsys.readouterr().out
    assert "fast" in out and "A fast benchmark." in out and "broken" in out
    assert main(["--dir", str(tmp_path / "bench"), "nope"]) == 2
    assert "unknown benchmark(s) nope" in capsys.readouterr().err
    assert main(["--dir", str(tmp_path / "missing")]) == 2
    assert main(["--dir", str(tmp_path / "bench"), "fast"]) == 0
    assert main(["--dir", str(tmp_path / "bench"), "all"]) == 1  # broken fails
    assert "failed: broken" in capsys.readouterr().err


def test_one_spelling_per_concept():
    """The renderer is `--renderer` (= `renderer=` of ua3dtalk-train), the landmark detector `--landmark-backend`,
    the wav2vec2 weights `--extractor-model` / `--extractor-layer` (= `data.extractor_model` / `_layer`); the older
    spellings stay as aliases of the same option."""
    from ua3dtalk.cli.features import build_parser as features_parser

    a = features_parser().parse_args(["d", "--extractor", "wav2vec2", "--extractor-model", "m",
                                      "--extractor-layer", "3"])
    b = features_parser().parse_args(["d", "--extractor", "wav2vec2", "--model", "m", "--layer", "3"])
    assert (a.model, a.layer) == (b.model, b.layer) == ("m", "3")
    import ua3dtalk.cli.preprocess as pre
    import ua3dtalk.cli.synth as synth

    for mod, new, old in ((pre, "--landmark-backend", "--backend"), (synth, "--renderer", "--backend")):
        helptext = subprocess.run([sys.executable, "-m", mod.__name__, "--help"], capture_output=True, text=True).stdout
        assert new in helptext and old in helptext, mod.__name__
