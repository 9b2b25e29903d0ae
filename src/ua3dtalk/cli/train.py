"""``ua3dtalk-train``: train UA-3DTalk stage by stage from a Hydra config (``experiments/`` is the root).

    ua3dtalk-train experiment=smoke
    ua3dtalk-train experiment=smoke resume=true            # continue an interrupted run
    ua3dtalk-train experiment=smoke model.deformation.fusion=full_cov name=smoke_fullcov

The run directory (``paths.run_dir``) receives the resolved ``config.yaml``, ``env.json`` (git commit,
package versions), ``checkpoints/<stage>/last.ckpt`` (written atomically), ``checkpoints/<stage>/done.json``
and ``metrics.json`` with the final ``val/*`` metrics. Stages run in the order of ``stages``; each starts
from the weights of the previous one.
"""
from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Optional

from ..utils.io import atomic_write_json, atomic_write_text


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

    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        return h_compose(config_name=config_name, overrides=list(overrides), return_hydra_config=False)


def _env_info() -> dict:
    import importlib.metadata as md

    def ver(p):
        try:
            return md.version(p)
        except md.PackageNotFoundError:
            return None

    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                                cwd=Path(__file__).resolve().parent, timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        commit = None
    return {"git_commit": commit, "python": platform.python_version(), "platform": platform.platform(),
            "argv": sys.argv, "packages": {p: ver(p) for p in ("ua3dtalk", "torch", "lightning", "hydra-core",
                                                               "transformers", "numpy")}}


def ensure_dataset(cfg) -> None:
    """Generate the synthetic dataset named by ``data.synth`` when its root does not exist yet."""
    from ..data.synth.generate import cache_features, generate_emotional, generate_subject

    synth = cfg.data.get("synth")
    if synth is None or Path(cfg.data.root).exists():
        return
    fn = generate_emotional if synth.get("emotional") else generate_subject
    subject = fn(synth.out, synth.preset, int(synth.get("seed", 0)), synth.get("resolution"))
    cache_features(subject, [cfg.data.get("feature", "mel")])


def build_datamodule(cfg):
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    ensure_dataset(cfg)
    dcfg = OmegaConf.to_container(cfg.data, resolve=True)
    dcfg.pop("synth", None)
    dm = instantiate(dcfg, _recursive_=False)
    dm.prepare_data()
    dm.setup("fit")
    return dm


def build_model(cfg, stage: Optional[str] = None):
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    mcfg = OmegaConf.to_container(cfg.model, resolve=True)
    if stage is not None:
        mcfg["stage"] = stage
    model = instantiate(mcfg)
    model.model_config = mcfg
    return model


def fill_data_info(cfg, dm) -> None:
    from omegaconf import open_dict

    with open_dict(cfg):
        cfg.data_info.audio_channels = int(dm.audio_channels)
        cfg.data_info.expr_dim = int(dm.expr_dim)
        cfg.data_info.height, cfg.data_info.width = (int(v) for v in dm.image_size)


def run(cfg) -> dict:
    """Train every configured stage; returns the metrics written to ``metrics.json``."""
    import lightning as L
    import torch
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from ..callbacks.checkpoint import AtomicCheckpointIO, PeriodicCheckpoint, load_model_checkpoint
    from ..models.module import NonFiniteLossError

    L.seed_everything(int(cfg.seed), workers=True)
    run_dir = Path(cfg.paths.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    dm = build_datamodule(cfg)
    fill_data_info(cfg, dm)
    atomic_write_text(run_dir / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
    atomic_write_json(run_dir / "env.json", _env_info())
    stages = list(cfg.stages)
    model = build_model(cfg, stages[0])
    model.data_config = {k: OmegaConf.to_container(cfg.data, resolve=True).get(k) for k in
                         ("root", "feature", "extractor_model", "neighbours", "background")}
    metrics: dict = {"experiment": cfg.name, "seed": int(cfg.seed), "stages": {}}
    prev_ckpt: Optional[Path] = None
    for stage in stages:
        steps = int(cfg.stage_steps[stage])
        ckpt_dir = run_dir / "checkpoints" / stage
        done = ckpt_dir / "done.json"
        last = ckpt_dir / "last.ckpt"
        if cfg.resume and done.is_file():  # finished before the interruption: take its weights
            load_model_checkpoint(model, last)
            metrics["stages"][stage] = json.loads(done.read_text())
            prev_ckpt = last
            continue
        if prev_ckpt is not None and cfg.resume:
            load_model_checkpoint(model, prev_ckpt)
        model.stage = stage
        model.max_steps = steps
        dm.stage = stage
        n_opt = len(model._optimizers_for_stage())
        # one logger version per stage, so that stages never overwrite each other's logs
        loggers = [instantiate(v, **({"version": stage} if "CSVLogger" in str(v.get("_target_")) else {}))
                   for v in (cfg.get("logger") or {}).values()]
        for lg in loggers:
            if hasattr(lg, "log_hyperparams"):
                lg.log_hyperparams({"stage": stage, "experiment": cfg.name})
        n_train = len(dm.train_dataloader())
        trainer = instantiate(
            cfg.trainer, max_steps=steps * n_opt, logger=loggers or False, default_root_dir=str(run_dir),
            enable_checkpointing=False, plugins=[AtomicCheckpointIO()],
            val_check_interval=max(1, min(int(cfg.val_every), n_train)), check_val_every_n_epoch=1,
            callbacks=[PeriodicCheckpoint(last, every_n_steps=int(cfg.val_every))],
        )
        ckpt_path = str(last) if (cfg.resume and last.is_file()) else None
        try:
            trainer.fit(model, datamodule=dm, ckpt_path=ckpt_path)
        except NonFiniteLossError as e:
            print(f"ua3dtalk-train: stage {stage}: {e}", file=sys.stderr)
            raise SystemExit(3) from None
        res = trainer.validate(model, datamodule=dm, verbose=False)
        stage_metrics = {k: float(v) for k, v in (res[0] if res else {}).items()}
        stage_metrics["steps"] = steps
        trainer.save_checkpoint(last)
        atomic_write_json(done, stage_metrics)
        metrics["stages"][stage] = stage_metrics
        prev_ckpt = last
        torch.set_grad_enabled(True)
    final = {}
    for stage in stages:  # later stages override earlier ones for the same key
        final.update({k: v for k, v in metrics["stages"][stage].items() if k.startswith("val/")})
    metrics.update(final)
    metrics["checkpoint"] = str(prev_ckpt) if prev_ckpt else None
    atomic_write_json(run_dir / "metrics.json", metrics)
    print(f"ua3dtalk-train: wrote {run_dir / 'metrics.json'}: "
          + ", ".join(f"{k}={v:.4g}" for k, v in final.items()))
    return metrics


def main(argv=None) -> int:
    import hydra

    argv = list(sys.argv[1:] if argv is None else argv)
    sys.argv = [sys.argv[0]] + argv

    @hydra.main(config_path=str(config_dir()), config_name="train", version_base="1.3")
    def _main(cfg):
        run(cfg)

    _main()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
