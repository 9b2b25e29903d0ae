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

Exit codes of the console script: 0 done; 2 a user error (bad config value, dataset, checkpoint: one
line on stderr, no traceback; ``UA3DTALK_DEBUG=1`` re-raises); 3 a non-finite loss; 75 a simulated
interruption (``interrupt_at``).
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import platform
import socket
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Optional

from ..utils.io import atomic_write_json, atomic_write_text
from .config_checks import check_train_config
from .identity import check_resume_config, claim_run_dir, identity_overrides, register_resolvers, variant_name

register_resolvers()  # ${ua3dtalk_variant:} in train.yaml (also in submitit workers, which import this module)

STAGES = ("prior", "emotion", "mouth", "face", "fuse")
DATA_CLI_KEYS = ("synth", "subject", "dir")
"""Keys of ``data`` configs read by the CLI only (not DataModule arguments)."""
LOGGER_CLI_KEYS = ("optional",)
"""Keys of ``logger`` entries read by the CLI only (``optional: true``: skip when the package is missing)."""
OPTIONAL_MODULES = ("prior", "emotion", "emotion_field", "emotion_control", "face_density", "mouth_density")
"""Model entries that may be absent (null); a leftover dict of options without ``_target_`` counts as absent."""
LOWER_IS_BETTER = ("mse", "lpips", "fid", "lmd", "loss", "sync_d", "syncd", "error", "err", "mae", "l1")
"""Metric names containing one of these are minimised (best = min); all others are maximised."""


class SimulatedInterruption(RuntimeError):
    """Raised by ``interrupt_at={stage, step}`` after that step's checkpoint (tests of ``resume=true``)."""


# --------------------------------------------------------------------------------------------------
# configuration
# --------------------------------------------------------------------------------------------------


def config_dir() -> Path:
    """The Hydra config root: ``$UA3DTALK_CONFIG_DIR``, ``./experiments``, or the repository's ``experiments``."""
    env = os.environ.get("UA3DTALK_CONFIG_DIR")
    candidates = ([Path(env)] if env else []) + [Path.cwd() / "experiments",
                                                  Path(__file__).resolve().parents[3] / "experiments"]
    for c in candidates:
        if (c / "train.yaml").is_file():
            return c.resolve()
    raise FileNotFoundError("ua3dtalk: no Hydra config root found (looked for train.yaml in "
                            + ", ".join(str(c) for c in candidates) + "); set UA3DTALK_CONFIG_DIR")


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


SYNTH_W2V_MODELS = ("tiny",)
"""Values of ``data.synth.wav2vec2``: which stand-in wav2vec2 model the CLI saves at ``data.extractor_model``."""


def _uses_wav2vec2(data) -> bool:
    return "wav2vec2" in (data.get("feature"), data.get("context_feature"))


def ensure_w2v_model(cfg) -> Optional[Path]:
    """``data.synth.wav2vec2=tiny`` with ``data.feature`` or ``data.context_feature`` = wav2vec2: save the tiny
    random-initialised wav2vec2 model (:mod:`ua3dtalk.data.tiny_wav2vec2`) at ``data.extractor_model``
    unless it is there already (atomic; reused when complete). Returns its directory, or None when not
    configured."""
    synth = cfg.data.get("synth")
    kind = synth.get("wav2vec2") if synth is not None else None
    if not kind or not _uses_wav2vec2(cfg.data):
        return None
    if kind not in SYNTH_W2V_MODELS:
        raise ValueError(f"data.synth.wav2vec2: unknown model {kind!r}; choose {', '.join(SYNTH_W2V_MODELS)} "
                         "(a tiny random-initialised wav2vec2) or null (data.extractor_model must then exist)")
    path = cfg.data.get("extractor_model")
    if not path:
        raise ValueError("data.synth.wav2vec2=tiny needs data.extractor_model=DIR (where the tiny model is saved)")
    from ..data.tiny_wav2vec2 import save_tiny_wav2vec2

    return save_tiny_wav2vec2(str(path))


def ensure_dataset(cfg) -> None:
    """Generate the synthetic dataset named by ``data.synth`` when its root does not exist yet, with the
    features of ``data.feature`` (and ``data.context_feature``) cached for every clip; first save the tiny
    wav2vec2 model when ``data.synth.wav2vec2`` asks for it (also when the dataset exists: ``prepare_data``
    extracts with it)."""
    from ..data.audio import make_extractor
    from ..data.synth.generate import cache_features, generate_emotional, generate_subject

    synth = cfg.data.get("synth")
    if synth is None:
        return
    ensure_w2v_model(cfg)
    if Path(cfg.data.root).exists():
        return
    extractors = []
    for key in ("feature", "context_feature"):  # built before minutes of rendering: a missing model fails first
        feature = cfg.data.get(key, "mel" if key == "feature" else None)
        if feature not in ("mel", "wav2vec2") or feature in [k for k, _ in extractors]:
            continue
        kw = ({} if feature == "mel" else {"model": cfg.data.get("extractor_model"),
                                           "layer": cfg.data.get("extractor_layer"), "config_key": f"data.{key}"})
        extractors.append((feature, make_extractor(feature, **kw)))
    fn = generate_emotional if synth.get("emotional") else generate_subject
    print(f"ua3dtalk-train: generating the synthetic dataset {cfg.data.root} (preset {synth.preset})", flush=True)
    cpl = synth.get("clips_per_level") if synth.get("emotional") else None
    kw = {"clips_per_level": int(cpl)} if cpl else {}
    subject = fn(synth.out, synth.preset, int(synth.get("seed", 0)), synth.get("resolution"), **kw)
    cache_features(subject, [ex for _, ex in extractors])


def datamodule_kwargs(cfg) -> dict:
    """The ``data`` config as DataModule arguments (CLI-only keys removed, interpolations resolved; the
    wav2vec2 options ``extractor_model`` / ``extractor_layer`` are dropped when neither ``feature`` nor
    ``context_feature`` is wav2vec2, so that ``data.context_feature=mel`` / ``data.feature=mel`` alone
    switches an experiment configured for wav2vec2 back to log-mel)."""
    from omegaconf import OmegaConf

    dcfg = OmegaConf.to_container(cfg.data, resolve=True)
    for k in DATA_CLI_KEYS:
        dcfg.pop(k, None)
    return drop_unused_extractor_options(dcfg)


def drop_unused_extractor_options(dcfg: dict) -> dict:
    """``dcfg`` (DataModule arguments) without ``extractor_model`` / ``extractor_layer`` when no feature of it
    is wav2vec2 (the DataModule refuses them for log-mel)."""
    if dcfg.get("feature") == "mel" and not _uses_wav2vec2(dcfg):
        for k in ("extractor_model", "extractor_layer"):
            dcfg.pop(k, None)
    return dcfg


def build_datamodule(cfg, setup: bool = True):
    """Instantiate the DataModule (generating a synthetic dataset first when configured)."""
    from hydra.utils import instantiate

    if setup:
        ensure_dataset(cfg)
    dm = instantiate(datamodule_kwargs(cfg), _recursive_=False)
    if setup:
        dm.prepare_data()
        dm.setup("fit")
    return dm


def model_config(cfg, stage: Optional[str] = None) -> dict:
    """The resolved ``model`` config, ready for ``instantiate``.

    Ablation groups that remove a module also name the deformation views it feeds in the CLI-only key
    ``drop_views`` (``model/prior=none`` → content, style; ``model/emotion=none`` → emotion); those views
    are removed from ``deformation`` / ``mouth_deformation``, so ablations compose freely. (Setting
    ``model.prior=null`` by hand keeps the views, and the model then names the missing module.) Options
    left for a removed module (a dict without ``_target_``, e.g. ``emotion_field.resolution`` set by a
    scale) are dropped. Raises ``ValueError`` when no view is left."""
    from omegaconf import OmegaConf

    mcfg = OmegaConf.to_container(cfg.model, resolve=True)
    if stage is not None:
        mcfg["stage"] = stage
    for key in OPTIONAL_MODULES:  # options set for a module that an ablation removed (no _target_ left)
        if isinstance(mcfg.get(key), dict) and "_target_" not in mcfg[key]:
            mcfg[key] = None
    drop = {v for views in (mcfg.pop("drop_views", None) or {}).values() for v in (views or [])}
    for key in ("deformation", "mouth_deformation"):
        d = mcfg.get(key)
        if d is not None and "views" in d and drop:
            views = [v for v in d["views"] if v not in drop]
            if not views:
                raise ValueError(f"model.{key}.views: no view left after removing {sorted(drop)} (modules absent)")
            d["views"] = views
    return mcfg


def build_model(cfg, stage: Optional[str] = None):
    """Instantiate the :class:`~ua3dtalk.models.module.UA3DTalk` of ``cfg.model`` (see :func:`model_config`)."""
    from hydra.utils import instantiate

    mcfg = model_config(cfg, stage)
    model = instantiate(mcfg)
    model.model_config = mcfg
    return model


def fill_data_info(cfg, dm) -> None:
    """``cfg.data_info`` from the set-up DataModule: feature channels, expression size, frame size and the
    expression columns the dataset marks as emotional (:func:`~ua3dtalk.data.expr_semantics.emotional_expr_columns`,
    None when it does not say)."""
    from omegaconf import open_dict

    from ..data.expr_semantics import emotional_expr_columns

    with open_dict(cfg):
        cfg.data_info.audio_channels = int(dm.audio_channels)
        cfg.data_info.context_channels = int(getattr(dm, "context_channels", dm.audio_channels))
        cfg.data_info.expr_dim = int(dm.expr_dim)
        cfg.data_info.height, cfg.data_info.width = (int(v) for v in dm.image_size)
        cfg.data_info.emotional_expr_dims = emotional_expr_columns(dm.clips) if getattr(dm, "clips", None) else None


def components(mcfg: dict) -> dict[str, str]:
    """The model's components (what the ablations change) from a resolved model config."""
    d = mcfg.get("deformation") or {}
    return {"prior": "learned" if mcfg.get("prior") else "none",
            "emotion": "distilled" if mcfg.get("emotion") else "none",
            "fusion": str(d.get("fusion", "diagonal")),
            "uncertainty": str(d.get("uncertainty", "both")),
            "heads": "single" if d.get("single_head") else "multi",
            "views": "+".join(d.get("views") or []),
            "renderer": str(mcfg.get("backend", "auto"))}


def component_tags(cfg) -> list[str]:
    """wandb tags: ``<component>:<variant>`` for every component, the dataset, then ``cfg.tags``."""
    comp = components(model_config(cfg))
    tags = [f"{k}:{v}" for k, v in comp.items() if k != "renderer"]
    data_name = Path(str(cfg.data.get("root", ""))).parent.name or "data"
    tags.append(f"data:{data_name}")
    tags += [str(t) for t in (cfg.get("tags") or [])]
    return [t[:64] for t in dict.fromkeys(tags)]


def is_better(key: str, new: float, old: Optional[float]) -> bool:
    if old is None or not math.isfinite(old):
        return math.isfinite(new)
    low = any(s in key.lower() for s in LOWER_IS_BETTER)
    return new < old if low else new > old


# --------------------------------------------------------------------------------------------------
# loggers
# --------------------------------------------------------------------------------------------------


def wandb_mode(mode: str = "auto") -> str:
    """``online`` / ``offline`` / ``disabled``: ``WANDB_MODE`` wins; ``auto`` is online only when an API
    key is configured (``WANDB_API_KEY`` or an ``api.wandb.ai`` entry in ``~/.netrc``), else offline."""
    env = os.environ.get("WANDB_MODE", "").strip().lower()
    if env in ("offline", "dryrun"):
        return "offline"
    if env in ("disabled", "online"):
        return env
    if mode not in ("auto", None, ""):
        if mode not in ("online", "offline", "disabled"):
            raise ValueError(f"logger.wandb.mode must be auto, online, offline or disabled, got {mode!r}")
        return mode
    if os.environ.get("WANDB_API_KEY"):
        return "online"
    try:
        import netrc

        rc = netrc.netrc(os.environ.get("NETRC") or None)
        if any("api.wandb.ai" in h for h in rc.hosts):
            return "online"
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        pass
    return "offline"


try:  # the wandb logger class exists whenever lightning is installed (wandb itself is imported lazily)
    from lightning.pytorch.loggers import WandbLogger as _WandbLogger
    from lightning.pytorch.utilities import rank_zero_only as _rank_zero_only
except ImportError:  # pragma: no cover
    _WandbLogger = object

    def _rank_zero_only(fn):
        return fn


class WandbRunLogger(_WandbLogger):
    """:class:`~lightning.pytorch.loggers.WandbLogger` for one training run spanning several stages.

    One wandb run per training run: the x-axis (``trainer/global_step``) continues across stages
    (``step_offset`` is set by the CLI), ``mode="auto"`` is offline unless an API key is configured
    (:func:`wandb_mode`), and the run id is stored in ``<save_dir>/wandb_id.txt`` so that
    ``resume=true`` continues the same wandb run.

    Args:
        mode: ``auto | online | offline | disabled``.
        project, entity, group, name, job_type, tags, save_dir: as ``wandb.init``.
        **kwargs: further ``wandb.init`` / WandbLogger arguments.
    """

    def __init__(self, mode: str = "auto", project: str = "ua3dtalk", entity: Optional[str] = None,
                 group: Optional[str] = None, name: Optional[str] = None, job_type: str = "train",
                 tags: Optional[list] = None, save_dir: str = ".", **kwargs):
        self.mode = wandb_mode(mode)
        save = Path(save_dir)
        id_file = save / "wandb_id.txt"
        run_id = kwargs.pop("id", None)
        if run_id is None and self.mode != "disabled":
            if id_file.is_file():
                run_id = id_file.read_text().strip() or None
            if run_id is None:
                import secrets

                run_id = secrets.token_hex(4)
                if _rank_zero_only.rank == 0:
                    save.mkdir(parents=True, exist_ok=True)
                    atomic_write_text(id_file, run_id + "\n")
        extra = {"mode": "disabled"} if self.mode == "disabled" else {}
        super().__init__(name=name, save_dir=str(save), offline=self.mode == "offline", project=project,
                         entity=entity, group=group, job_type=job_type, tags=list(tags or []), id=run_id,
                         **extra, **kwargs)
        self.step_offset = 0

    @_rank_zero_only
    def log_metrics(self, metrics, step: Optional[int] = None) -> None:
        super().log_metrics(metrics, None if step is None else int(step) + self.step_offset)

    @_rank_zero_only
    def set_summary(self, values: dict) -> None:
        """Write ``values`` into the run summary."""
        for k, v in values.items():
            self.experiment.summary[k] = v

    @_rank_zero_only
    def finish(self) -> None:
        """Close the wandb run (the next run in this process starts a new one)."""
        if self._experiment is not None:
            self._experiment.finish()
            self._experiment = None


def build_loggers(cfg, run_dir: Path) -> tuple[list, Optional[Any]]:
    """Instantiate ``cfg.logger`` once per run → (run loggers, the wandb logger or None). The CSV
    loggers are per stage (see :func:`stage_csv_logger`) and not returned; optional loggers whose
    package is missing are skipped with a warning."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

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


def _read_csv_rows(path: Path, until_step: int) -> list[dict]:
    """Rows of a Lightning ``metrics.csv`` logged at ``step ≤ until_step`` (values as written, blanks dropped)."""
    import csv

    rows = []
    with open(path, newline="") as f:
        for r in csv.DictReader(f):
            try:
                if int(float(r.get("step") or -1)) > until_step:
                    continue
            except ValueError:
                continue
            row = {k: v for k, v in r.items() if v not in ("", None)}  # as written: the log is rewritten verbatim
            row["step"] = int(float(row["step"]))
            rows.append(row)
    return rows


def stage_csv_logger(cfg, run_dir: Path, stage: str, keep_until_step: Optional[int] = None,
                     pending: Optional[dict] = None):
    """The CSV logger of one stage (``<run_dir>/logs/<stage>/metrics.csv``); always on. When resuming
    (``keep_until_step`` = the checkpoint's global step), the rows logged up to that step are kept
    (Lightning's CSV writer would delete the file); later rows are logged again by the resumed run."""
    from hydra.utils import instantiate
    from lightning.pytorch.loggers import CSVLogger

    lg = None
    for lcfg in (cfg.get("logger") or {}).values():
        if lcfg is not None and "CSVLogger" in str(lcfg.get("_target_")):
            lg = instantiate(lcfg, version=stage)
            break
    if lg is None:
        lg = CSVLogger(save_dir=str(run_dir), name="logs", version=stage)
    path = Path(lg.log_dir) / "metrics.csv"
    if keep_until_step is not None and path.is_file() and _world_and_rank()[1] == 0:
        if pending is not None:  # rows up to the checkpointed batch, then that batch's own row
            rows = [r for r in _read_csv_rows(path, int(pending["step"])) if r["step"] < int(pending["step"])]
            rows.append({k: v for k, v in pending.items()})
        else:
            rows = _read_csv_rows(path, int(keep_until_step))
        exp = lg.experiment  # creating the writer deletes the old file: its rows are queued again
        exp.metrics[:0] = rows
    return lg


# --------------------------------------------------------------------------------------------------
# resumable, shardable training order
# --------------------------------------------------------------------------------------------------


class EpochBatchSampler:
    """Batches of one epoch from a fresh-per-run index sampler, sharded over ranks, fast-forwardable.

    The order of epoch ``e`` is the ``e``-th pass over ``sampler`` (``sampler_factory()`` is built once;
    with a seeded generator the order depends only on the seed and the epoch). ``start_epoch`` passes
    are consumed at construction (indices only) and the first ``skip_batches`` batches of the first
    epoch are skipped, which reproduces an interrupted epoch exactly. Every rank draws the same
    order and takes its shard ``indices[rank::world]`` (padded by wrap-around to a multiple of the world
    size, as ``DistributedSampler``).
    """

    def __init__(self, sampler_factory: Callable[[], Any], batch_size: int, rank: int = 0, world: int = 1,
                 start_epoch: int = 0, skip_batches: int = 0):
        self.sampler = sampler_factory()
        self.batch_size, self.rank, self.world = int(batch_size), int(rank), max(1, int(world))
        self.epoch = 0
        for _ in range(int(start_epoch)):
            self._indices()
        self.skip = int(skip_batches)
        self.batches_done = 0

    def _indices(self) -> list[int]:
        idx = [int(i) for i in iter(self.sampler)]
        self.epoch += 1
        if self.world > 1 and idx:
            total = math.ceil(len(idx) / self.world) * self.world
            idx = (idx * math.ceil(total / len(idx)))[:total][self.rank::self.world]
        return idx

    def _num_indices(self) -> int:
        n = len(self.sampler)
        return math.ceil(n / self.world) if self.world > 1 else n

    def __len__(self) -> int:
        return math.ceil(self._num_indices() / self.batch_size)

    def __iter__(self):
        idx = self._indices()
        batches = [idx[i:i + self.batch_size] for i in range(0, len(idx), self.batch_size)]
        skip, self.skip = self.skip, 0
        if skip >= len(batches):  # the checkpoint was taken at the end of an epoch: start the next one
            idx = self._indices()
            batches = [idx[i:i + self.batch_size] for i in range(0, len(idx), self.batch_size)]
            skip = 0
        self.batches_done = skip
        for b in batches[skip:]:
            self.batches_done += 1
            yield b


def _resumable_loader_class():
    from torch.utils.data import DataLoader

    class ResumableDataLoader(DataLoader):
        """A DataLoader over an :class:`EpochBatchSampler`; ``state_dict`` makes Lightning treat it as
        resumable (the position itself is restored by the CLI from the checkpoint's loop state)."""

        def state_dict(self) -> dict:
            bs = self.batch_sampler
            return {"epoch": int(getattr(bs, "epoch", 0)), "batches_done": int(getattr(bs, "batches_done", 0))}

        def load_state_dict(self, state: dict) -> None:  # position comes from the fit loop (see run())
            pass

    return ResumableDataLoader


def make_train_loader(dm, rank: int = 0, world: int = 1, start_epoch: int = 0, skip_batches: int = 0):
    """The DataModule's training loader for its current stage, as a resumable / sharded loader with the
    same order as ``dm.train_dataloader()`` (same seeded shuffling or curriculum sampler)."""
    import torch
    from torch.utils.data import RandomSampler

    ref = type(dm).train_dataloader(dm)  # the DataModule's own loader (the CLI patches the instance)
    ds = ref.dataset

    def factory():
        if not dm.is_audio_stage:
            s = dm.curriculum_sampler()
            if s is not None:
                return s
        return RandomSampler(ds, generator=torch.Generator().manual_seed(int(dm.seed)))

    bsz = dm.audio_batch_size if dm.is_audio_stage else dm.batch_size
    bs = EpochBatchSampler(factory, bsz, rank, world, start_epoch, skip_batches)
    cls = _resumable_loader_class()
    return cls(ds, batch_sampler=bs, collate_fn=ref.collate_fn, num_workers=ref.num_workers,
               pin_memory=ref.pin_memory, persistent_workers=ref.num_workers > 0,
               generator=torch.Generator().manual_seed(int(dm.seed) + 7919 * (rank + 1)))


def checkpoint_position(ckpt: dict) -> tuple[int, int]:
    """(epoch, completed batches of that epoch) of a Lightning checkpoint's fit loop."""
    loops = ckpt.get("loops") or {}
    fit = loops.get("fit_loop") or {}
    ep = fit.get("epoch_progress", {}).get("current", {}).get("completed", ckpt.get("epoch", 0))
    cur = fit.get("epoch_loop.batch_progress", {}).get("current", {})
    # saved in on_train_batch_end: the batch is processed (its step done) but not yet "completed"
    return int(ep), int(cur.get("processed", cur.get("completed", 0)))


# --------------------------------------------------------------------------------------------------
# callbacks of the CLI
# --------------------------------------------------------------------------------------------------


def step_seed(seed: int, stage: str, step: int) -> int:
    """The seed of one training step: a hash of (seed, stage, step) → [0, 2³¹)."""
    h = hashlib.blake2b(f"{seed}/{stage}/{step}".encode(), digest_size=8).digest()
    return int.from_bytes(h, "little") % (2 ** 31 - 1)


def _density_controls(model) -> dict:
    return {k: getattr(model, k, None) for k in ("face_density", "mouth_density")
            if getattr(model, k, None) is not None}


def _cli_callbacks(cfg, stage: str, world: int):
    """Callbacks the CLI adds to every stage (reseeding, density state, DDP sync, simulated interruption)."""
    import lightning as L
    import numpy as np
    import torch

    seed = int(cfg.seed)

    class StepReseed(L.Callback):
        """Re-seed torch / numpy / random from (seed, stage, step) before every training step: the
        random draws of a step (ensemble members, densification) do not depend on what ran before, so
        an interrupted and resumed run draws exactly what an uninterrupted one does, and every DDP
        rank draws the same."""

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            import random

            s = step_seed(seed, stage, int(trainer.global_step))
            torch.manual_seed(s)
            np.random.seed(s)
            random.seed(s)

    class DensityState(L.Callback):
        """Keep the density-control statistics (accumulated since the last densification) in the
        checkpoint, and start every stage with fresh statistics."""

        def on_fit_start(self, trainer, pl_module):
            if trainer.ckpt_path is None:
                for dc in _density_controls(pl_module).values():
                    dc.reset_statistics()

        def on_save_checkpoint(self, trainer, pl_module, checkpoint):
            checkpoint["ua3dtalk_density"] = {k: dc.state_dict() for k, dc in _density_controls(pl_module).items()}

        def on_load_checkpoint(self, trainer, pl_module, checkpoint):
            for k, state in (checkpoint.get("ua3dtalk_density") or {}).items():
                dc = getattr(pl_module, k, None)
                if dc is not None:
                    # checkpoints before the public interface stored the private attribute names
                    dc.load_state_dict({f.lstrip("_"): t for f, t in state.items()}, pl_module.device)

    class DistributedSync(L.Callback):
        """DDP: average the gradients of every trained parameter (Gaussians replaced by densification
        are unknown to DDP's reducer), and sum the density statistics over ranks before densifying."""

        def setup(self, trainer, pl_module, stage=None):  # noqa: ARG002 (Lightning hook)
            import torch.distributed as dist

            def all_reduce(t, op: str) -> None:
                if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
                    dist.all_reduce(t, op=dist.ReduceOp.SUM if op == "sum" else dist.ReduceOp.MAX)

            for dc in _density_controls(pl_module).values():
                dc.stats_reducer = all_reduce

        def on_before_optimizer_step(self, trainer, pl_module, optimizer):
            import torch.distributed as dist

            if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() < 2:
                return
            w = dist.get_world_size()
            for group in optimizer.param_groups:
                for p in group["params"]:
                    if p.grad is not None:
                        dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)
                        p.grad.div_(w)

    class Interrupt(L.Callback):
        def __init__(self, at_step: int):
            self.at_step = at_step

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if pl_module.stage_step() >= self.at_step:
                raise SimulatedInterruption(f"simulated interruption after step {self.at_step} of stage {stage}")

    cbs = [StepReseed(), DensityState()]
    if world > 1:
        cbs.append(DistributedSync())
    ia = cfg.get("interrupt_at")
    if ia is not None and ia.get("stage") == stage:
        cbs.append(Interrupt(int(ia.get("step"))))
    return cbs


def _user_callbacks(cfg) -> list:
    from hydra.utils import instantiate

    return [instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c is not None]


def state_fingerprint(model) -> str:
    """SHA-256 over the model's state dict (names, shapes, float32 bytes), for comparing ranks/runs."""
    import torch

    h = hashlib.sha256()
    for k, v in sorted(model.state_dict().items()):
        if isinstance(v, torch.Tensor):
            h.update(k.encode())
            h.update(str(tuple(v.shape)).encode())
            t = v.detach().cpu().contiguous()
            h.update((t.float() if t.is_floating_point() else t).numpy().tobytes())
    return h.hexdigest()


def _world_and_rank(trainer=None) -> tuple[int, int]:
    if trainer is not None:
        return int(trainer.world_size), int(trainer.global_rank)
    env = os.environ
    rank = env.get("RANK", env.get("SLURM_PROCID", env.get("LOCAL_RANK", 0)))
    return int(env.get("WORLD_SIZE", env.get("SLURM_NTASKS", 1))), int(rank)


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


# --------------------------------------------------------------------------------------------------
# the run
# --------------------------------------------------------------------------------------------------


def _merge_json(path: Path, values: dict) -> dict:
    """Merge ``values`` into the JSON object at ``path`` (see :func:`ua3dtalk.utils.io.merge_json`)."""
    from ..utils.io import merge_json

    return merge_json(path, values)


def _cpu_seconds() -> float:
    """CPU time (user + system, all threads) of this process so far."""
    import resource

    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def active_stages(cfg, model) -> list[str]:
    """``cfg.stages`` minus the stages whose module is absent (prior / emotion ablations)."""
    out = []
    for s in cfg.stages:
        if s not in STAGES:
            raise ValueError(f"stages: unknown stage {s!r}; choose from {', '.join(STAGES)}")
        if (s == "prior" and model.prior is None) or (s == "emotion" and model.emotion is None):
            print(f"ua3dtalk-train: stage {s} skipped (model.{s} is not configured)", flush=True)
            continue
        out.append(s)
    return out


def best_checkpoint_callback(cfg, stage: str, stages: list[str], ckpt_dir: Path):
    """Lightning's ``ModelCheckpoint`` keeping ``<ckpt_dir>/best.ckpt``, the weights with the best
    ``checkpoint_monitor`` (default ``val/psnr``) seen at validation during the last stage — the stage whose
    weights are the finished model — saved through the project's atomic checkpoint IO; ``None`` for other
    stages and when the last stage does not render (prior / emotion only)."""
    if stage != stages[-1] or stage in ("prior", "emotion"):
        return None
    from lightning.pytorch.callbacks import ModelCheckpoint

    monitor = str(cfg.get("checkpoint_monitor") or "val/psnr")
    return ModelCheckpoint(dirpath=str(ckpt_dir), filename="best", monitor=monitor,
                           mode="min" if any(t in monitor.lower() for t in LOWER_IS_BETTER) else "max",
                           save_top_k=1, save_last=False, auto_insert_metric_name=False, enable_version_counter=False,
                           save_on_train_epoch_end=False)


def run(cfg) -> dict:
    """Train every configured stage; returns the metrics written to ``metrics.json``."""
    import lightning as L
    import torch
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from ..callbacks.checkpoint import AtomicCheckpointIO, PeriodicCheckpoint, load_model_checkpoint, read_checkpoint
    from ..callbacks.media import ValidationImages
    from ..models.module import NonFiniteLossError

    bad = [s for s in cfg.stages if s not in STAGES]
    if bad:
        raise ValueError(f"stages: unknown stage(s) {bad}; choose from {', '.join(STAGES)}")
    check_train_config(cfg)  # typed, range-checked settings before any work (seed, steps, intervals, rates, …)
    run_dir = Path(cfg.paths.run_dir)
    planned_world = _planned_world(cfg)
    is_main = _world_and_rank()[1] == 0  # before the trainer exists: from the launcher's environment
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
    stages = active_stages(cfg, model)
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
    best: dict[str, float] = {}
    step_offset = 0
    prev_ckpt: Optional[Path] = None
    every = int(cfg.get("checkpoint_every") or cfg.val_every)
    trainer = None
    try:
        for stage in stages:
            steps = int(cfg.stage_steps[stage])
            ckpt_dir = run_dir / "checkpoints" / stage
            done = ckpt_dir / "done.json"
            last = ckpt_dir / "last.ckpt"
            if cfg.resume and done.is_file():  # finished before the interruption: take its weights
                try:
                    done_rec = json.loads(done.read_text())
                except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
                    raise ValueError(f"{done}: the record of the finished stage {stage} is not readable JSON ({e}); "
                                     "delete it to train the stage again") from None
                if not isinstance(done_rec, dict):
                    raise ValueError(f"{done}: the record of the finished stage {stage} is not a JSON object; delete "
                                     "it to train the stage again")
                load_model_checkpoint(model, last)
                metrics["stages"][stage] = done_rec
                best.update(metrics["stages"][stage].get("best", {}))  # later stages define the run's keys
                step_offset += int(metrics["stages"][stage].get("global_step", 0))
                prev_ckpt = last
                print(f"ua3dtalk-train: stage {stage} already done ({done}); resuming after it", flush=True)
                continue
            if prev_ckpt is not None and cfg.resume:
                load_model_checkpoint(model, prev_ckpt)
            model.stage = stage
            model.max_steps = steps
            dm.stage = stage
            n_opt = len(model._optimizers_for_stage())
            resume_ckpt = last if (cfg.resume and last.is_file()) else None
            start_epoch = skip = 0
            resume_step = pending_row = None
            if resume_ckpt is not None:
                ck = read_checkpoint(resume_ckpt)
                start_epoch, skip = checkpoint_position(ck)
                resume_step = int(ck.get("global_step", 0))
                pending_row = ck.get("ua3dtalk_pending_log")
                del ck
                print(f"ua3dtalk-train: stage {stage}: resuming from {resume_ckpt} (epoch {start_epoch}, "
                      f"batch {skip})", flush=True)
            csv = stage_csv_logger(cfg, run_dir, stage, keep_until_step=resume_step, pending=pending_row)
            loggers = [csv] + run_loggers
            for lg in loggers:
                if isinstance(lg, WandbRunLogger):
                    lg.step_offset = step_offset
            if is_main:
                csv.log_hyperparams({"stage": stage, "experiment": str(cfg.name), "seed": int(cfg.seed),
                                     **{f"component/{k}": v for k, v in comp.items()}})

            t_wall, t_cpu = time.perf_counter(), _cpu_seconds()
            n_train = len(make_train_loader(dm, 0, planned_world))
            val_history: list[dict] = []

            class ValHistory(L.Callback):
                """The stage's validation results (for its ``best``), kept in the checkpoint for resume."""

                def on_validation_epoch_end(self, trainer, pl_module):
                    if not trainer.sanity_checking:
                        val_history.append({k: float(v) for k, v in trainer.callback_metrics.items()
                                            if k.startswith("val/")})

                def state_dict(self):
                    return {"history": [dict(r) for r in val_history]}

                def load_state_dict(self, state_dict):
                    val_history[:] = [dict(r) for r in state_dict.get("history", [])]

            best_ckpt = best_checkpoint_callback(cfg, stage, stages, ckpt_dir)
            images = [ValidationImages()] if run_loggers else []  # wandb / TensorBoard: renders every validation
            callbacks = ([PeriodicCheckpoint(last, every_n_steps=every)] + ([best_ckpt] if best_ckpt else [])
                         + _cli_callbacks(cfg, stage, planned_world) + _user_callbacks(cfg) + images + [ValHistory()])
            trainer = instantiate(
                cfg.trainer, max_steps=steps * n_opt, logger=loggers, default_root_dir=str(run_dir),
                enable_checkpointing=best_ckpt is not None, plugins=[AtomicCheckpointIO()],
                use_distributed_sampler=False,
                val_check_interval=max(1, min(int(cfg.val_every), n_train)), check_val_every_n_epoch=1,
                callbacks=callbacks,
            )
            world, rank = int(trainer.world_size), int(trainer.global_rank)
            is_main = rank == 0
            dm.train_dataloader = (lambda _dm=dm, _r=rank, _w=world, _e=start_epoch, _s=skip:  # noqa: E731
                                   make_train_loader(_dm, _r, _w, _e, _s))
            try:
                trainer.fit(model, datamodule=dm, ckpt_path=str(resume_ckpt) if resume_ckpt else None)
            except NonFiniteLossError as e:
                print(f"ua3dtalk-train: stage {stage}: {e}", file=sys.stderr)
                raise SystemExit(3) from None
            finally:
                del dm.train_dataloader  # back to the DataModule's method
            ctl = model.emotion_control
            if stage == "emotion" and model.emotion is not None and ctl is not None and not bool(ctl.recomputed):
                # resumed from a checkpoint taken after the stage's last step: fit had nothing left to run and
                # on_train_end (which recomputes the prototypes with the final student) did not fire
                model.recompute_emotion_prototypes(dm)
            res = trainer.validate(model, datamodule=dm, verbose=False)
            stage_metrics = {k: float(v) for k, v in (res[0] if res else {}).items()}
            stage_best: dict[str, float] = {}
            for rec in val_history + [stage_metrics]:
                for k, v in rec.items():
                    if k.startswith("val/") and is_better(k, v, stage_best.get(k)):
                        stage_best[k] = v
            best.update(stage_best)  # a key's best is that of the last stage reporting it (masks differ per stage)
            stage_metrics.update({"steps": steps, "global_step": int(trainer.global_step), "best": stage_best,
                                  "seconds": round(time.perf_counter() - t_wall, 2),
                                  "cpu_seconds": round(_cpu_seconds() - t_cpu, 2)})
            trainer.save_checkpoint(last)
            if best_ckpt is not None and best_ckpt.best_model_path:
                stage_metrics["best_checkpoint"] = {"path": best_ckpt.best_model_path,
                                                    "monitor": best_ckpt.monitor,
                                                    "score": float(best_ckpt.best_model_score)}
            if is_main:
                atomic_write_json(done, stage_metrics)
            metrics["stages"][stage] = stage_metrics
            step_offset += int(trainer.global_step)
            prev_ckpt = last
            torch.set_grad_enabled(True)
        final = {}
        for stage in stages:  # later stages override earlier ones for the same key
            final.update({k: v for k, v in metrics["stages"][stage].items()
                          if k.startswith(("val/", "health/", "fusion_weight/"))})
        metrics.update(final)
        metrics["best"] = best
        metrics["checkpoint"] = str(prev_ckpt) if prev_ckpt else None
        metrics["best_checkpoint"] = metrics["stages"][stages[-1]].get("best_checkpoint")  # infer/eval's default
        world, rank = (int(trainer.world_size), int(trainer.global_rank)) if trainer is not None else (1, 0)
        if world > 1:
            atomic_write_json(run_dir / "fingerprints" / f"rank{rank}.json",
                              {"rank": rank, "world_size": world, "sha256": state_fingerprint(model),
                               "num_face": len(model.face), "num_mouth": len(model.mouth)})
        metrics["world_size"] = world
        if rank == 0:
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


def main(argv=None) -> int:
    import hydra

    argv = list(sys.argv[1:] if argv is None else argv)
    sys.argv = [sys.argv[0]] + argv

    @hydra.main(config_path=str(config_dir()), config_name="train", version_base="1.3")
    def _main(cfg):
        from hydra.errors import InstantiationException

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
