"""Where the project's own directories are: the repository root, the Hydra config root, the benchmarks.

Torch-free (the console scripts use it while parsing arguments).
"""
from __future__ import annotations

import os
from pathlib import Path


def repo_root() -> Path:
    """The directory holding ``src/`` (a source checkout or an editable install)."""
    return Path(__file__).resolve().parents[2]


def config_dir() -> Path:
    """The Hydra config root: ``$UA3DTALK_CONFIG_DIR``, ``./experiments``, or the repository's ``experiments``."""
    env = os.environ.get("UA3DTALK_CONFIG_DIR")
    candidates = ([Path(env)] if env else []) + [Path.cwd() / "experiments", repo_root() / "experiments"]
    for c in candidates:
        if (c / "train.yaml").is_file():
            return c.resolve()
    raise FileNotFoundError("ua3dtalk: no Hydra config root found (looked for train.yaml in "
                            + ", ".join(str(c) for c in candidates) + "); set UA3DTALK_CONFIG_DIR")


def benchmarks_dir() -> Path:
    """The repository's ``benchmarks/`` directory (beside ``src/``; it may not exist in an installed wheel)."""
    return repo_root() / "benchmarks"
