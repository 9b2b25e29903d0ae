"""Helpers of the robustness tests (an importable module: ``conftest`` is not reliably importable by
name when several ``conftest.py`` files exist)."""
from __future__ import annotations

import io
import os
import subprocess
import sys
import traceback
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent


from ua3dtalk.utils.threads import torch_threads as single_thread  # noqa: E402,F401 (one torch thread)


def train_overrides(data_root, run_dir, *extra: str) -> list[str]:
    """Hydra overrides of the smallest training run: the smoke experiment at ``scale=tiny`` on an
    existing dataset (no generation), CSV logger only, no progress bar. The audio context is log-mel
    (``data.context_feature=null``): the smoke experiment's tiny wav2vec2 would be saved on first use under the
    project's ``data/models`` (``data.synth.wav2vec2``, off here), which a test must not rely on."""
    return ["experiment=smoke", "scale=tiny", f"data.root={data_root}", "data.synth=null", "data.context_feature=null",
            f"paths.run_dir={run_dir}", "trainer.enable_progress_bar=false", "++trainer.enable_model_summary=false",
            "callbacks=none", *extra]


@dataclass
class Result:
    """Outcome of one entry-point call: exit ``code`` (``None`` = returned 0 / no exit), captured
    ``out``/``err``, and ``exc``: an exception that escaped ``main`` (a traceback for the user)."""

    code: Optional[int]
    out: str
    err: str
    exc: Optional[BaseException] = None
    tb: str = ""

    @property
    def text(self) -> str:
        return self.out + "\n" + self.err


def call_main(main: Callable, argv: Sequence[str]) -> Result:
    """Run a CLI ``main(argv)`` in-process, capturing stdout/stderr; ``SystemExit`` is the exit code,
    any other exception is recorded (it would be a traceback at the console)."""
    out, err = io.StringIO(), io.StringIO()
    code, exc, tb = None, None, ""
    argv0 = list(sys.argv)
    try:
        with redirect_stdout(out), redirect_stderr(err):
            rc = main(list(argv))
        code = int(rc or 0)
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        if not isinstance(e.code, (int, type(None))):
            err.write(str(e.code))
    except BaseException as e:  # noqa: BLE001 - recorded for the assertion
        exc, tb = e, traceback.format_exc()
    finally:
        sys.argv = argv0
    return Result(code, out.getvalue(), err.getvalue(), exc, tb)


def run_cli(module: str, argv: Sequence[str], timeout: float = 300, env: Optional[dict] = None,
            cwd: Optional[Path] = None) -> Result:
    """Run ``python -m ua3dtalk.cli.<module> ARGV`` in a subprocess (what the console script does)."""
    e = dict(os.environ)
    e.update({"WANDB_MODE": "offline", "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"})
    e.update(env or {})
    p = subprocess.run([sys.executable, "-m", f"ua3dtalk.cli.{module}", *map(str, argv)], capture_output=True,
                       text=True, timeout=timeout, env=e, cwd=str(cwd or REPO))
    return Result(p.returncode, p.stdout, p.stderr)


def assert_user_error(r: Result, *needles: str, codes=None) -> None:
    """A clean user error: non-zero exit, no escaped exception / traceback, and every ``needle``
    (file or field name, what was expected) in the output (case-insensitive)."""
    assert r.exc is None, f"an exception escaped main():\n{r.tb}"
    assert r.code not in (None, 0), f"exit code {r.code}, expected non-zero; output:\n{r.text[-3000:]}"
    if codes is not None:
        assert r.code in codes, f"exit code {r.code}, expected one of {codes}; output:\n{r.text[-3000:]}"
    assert "Traceback" not in r.text, f"traceback printed for a user error:\n{r.text[-4000:]}"
    low = r.text.lower()
    missing = [n for n in needles if str(n).lower() not in low]
    assert not missing, f"message lacks {missing}:\n{r.text[-3000:]}"


def tree(root: Path) -> dict[str, int]:
    """Every file below ``root`` (relative path → size), symlinks not followed."""
    root = Path(root)
    if not root.exists():
        return {}
    out = {}
    for p in sorted(root.rglob("*")):
        if p.is_file() and not p.is_symlink():
            out[str(p.relative_to(root))] = p.stat().st_size
    return out


def temp_leftovers(root: Path) -> list[str]:
    """Temporary files of :func:`ua3dtalk.utils.io.atomic_path` (hidden ``.<name>.*``) below ``root``."""
    return sorted(str(p.relative_to(root)) for p in Path(root).rglob(".*") if p.is_file()
                  and not any(part in (".hydra",) for part in p.relative_to(root).parts))
