"""``ua3dtalk-train``: train UA-3DTalk stage by stage from a Hydra config (``experiments/`` is the root).

    ua3dtalk-train experiment=smoke
    ua3dtalk-train experiment=smoke resume=true                    # continue an interrupted run
    ua3dtalk-train experiment=abl_fusion_uniform scale=demo seed=1  # an ablation row at CPU-demo scale
    ua3dtalk-train -m grid=ablation launcher=slurm trainer=gpu      # the ablation table, one SLURM job per run
    ua3dtalk-train experiment=smoke trainer=ddp_cpu                 # 2 processes (gloo); trainer=ddp on GPUs

Run directory (``paths.run_dir`` = ``outputs/runs/<experiment>/<subject>/seed<k>``):

* ``config.yaml`` (resolved), ``env.json`` (git commit and dirty flag, package versions, host, command line);
* ``checkpoints/<stage>/last.ckpt`` (atomic; every ``checkpoint_every`` steps and at the end of the
  stage) and ``checkpoints/<stage>/done.json`` (the stage's final validation metrics);
* ``logs/<stage>/metrics.csv`` (the CSV logger is always on) and, with ``logger=wandb``, ``wandb/``;
* ``metrics.json``: experiment, subject, seed, components, per-stage metrics, the final ``val/*``
  metrics and the best value of every ``val/*`` metric seen during training (what
  ``ua3dtalk-tables`` reads).

Stages run in the order of ``stages``, each starting from the weights of the previous one; a stage
whose module is absent (``model/prior=none``, ``model/emotion=none``) is skipped.

Fault tolerance (``resume=true``): finished stages are taken from their ``last.ckpt``; an interrupted
stage continues from its ``last.ckpt`` with the same result as an uninterrupted run: the random
state is re-derived at every step from (seed, stage, step), the training order of an epoch depends
only on (seed, epoch) and is fast-forwarded to the checkpoint's batch, and the density-control
statistics are stored in the checkpoint.

Multi-process (``trainer=ddp`` / ``ddp_cpu``): every rank sees its shard of each epoch's frames;
gradients of all trained parameters are averaged (including Gaussians created by densification,
which DDP's reducer does not know), and the density-control statistics are summed over ranks before
densification, so all ranks keep identical Gaussians. Only rank 0 writes files; with more than one
process every rank writes a fingerprint of its final weights to ``fingerprints/rank<k>.json``.

This module turns the config into objects; the training itself is library code without Hydra:
:mod:`ua3dtalk.curriculum` (the stages), :mod:`ua3dtalk.callbacks.training` (reseeding, density state, DDP
gradient averaging), :mod:`ua3dtalk.callbacks.loggers` (wandb, CSV rows on resume) and
:mod:`ua3dtalk.data.epoch_sampler` (the resumable, sharded training order).

Exit codes of the console script: 0 done; 2 a user error (bad config value, dataset, checkpoint: one
line on stderr, no traceback; ``UA3DTALK_DEBUG=1`` re-raises); 3 a non-finite loss; 75 a simulated
interruption (``interrupt_at``).
"""
from __future__ import annotations

import os
import platform
import socket
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any, Optional

from ..constants import STAGES
from ..curriculum import LOWER_IS_BETTER, SimulatedInterruption, is_better  # noqa: F401 (this module's API)
from ..paths import config_dir
from ..utils.io import atomic_write_json, atomic_write_text
from .build import (DATA_CLI_KEYS, OPTIONAL_MODULES, SYNTH_W2V_MODELS, build_datamodule,  # noqa: F401 (re-exported)
                    build_model, component_tags, components, datamodule_kwargs, drop_unused_extractor_options,
                    ensure_dataset, ensure_w2v_model, fill_data_info, model_config)
from .identity import check_resume_config, claim_run_dir, identity_overrides, register_resolvers, variant_name

register_resolvers()  # ${ua3dtalk_variant:} in train.yaml (also in submitit workers, which import this module)

LOGGER_CLI_KEYS = ("optional",)
"""Keys of ``logger`` entries read by the CLI only (``optional: true``: skip when the package is missing)."""

_MOVED = {"WandbRunLogger": "..callbacks.loggers"}
"""Names that moved out of this module, still reachable here (``_target_: ua3dtalk.cli.train.WandbRunLogger``
in the configs of existing runs); imported on first use, so that ``import ua3dtalk.cli.train`` stays torch-free."""


def __getattr__(name: str):
    if name in _MOVED:
        import importlib

        return getattr(importlib.import_module(_MOVED[name], __package__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# --------------------------------------------------------------------------------------------------
# composing configs (the data and model objects: .build)
# --------------------------------------------------------------------------------------------------


def compose(overrides: list[str] | tuple = (), config_name: str = "train"):
    """Compose a config programmatically (tests, notebooks)."""
    from hydra import compose as h_compose
    from hydra import initialize_config_dir

    from omegaconf import OmegaConf

    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        cfg = h_compose(config_name=config_name, overrides=list(overrides), return_hydra_config=False)
    if "variant" in cfg:  # no Hydra job here: the run identity from the overrides given
        OmegaConf.update(cfg, "variant", variant_name(overrides))
        OmegaConf.update(cfg, "identity_overrides", identity_overrides(overrides))
    raw = OmegaConf.to_container(cfg.data, resolve=False) if "data" in cfg else {}
    if str(raw.get("subject", "")).startswith("${ua3dtalk_subject:"):  # … and the subject from data.root=
        from .identity import subject_name

        OmegaConf.update(cfg, "data.subject", subject_name(overrides, cfg.data.subject))
    return cfg


def list_experiments() -> list[str]:
    """Names of the experiment files (``experiments/experiment/*.yaml``), sorted."""
    return sorted(p.stem for p in (config_dir() / "experiment").glob("*.yaml"))


def _env_info() -> dict:
    import importlib.metadata as md

    def ver(p):
        try:
            return md.version(p)
        except md.PackageNotFoundError:
            return None

    here = Path(__file__).resolve().parent

    def git(*args) -> Optional[str]:
        try:
            r = subprocess.run(["git", *args], capture_output=True, text=True, cwd=here, timeout=10)
            return r.stdout.strip() if r.returncode == 0 else None
        except (OSError, subprocess.SubprocessError):
            return None

    status = git("status", "--porcelain", "--untracked-files=no")
    info = {"git_commit": git("rev-parse", "HEAD") or None, "git_dirty": None if status is None else bool(status),
            "python": platform.python_version(), "platform": platform.platform(), "host": socket.gethostname(),
            "argv": list(sys.argv), "cwd": os.getcwd(),
            "packages": {p: ver(p) for p in ("ua3dtalk", "torch", "torchvision", "lightning", "torchmetrics",
                                             "hydra-core", "omegaconf", "transformers", "numpy", "wandb",
                                             "hydra-submitit-launcher")}}
    try:
        import torch

        info["torch_threads"] = torch.get_num_threads()
        info["cuda"] = torch.version.cuda if torch.cuda.is_available() else None
    except Exception:  # noqa: BLE001 - informational only
        pass
    return info


# --------------------------------------------------------------------------------------------------
# loggers and callbacks from the config
# --------------------------------------------------------------------------------------------------


def build_loggers(cfg, run_dir: Path) -> tuple[list, Optional[Any]]:
    """Instantiate ``cfg.logger`` once per run → (run loggers, the wandb logger or None). The CSV
    loggers are per stage (see :func:`stage_csv_logger`) and not returned; optional loggers whose
    package is missing are skipped with a warning."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from ..callbacks.loggers import WandbRunLogger

    loggers, wandb_logger = [], None
    for key, lcfg in (cfg.get("logger") or {}).items():
        if lcfg is None or "CSVLogger" in str(lcfg.get("_target_")):
            continue
        c = OmegaConf.to_container(lcfg, resolve=True)
        optional = bool(c.pop("optional", False))
        for k in LOGGER_CLI_KEYS:
            c.pop(k, None)
        if "WandbRunLogger" in str(c.get("_target_")):
            c["tags"] = list(dict.fromkeys(list(c.get("tags") or []) + component_tags(cfg)))
        try:
            lg = instantiate(c)
        except Exception as e:  # noqa: BLE001 - Hydra wraps the ImportError of a missing optional package
            if not optional:
                raise
            warnings.warn(f"logger.{key}: skipped ({str(e).splitlines()[-1]})", stacklevel=2)
            continue
        if isinstance(lg, WandbRunLogger):
            wandb_logger = lg
        loggers.append(lg)
    return loggers, wandb_logger


def stage_csv_logger(cfg, run_dir: Path, stage: str, keep_until_step: Optional[int] = None,
                     pending: Optional[dict] = None):
    """The CSV logger of one stage (``<run_dir>/logs/<stage>/metrics.csv``); always on. When resuming
    (``keep_until_step`` = the checkpoint's global step), the rows logged up to that step are kept
    (Lightning's CSV writer would delete the file; :func:`~ua3dtalk.callbacks.loggers.restore_csv_rows`);
    later rows are logged again by the resumed run."""
    from hydra.utils import instantiate
    from lightning.pytorch.loggers import CSVLogger

    from ..callbacks.loggers import restore_csv_rows
    from ..curriculum import world_and_rank

    lg = None
    for lcfg in (cfg.get("logger") or {}).values():
        if lcfg is not None and "CSVLogger" in str(lcfg.get("_target_")):
            lg = instantiate(lcfg, version=stage)
            break
    if lg is None:
        lg = CSVLogger(save_dir=str(run_dir), name="logs", version=stage)
    return restore_csv_rows(lg, keep_until_step, pending, is_main=world_and_rank()[1] == 0)


def _user_callbacks(cfg) -> list:
    from hydra.utils import instantiate

    return [instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c is not None]


def _planned_world(cfg) -> int:
    """Processes the trainer config asks for (devices × nodes) when a DDP strategy is configured."""
    t = cfg.trainer
    strat = t.get("strategy")
    if strat is None or "ddp" not in str(strat.get("_target_", strat) if hasattr(strat, "get") else strat).lower():
        return 1
    dev = t.get("devices", 1)
    if isinstance(dev, (list, tuple)) or (hasattr(dev, "__len__") and not isinstance(dev, str)):
        n = len(dev)
    elif str(dev) in ("-1", "auto"):
        import torch

        n = max(1, torch.cuda.device_count()) if str(t.get("accelerator")) == "gpu" else 1
    else:
        n = int(dev)
    return n * int(t.get("num_nodes", 1) or 1)


def _merge_json(path: Path, values: dict) -> dict:
    """Merge ``values`` into the JSON object at ``path`` (see :func:`ua3dtalk.utils.io.merge_json`)."""
    from ..utils.io import merge_json

    return merge_json(path, values)


# --------------------------------------------------------------------------------------------------
# the run
# --------------------------------------------------------------------------------------------------


def curriculum_of(cfg, stages: list[str], planned_world: int, comp: dict):
    """The :class:`~ua3dtalk.curriculum.Curriculum` of a training config (its active ``stages``)."""
    from ..curriculum import Curriculum

    ia = cfg.get("interrupt_at")
    return Curriculum(run_dir=Path(cfg.paths.run_dir), stages=stages,
                      stage_steps={s: int(cfg.stage_steps[s]) for s in stages}, seed=int(cfg.seed),
                      val_every=int(cfg.val_every), checkpoint_every=int(cfg.get("checkpoint_every") or 0),
                      resume=bool(cfg.resume), checkpoint_monitor=str(cfg.get("checkpoint_monitor") or "val/psnr"),
                      interrupt_at=(ia.get("stage"), int(ia.get("step"))) if ia is not None else None,
                      planned_world=planned_world,
                      hparams={"experiment": str(cfg.name), "seed": int(cfg.seed),
                               **{f"component/{k}": v for k, v in comp.items()}})


def run(cfg) -> dict:
    """Train every configured stage; returns the metrics written to ``metrics.json``."""
    import functools

    import lightning as L
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from ..curriculum import active_stages, report_non_finite, train_stages, world_and_rank
    from ..models.module import NonFiniteLossError
    from .config_checks import check_train_config

    bad = [s for s in cfg.stages if s not in STAGES]
    if bad:
        raise ValueError(f"stages: unknown stage(s) {bad}; choose from {', '.join(STAGES)}")
    check_train_config(cfg)  # typed, range-checked settings before any work (seed, steps, intervals, rates, …)
    from ..utils.malloc import use_cpu_allocator

    use_cpu_allocator(str(cfg.get("cpu_allocator", "reuse")))  # freed blocks reused: no page faults each step
    run_dir = Path(cfg.paths.run_dir)
    planned_world = _planned_world(cfg)
    is_main = world_and_rank()[1] == 0  # before the trainer exists: from the launcher's environment
    ident = {"experiment": str(cfg.name), "variant": str(cfg.get("variant") or ""),
             "identity_overrides": list(cfg.get("identity_overrides") or []),
             "scale": str(cfg.get("scale_label") or ""),
             "subject": str(cfg.data.get("subject", "")), "seed": int(cfg.seed)}
    # claim the directory before anything is written: a run is never started over another one (DESIGN §9.1)
    new_run = (claim_run_dir(run_dir, bool(cfg.resume), ident, {"data.root": cfg.data.get("root")})
               if is_main else False)
    L.seed_everything(int(cfg.seed), workers=True)
    dm = build_datamodule(cfg)
    fill_data_info(cfg, dm)
    from .emotion_source import settle_emotion_source

    settle_emotion_source(cfg, dm)  # a video without labels or teacher: no emotion stage, one line (DESIGN §4.4)
    if len(dm.split_index.get("val", ())) == 0:
        raise ValueError(f"data.root={cfg.data.root}: the dataset has no validation frame (regular: "
                         "transforms_val.json; emotional: val_fraction / clips per emotion), so no val/ metric "
                         "could be reported; add validation frames")
    if is_main:
        from ..utils.io import remove_stale_temporaries_under

        if not new_run:  # a resume: the configuration must be the run's (model sizes, data, schedule, …)
            check_resume_config(run_dir, OmegaConf.to_container(cfg, resolve=True))
        remove_stale_temporaries_under(run_dir)  # left by a run killed mid-write (this host, dead pids)
        atomic_write_text(run_dir / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
        atomic_write_json(run_dir / "env.json", _env_info())
    model = build_model(cfg, None)
    stages = active_stages(cfg.stages, model)
    if not stages:
        raise ValueError("ua3dtalk-train: no stage to run (check `stages` and the model's modules)")
    model.stage = stages[0]
    model.data_config = {k: datamodule_kwargs(cfg).get(k) for k in
                         ("root", "feature", "context_feature", "extractor_model", "extractor_layer", "neighbours",
                          "background")}
    comp = components(model.model_config)
    metrics: dict = {**ident, "components": comp, "tags": component_tags(cfg),
                     "data": str(cfg.data.get("root")), "dataset": Path(str(cfg.data.get("root"))).parent.name,
                     "data_kind": "emotional" if hasattr(dm, "split_clips") else "regular",
                     "run_dir": str(run_dir), "stages": {}}
    run_loggers, wandb_logger = build_loggers(cfg, run_dir)
    if wandb_logger is not None and is_main:
        wandb_logger.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))
    try:
        try:
            result = train_stages(curriculum_of(cfg, stages, planned_world, comp), model, dm,
                                  make_trainer=functools.partial(instantiate, cfg.trainer),
                                  stage_logger=functools.partial(stage_csv_logger, cfg, run_dir),
                                  run_loggers=run_loggers, user_callbacks=lambda: _user_callbacks(cfg),
                                  is_main=is_main)
        except NonFiniteLossError as e:
            report_non_finite(e)
            raise SystemExit(3) from None
        metrics["stages"] = result.stages
        metrics.update(result.summary())
        final, best = result.final, result.best
        if result.rank == 0:
            _merge_json(run_dir / "metrics.json", metrics)  # keeps keys written by metric callbacks / ua3dtalk-eval
            if wandb_logger is not None:
                wandb_logger.set_summary({**final, **{f"best/{k}": v for k, v in best.items()}})
            print(f"ua3dtalk-train: wrote {run_dir / 'metrics.json'}: "
                  + ", ".join(f"{k}={v:.4g}" for k, v in final.items()), flush=True)
            if cfg.get("test") is not None and cfg.test.get("enabled"):  # every run evaluates (DESIGN §9.2)
                from .run_eval import evaluate_run

                test_metrics = evaluate_run(cfg, run_dir, metrics)
                metrics["eval_protocol"] = test_metrics.pop("eval_protocol", None)
                clip = test_metrics.pop("test_clip", None)
                metrics.update(test_metrics)
                if wandb_logger is not None:
                    wandb_logger.set_summary({k: v for k, v in test_metrics.items() if k.startswith("test/")})
                    if clip:
                        wandb_logger.log_video("test/clip", [clip], caption=["ground truth (left), render (right)"])
                print("ua3dtalk-train: test: " + ", ".join(f"{k}={v:.4g}" for k, v in test_metrics.items()
                                                           if k.startswith("test/")), flush=True)
        return metrics
    finally:
        if wandb_logger is not None:
            wandb_logger.finish()


def _memoize_hydra_group_listing() -> None:
    """``--help``: Hydra lists the options of every config group (~150 here) twice, deep-copying its config
    repository for each lookup; within one help call the repository does not change, so the lookups are
    memoised (same text, a fraction of the time). A Hydra without this internal is left alone."""
    try:
        from hydra._internal.config_loader_impl import ConfigLoaderImpl
    except ImportError:  # pragma: no cover - another Hydra layout
        return
    orig = getattr(ConfigLoaderImpl, "get_group_options", None)
    if orig is None or getattr(orig, "_ua3dtalk_memo", False):
        return
    memo: dict = {}

    def get_group_options(self, group_name, results_filter=None, config_name=None, overrides=None, **kw):
        if kw:
            return orig(self, group_name, results_filter, config_name, overrides, **kw)
        from hydra.core.object_type import ObjectType

        rf = ObjectType.CONFIG if results_filter is None else results_filter
        key = (id(self), group_name, rf, config_name, tuple(overrides or ()))
        if key not in memo:
            memo[key] = list(orig(self, group_name, rf, config_name, overrides))
        return list(memo[key])

    get_group_options._ua3dtalk_memo = True
    ConfigLoaderImpl.get_group_options = get_group_options


def _one_log_stream() -> None:
    """Lightning's messages once: the ``lightning`` package adds its own console handler and still propagates
    to the root logger, where Hydra's job logging prints everything again (each line twice, one with an
    ``INFO:`` prefix). With a root handler in place, Lightning's own handlers go."""
    import logging

    import lightning  # noqa: F401 (adds the handlers, when first imported)

    if not logging.getLogger().hasHandlers():
        return
    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        lg = logging.getLogger(name)
        for h in list(lg.handlers):
            if type(h) is logging.StreamHandler:
                lg.removeHandler(h)
        lg.propagate = True


def main(argv=None) -> int:
    import hydra

    argv = list(sys.argv[1:] if argv is None else argv)
    sys.argv = [sys.argv[0]] + argv
    if any(a in ("-h", "--help") for a in argv):
        _memoize_hydra_group_listing()

    @hydra.main(config_path=str(config_dir()), config_name="train", version_base="1.3")
    def _main(cfg):
        from hydra.errors import InstantiationException

        _one_log_stream()
        try:
            run(cfg)
        except SimulatedInterruption as e:
            print(f"ua3dtalk-train: {e}; continue with resume=true", file=sys.stderr, flush=True)
            raise SystemExit(75) from None
        except (ValueError, OSError, InstantiationException) as e:  # user errors: one message, no traceback
            if os.environ.get("UA3DTALK_DEBUG"):
                raise
            print(f"ua3dtalk-train: error: {e}", file=sys.stderr, flush=True)
            raise SystemExit(2) from None

    _main()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
