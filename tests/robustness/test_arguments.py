"""One validation layer for arguments (issue 18 item 2): every count, limit, size, quality and choice of the
console scripts is range-checked before any work, refused with exit 2 and one line naming the argument."""
from __future__ import annotations

import importlib

import pytest

CASES = [
    ("synth", ["--out", "{tmp}/o", "--resolution", "100000"], "--resolution"),
    ("synth", ["--out", "{tmp}/o", "--clips-per-level", "0"], "--clips-per-level"),
    ("preprocess", ["{tmp}/v.mp4", "--out", "{tmp}/d", "--jpeg-quality", "500"], "--jpeg-quality"),
    ("preprocess", ["{tmp}/v.mp4", "--out", "{tmp}/d", "--threads", "-3"], "--threads"),
    ("preprocess", ["{tmp}/v.mp4", "--out", "{tmp}/d", "--size", "0"], "--size"),
    ("preprocess", ["{tmp}/v.mp4", "--out", "{tmp}/d", "--smooth", "nan"], "--smooth"),
    ("features", ["--chunk-seconds", "-2", "{tmp}"], "--chunk-seconds"),
    ("evaluators", ["train", "--data", "{tmp}", "--out", "{tmp}/e", "--epochs", "-1"], "--epochs"),
    ("evaluators", ["train", "--data", "{tmp}", "--out", "{tmp}/e", "--threads", "-3"], "--threads"),
    ("import_mead", ["{tmp}", "--out", "{tmp}/m", "--max-clips", "-1"], "--max-clips"),
    ("score", ["{tmp}/a.mp4", "{tmp}/b.mp4", "--chunk", "0"], "--chunk"),
    ("render_demo", ["--gaussians", "-5"], "--gaussians"),
    ("tables", ["--runs", "{tmp}", "--table", "nope"], "--table"),
    ("infer", ["ckpt=x", "audio=y", "out={tmp}/z.mp4", "emotion=happy", "blend=neutral:5"], "blend"),
    ("infer", ["ckpt=x", "audio=y", "out={tmp}/z.mp4", "backend=nope"], "backend"),
    ("infer", ["ckpt=x", "audio=y", "out={tmp}/z.mp4", "emotion=happy", "intensity=7"], "intensity"),
    ("eval", ["ckpt=x", "max_frames=-5"], "max_frames"),
    ("eval", ["ckpt=x", "max_clips=-1"], "max_clips"),
    ("eval", ["ckpt=x", "backend=nope"], "backend"),
]


@pytest.mark.parametrize("module,args,needle", CASES, ids=[f"{m}:{n}" for m, _, n in CASES])
def test_out_of_range_argument_is_one_line_exit_2(module, args, needle, tmp_path, capsys):
    main = importlib.import_module(f"ua3dtalk.cli.{module}").main
    argv = [a.replace("{tmp}", str(tmp_path)) for a in args]
    try:
        code = main(argv)
    except SystemExit as e:  # argparse exits
        code = e.code
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert code == 2, err
    assert len(err) == 1 and needle in err[0] and "Traceback" not in err[0], err
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # nothing created


@pytest.mark.parametrize("module", ["infer", "eval", "synth", "preprocess", "features", "evaluators", "import_mead",
                                    "score", "tables", "validate", "teacher"])
def test_help_exits_0(module, capsys):
    main = importlib.import_module(f"ua3dtalk.cli.{module}").main
    try:
        code = main(["--help"])
    except SystemExit as e:
        code = e.code
    assert code in (0, None) and capsys.readouterr().out.strip()
