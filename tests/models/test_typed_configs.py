"""Typed component configurations (utils/typed_config.py, models/config.py, models/deformation/config.py):
choices checked once, unknown keys refused, the config passed down whole, yaml keys = dataclass fields."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml

from ua3dtalk.models.config import UA3DTalkConfig
from ua3dtalk.models.deformation import (DeformationConfig, DeformationNetwork, MouthDeformation,
                                         MouthDeformationConfig)
from ua3dtalk.utils.typed_config import choices, make_config

ROOT = Path(__file__).resolve().parents[2]


def test_literal_choices_are_checked_once_with_the_choices_named():
    assert choices(DeformationConfig, "fusion") == ("diagonal", "full_cov", "uniform", "concat")
    assert choices(DeformationConfig, "views") == ("audio", "content", "style", "emotion")
    assert choices(DeformationConfig, "members") is None
    with pytest.raises(ValueError, match="fusion must be one of diagonal, full_cov, uniform, concat, got 'mean'"):
        DeformationConfig(fusion="mean")
    with pytest.raises(ValueError, match="heads must be one of .*got 'nose'"):
        DeformationConfig(heads=("xyz", "nose"))
    with pytest.raises(ValueError, match="emotion_condition must be 'audio' or 'label'"):
        UA3DTalkConfig(emotion_condition="prosody")
    with pytest.raises(ValueError, match="unknown renderer backend 'vulkan'"):
        UA3DTalkConfig(backend="vulkan")
    with pytest.raises(ValueError, match="lr_net must be a finite number > 0"):
        UA3DTalkConfig(lr_net=float("nan"))


def test_sequences_become_tuples_and_configs_are_frozen():
    cfg = DeformationConfig(views=["audio", "style"], field_scales=[1, 2])  # Hydra hands over lists
    assert cfg.views == ("audio", "style") and cfg.field_scales == (1, 2)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.members = 3  # type: ignore[misc]
    with pytest.raises(ValueError, match="views must be a sequence"):
        DeformationConfig(views="audio")


def test_unknown_options_are_refused_naming_the_valid_keys():
    with pytest.raises(TypeError, match=r"DeformationNetwork: unknown option\(s\) memberz; valid: .*members"):
        DeformationNetwork(29, memberz=3)
    with pytest.raises(TypeError, match="config must be a DeformationConfig"):
        make_config(DeformationConfig, UA3DTalkConfig(), {}, "DeformationNetwork")


def test_the_config_is_passed_down_whole():
    cfg = DeformationConfig(members=3, hidden=16, code_dim=8, fusion="uniform", field_resolution=8,
                            field_scales=(1, 2), field_channels=4, heads=("xyz",), decoder_activation="silu")
    net = DeformationNetwork(29, config=cfg)
    assert net.config is cfg
    assert net.fusion.fusion == "uniform" and net.fusion.out_dim == 8
    assert all(b.members == 3 for b in net.fusion.blocks.values())
    assert net.decoder.activation == "silu" and net.decoder.head_names == ("xyz",)
    assert net.h_dim == 8
    # options on top of a config: that field changes, the others stay
    net2 = DeformationNetwork(29, config=cfg, members=2)
    assert net2.config.members == 2 and net2.config.fusion == "uniform" and net2.config.hidden == 16


def test_mouth_config_restricts_views_and_heads():
    m = MouthDeformation(29, field_resolution=8, field_scales=(1,), members=2)
    assert isinstance(m.config, MouthDeformationConfig)
    assert m.views == ("audio", "content") and m.config.eye_dim == 0 and m.decoder.head_names == ("xyz",)
    with pytest.raises(ValueError, match="subset of \\('audio', 'content'\\)"):
        MouthDeformation(29, views=("audio", "emotion"))
    with pytest.raises(ValueError, match="one xyz head"):
        MouthDeformationConfig(heads=("xyz", "rot"))


def _scalar_keys(node: dict) -> set[str]:
    return {k for k, v in node.items() if not isinstance(v, dict) and k not in ("_target_", "defaults")}


def test_experiment_yaml_keys_are_config_fields():
    """Every scalar key the model yaml writes is a field of the typed configs (one name everywhere)."""
    model = yaml.safe_load((ROOT / "experiments/model/ua3dtalk.yaml").read_text())
    top = _scalar_keys(model) - {"stage"}
    assert top <= {f.name for f in dataclasses.fields(UA3DTalkConfig)}, top
    for key, cls in (("deformation", DeformationConfig), ("mouth_deformation", MouthDeformationConfig)):
        keys = _scalar_keys(model[key]) - {"audio_in_channels", "bounds_min", "bounds_max"}
        assert keys <= {f.name for f in dataclasses.fields(cls)}, (key, keys)
    for sub in sorted((ROOT / "experiments/model/deformation").rglob("*.yaml")):
        node = yaml.safe_load(sub.read_text()) or {}
        node = node.get("deformation", node)
        assert _scalar_keys(node) <= {f.name for f in dataclasses.fields(DeformationConfig)}, sub


def test_data_and_prior_configs():
    from ua3dtalk.data.config import DataConfig, EmotionalDataConfig
    from ua3dtalk.models.prior import PriorConfig

    with pytest.raises(ValueError, match="background must be one of bc, bc\\+torso, white, black, got 'grey'"):
        DataConfig(background="grey")
    with pytest.raises(ValueError, match="sampler must be None, 'mouth' or 'blink'"):
        DataConfig(sampler="lips")
    with pytest.raises(ValueError, match="predict_cameras needs predict_audio"):
        DataConfig(predict_cameras="track.json")
    with pytest.raises(ValueError, match="must be < 1"):
        EmotionalDataConfig(val_fraction=0.5, test_fraction=0.3, evaluator_fraction=0.3)
    assert EmotionalDataConfig(holdout_intensities=[3]).holdout_intensities == (3,)
    with pytest.raises(ValueError, match="temperature must be > 0"):
        PriorConfig(temperature=0)
    assert PriorConfig(recon_dims=[2, 0]).recon_dims == (2, 0) and PriorConfig(recon_dims="auto").recon_dims == "auto"
    assert PriorConfig(emotional_dims=[True]).emotional_dims == (True,)  # not coerced: the prior names bad values


def test_data_and_prior_yaml_keys_are_config_fields():
    from ua3dtalk.data.config import EmotionalDataConfig
    from ua3dtalk.models.prior import PriorConfig

    cli_only = {"subject", "dir", "root", "synth"}  # read by the CLI (DATA_CLI_KEYS) or the positional root
    fields = {f.name for f in dataclasses.fields(EmotionalDataConfig)}
    for path in sorted((ROOT / "experiments/data").glob("*.yaml")):
        node = yaml.safe_load(path.read_text()) or {}
        assert _scalar_keys(node) - cli_only <= fields, (path.name, _scalar_keys(node) - cli_only - fields)
    prior = yaml.safe_load((ROOT / "experiments/model/prior/learned.yaml").read_text())["prior"]
    keys = _scalar_keys(prior) - {"in_channels", "expr_dim", "context_channels"}
    assert keys <= {f.name for f in dataclasses.fields(PriorConfig)}, keys
