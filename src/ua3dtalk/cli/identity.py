"""Run identity: which configuration a run directory, a wandb run and a table row stand for (DESIGN §9.1).

A run is named by its experiment, its *variant*, its subject, its scale and its seed::

    outputs/runs/<scale>/<name>[+<variant>]/<subject>/seed<k>

The variant is made of the command-line overrides that change what is trained (model, data, schedule,
renderer, …), sorted, e.g. ``+model.deformation.fusion-uniform+model.lr_net-1e-3``; overrides that only
say where or how a run executes or logs (:data:`NOT_IDENTITY`: launcher, trainer, logger, paths, …) and
the keys that have a level of their own (experiment/name, scale, subject, seed) are left out. A long
or unusual variant is shortened and completed by a hash of the full text; the full list is in the
run's ``config.yaml`` (``variant``, ``identity_overrides``) and ``metrics.json``. So no two different
configurations share a folder, a wandb id or a table row.

A run directory is claimed atomically (``run.json`` created exclusively) before anything is written;
a directory that already holds a run is refused unless ``resume=true`` (:class:`RunExistsError`), and a
resume whose configuration differs from the stored one in a key that changes the result is refused too
(:func:`config_differences`).
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import time
from pathlib import Path
from typing import Any, Iterable

NOT_IDENTITY = ("experiment", "name", "seed", "resume", "scale", "scale_label", "launcher", "logger",
                "callbacks", "paths", "hydra", "trainer", "interrupt_at", "checkpoint_every", "val_every", "tags",
                "grid", "data.subject", "data.dir", "data.root", "data.num_workers", "variant", "test",
                "checkpoint_monitor", "cpu_allocator")
"""Override keys (and their sub-keys) that are not part of a run's identity: where and how it runs and logs,
and the keys with a path level of their own (``data.root`` names the subject: :func:`subject_name`)."""
RESUME_IGNORED = ("resume", "launcher", "logger", "callbacks", "paths", "hydra", "trainer", "interrupt_at",
                  "checkpoint_every", "val_every", "tags", "grid", "data.num_workers", "variant", "scale_label",
                  "identity_overrides", "test", "cpu_allocator")
"""Config keys that may change between a run and its resume."""
MAX_VARIANT = 64
RUN_MARKERS = ("run.json", "config.yaml", "metrics.json", "checkpoints")
"""Entries whose presence means a directory already holds a run."""


class RunExistsError(ValueError):
    """The run directory already holds a run and ``resume`` is not set (or the resume does not match)."""


def _key(override: str) -> str:
    key = override.strip().lstrip("+~").partition("=")[0]
    return key.replace("/", ".").strip()


def _matches(key: str, prefixes: Iterable[str]) -> bool:
    return any(key == p or key.startswith(p + ".") for p in prefixes)


def identity_overrides(overrides: Iterable[str]) -> list[str]:
    """The overrides of a command line that change what is trained, normalised and sorted."""
    out = set()
    for o in overrides:
        o = str(o).strip()
        if not o or _matches(_key(o), NOT_IDENTITY):
            continue
        out.add(o)
    return sorted(out, key=lambda o: (o.lstrip("+~").replace("/", "."), o))


def variant_name(overrides: Iterable[str]) -> str:
    """``""`` for the experiment as written, else ``+<key>-<value>[+<key>-<value>…]`` (safe in a path, a Hydra
    override value, a shell word and a wandb name: letters, digits, ``. _ + -``), ≤ 65 characters; shortened
    and completed by ``-<hash of the full text>`` when longer or when other characters had to be replaced."""
    ids = identity_overrides(overrides)
    if not ids:
        return ""
    # canonical, Hydra-, shell- and wandb-safe spelling: key-value, joined by "+", group paths with "."
    text = "+".join(o.replace("/", ".").replace("=", "-", 1) for o in ids)
    safe = re.sub(r"[^A-Za-z0-9._+\-]", "-", text)
    if safe != text or len(safe) > MAX_VARIANT:
        digest = hashlib.sha1(",".join(ids).encode()).hexdigest()[:8]
        safe = f"{safe[:MAX_VARIANT - 9].rstrip('-+.')}-{digest}"
    return "+" + safe


def _variant_resolver(*, _root_: Any) -> str:
    """``${ua3dtalk_variant:}``: the variant of the running Hydra job (from ``hydra.overrides.task``);
    ``""`` when there is no Hydra job (the ``compose`` API sets ``variant`` itself)."""
    return variant_name(_task_overrides(_root_))


def _task_overrides(root: Any) -> list[str]:
    """``hydra.overrides.task`` of the config being resolved, else of the running Hydra job (the task function's
    config has no ``hydra`` node: Hydra keeps it in ``HydraConfig``), else ``[]`` (no Hydra job)."""
    from omegaconf import OmegaConf

    try:
        task = OmegaConf.select(root, "hydra.overrides.task", default=None)
    except Exception:  # noqa: BLE001 - no hydra node
        task = None
    if task is None:
        try:
            from hydra.core.hydra_config import HydraConfig

            task = HydraConfig.get().overrides.task
        except (ImportError, ValueError):
            task = None
    return [str(t) for t in task] if task is not None else []


def _identity_resolver(*, _root_: Any) -> list[str]:
    """``${ua3dtalk_identity:}``: the identity overrides of the running Hydra job (``[]`` without one)."""
    return identity_overrides(_task_overrides(_root_))


def subject_name(overrides: Iterable[str], default: str) -> str:
    """The subject level of a run: the last component of ``data.root`` when the command line gives the
    dataset by its directory (``data.root=data/me`` → ``me``), else ``default`` (the configured subject)."""
    root = None
    for o in overrides:
        o = str(o).strip()
        if _key(o) == "data.root" and not o.startswith("~"):
            root = o.partition("=")[2].strip().strip("'\"")
    if root:
        name = Path(os.path.expanduser(root).rstrip("/")).name
        if name and name not in (".", ".."):
            return name
    return str(default)


def _subject_resolver(default: Any, *, _root_: Any) -> str:
    """``${ua3dtalk_subject:DEFAULT}``: :func:`subject_name` of the running Hydra job's overrides (a
    ``data.subject=`` on the command line replaces the whole value, so it always wins)."""
    return subject_name(_task_overrides(_root_), default)


def slurm_tasks(devices: Any) -> int:
    """``${ua3dtalk_slurm_tasks:${trainer.devices}}``: tasks per node = processes per node, a positive count
    (SLURM places a job before it starts: "all visible devices" has no meaning there)."""
    try:
        n = int(devices)
    except (TypeError, ValueError):
        n = -1
    if n < 1:
        raise ValueError(f"launcher=slurm: trainer.devices must be a number of devices per node (≥ 1), got "
                         f"{devices!r}; give trainer.devices=N")
    return n


def slurm_gpus(accelerator: Any, devices: Any) -> int:
    """``${ua3dtalk_slurm_gpus:${trainer.accelerator},${trainer.devices}}``: GPUs per node to ask SLURM for
    (0 for a CPU trainer)."""
    n = slurm_tasks(devices)
    return 0 if str(accelerator) == "cpu" else n


def register_resolvers() -> None:
    """Register the project's OmegaConf resolvers (idempotent; done when ``ua3dtalk.cli.train`` is imported):
    ``ua3dtalk_variant`` and ``ua3dtalk_identity`` (run identity), ``ua3dtalk_subject`` (the subject level),
    ``ua3dtalk_slurm_gpus`` and
    ``ua3dtalk_slurm_tasks`` (``launcher/slurm.yaml``)."""
    from omegaconf import OmegaConf

    for name, fn in (("ua3dtalk_variant", _variant_resolver), ("ua3dtalk_identity", _identity_resolver),
                     ("ua3dtalk_subject", _subject_resolver),
                     ("ua3dtalk_slurm_gpus", slurm_gpus), ("ua3dtalk_slurm_tasks", slurm_tasks)):
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, fn)


def holds_run(run_dir: Path) -> bool:
    """Whether ``run_dir`` already holds (part of) a training run."""
    return run_dir.is_dir() and any((run_dir / m).exists() for m in RUN_MARKERS)


def claim_run_dir(run_dir: Path, resume: bool, record: dict, inputs: dict | None = None) -> bool:
    """Claim ``run_dir`` for a new run or check it for a resume, before anything is written there.

    New run (``resume=false``): the directory must not hold a run; ``run.json`` (``record``) is created
    exclusively, so two jobs racing for one directory cannot both start. Returns True when a new run was
    claimed, False on a resume. Raises :class:`RunExistsError` (one line naming the directory), or
    :class:`~ua3dtalk.utils.io.OutputError` when the directory is not writable, has no room, lies under a
    file or inside / around an input (``inputs``: key → path, e.g. the dataset)."""
    from ..utils.io import check_output_dir

    run_dir = Path(run_dir)
    check_output_dir(run_dir, "paths.run_dir", inputs, min_free_bytes=256 << 20, what="run")
    marker = run_dir / "run.json"
    if resume:
        if not holds_run(run_dir):
            run_dir.mkdir(parents=True, exist_ok=True)
            _create_marker(marker, record, run_dir)
            return True
        return False
    if holds_run(run_dir):
        raise RunExistsError(f"{run_dir} already holds a run; add resume=true to continue it, or choose another "
                             "name / paths.run_dir (nothing was changed)")
    run_dir.mkdir(parents=True, exist_ok=True)
    _create_marker(marker, record, run_dir)
    return True


def _create_marker(marker: Path, record: dict, run_dir: Path) -> None:
    try:
        fd = os.open(marker, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        raise RunExistsError(f"{run_dir} was claimed by another job at the same time; add resume=true to continue "
                             "it, or choose another name / paths.run_dir") from None
    with os.fdopen(fd, "w") as f:
        json.dump({**record, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}, f, indent=1)
        f.write("\n")


def _flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(d, dict) and d:
        out: dict[str, Any] = {}
        for k, v in d.items():
            out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: d}


def config_differences(stored: dict, current: dict, limit: int = 6) -> list[str]:
    """Keys (dotted) whose values differ between a run's stored config and the config of its resume,
    leaving out :data:`RESUME_IGNORED`; each as ``key: old → new``."""
    a, b = _flatten(stored), _flatten(current)
    out = []
    for k in sorted(set(a) | set(b)):
        if _matches(k, RESUME_IGNORED):
            continue
        if a.get(k, "<absent>") != b.get(k, "<absent>"):
            out.append(f"{k}: {a.get(k, '<absent>')!r} → {b.get(k, '<absent>')!r}")
    if len(out) > limit:
        out = out[:limit] + [f"… {len(out) - limit} more"]
    return out


def check_resume_config(run_dir: Path, current: dict) -> None:
    """Refuse a resume whose configuration changes the result (model sizes, data, schedule, …)."""
    from omegaconf import OmegaConf

    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        return
    try:
        stored = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
    except Exception as e:  # noqa: BLE001 - YAML / OmegaConf errors of a damaged file
        raise RunExistsError(f"{path}: the stored config cannot be read ({str(e).splitlines()[0]}); cannot check "
                             "the resume") from None
    if not isinstance(stored, dict):
        raise RunExistsError(f"{path}: the stored config is not a mapping; cannot check the resume")
    diff = config_differences(stored, current)
    if diff:
        raise RunExistsError(f"resume=true: the configuration differs from the run in {run_dir} ("
                             + "; ".join(diff) + "); start a new run (another name or paths.run_dir) instead")
