"""Configuration → data and model objects for ``ua3dtalk-train`` (and ``ua3dtalk-eval``, the tests, the
benchmarks): the synthetic dataset and the tiny wav2vec2 model made on first use, the DataModule, the model
config (ablation views removed) and the :class:`~ua3dtalk.models.module.UA3DTalk`, ``data_info`` from the
DataModule, and the components / wandb tags of a model config. :mod:`ua3dtalk.cli.train` re-exports them."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

DATA_CLI_KEYS = ("synth", "subject", "dir")
"""Keys of ``data`` configs read by the CLI only (not DataModule arguments)."""
OPTIONAL_MODULES = ("prior", "emotion", "emotion_field", "emotion_control", "face_density", "mouth_density")
"""Model entries that may be absent (null); a leftover dict of options without ``_target_`` counts as absent."""
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
    from ..data.extractors import make_extractor
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
            "landmark": "on" if float(mcfg.get("landmark_weight") or 0) > 0 else "off",
            "swap": "on" if float(mcfg.get("emotion_swap_weight") or 0) > 0 else "off",
            "renderer": str(mcfg.get("backend", "auto"))}


def component_tags(cfg) -> list[str]:
    """wandb tags: ``<component>:<variant>`` for every component, the dataset, then ``cfg.tags``."""
    comp = components(model_config(cfg))
    tags = [f"{k}:{v}" for k, v in comp.items() if k != "renderer"]
    data_name = Path(str(cfg.data.get("root", ""))).parent.name or "data"
    tags.append(f"data:{data_name}")
    tags += [str(t) for t in (cfg.get("tags") or [])]
    return [t[:64] for t in dict.fromkeys(tags)]
