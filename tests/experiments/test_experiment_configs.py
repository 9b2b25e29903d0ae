"""Every experiment file composes and instantiates; the ablation switches really change the model;
every config group option composes; sweep/grid files name existing experiments (issue 6 item 1)."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from hydra.utils import instantiate

from ua3dtalk.cli.identity import variant_name
from ua3dtalk.cli.train import (build_model, compose, component_tags, components, config_dir, datamodule_kwargs,
                                list_experiments, model_config)

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

ABLATIONS = {  # experiment → (component, variant) it changes w.r.t. the full model
    "abl_prior_none": ("prior", "none"),
    "abl_emotion_none": ("emotion", "none"),
    "abl_fusion_uniform": ("fusion", "uniform"),
    "abl_fusion_concat": ("fusion", "concat"),
    "abl_uncertainty_aleatoric": ("uncertainty", "aleatoric"),
    "abl_uncertainty_epistemic": ("uncertainty", "epistemic"),
    "abl_heads_single": ("heads", "single"),
    "abl_fusion_fullcov": ("fusion", "full_cov"),
    "abl_landmark_none": ("landmark", "off"),  # ★ rows: the project's terms (DESIGN §4.6)
    "abl_swap_none": ("swap", "off"),
}
ALSO_CHANGED = {"abl_landmark_none": {"swap": "off"}, "abl_emotion_none": {"swap": "off"}}  # the swap term needs both
EXPERIMENTS = {"paper_hdtf", "paper_mead", "demo_synth", "demo_quick", "smoke", "baseline_talkinggaussian", "own_video",
               *ABLATIONS}
FULL = {"prior": "learned", "emotion": "distilled", "fusion": "diagonal", "uncertainty": "both", "heads": "multi",
        "landmark": "on", "swap": "on"}


def _instantiate_all(cfg, tmp_path):
    """Model, DataModule (constructor only: the datasets are not on disk), trainer (CPU) and loggers."""
    model = build_model(cfg)
    dm = instantiate(datamodule_kwargs(cfg), _recursive_=False)
    tcfg = dict(instantiate(cfg.trainer, _partial_=True).keywords)
    tcfg.update(accelerator="cpu", logger=False, enable_checkpointing=False, default_root_dir=str(tmp_path))
    if "strategy" in tcfg:  # DDP strategies are instantiated objects; a 1-process CPU trainer keeps them valid
        tcfg["devices"] = 1
    trainer = instantiate({"_target_": "lightning.Trainer"}, **tcfg)
    return model, dm, trainer


def test_experiment_files_are_the_expected_set():
    found = list_experiments()
    assert len(found) == 17, f"expected 17 experiment files, found {len(found)}: {found}"
    assert set(found) == EXPERIMENTS


@pytest.mark.parametrize("name", sorted(EXPERIMENTS))
def test_every_experiment_instantiates(name, tmp_path, monkeypatch):
    monkeypatch.setenv("UA3DTALK_ROOT", str(tmp_path))
    overrides = [f"experiment={name}"]
    if name == "paper_hdtf":  # needs a pretrained emotion teacher: give it a (tiny, random) one
        from ua3dtalk.models.emotion import save_teacher
        from ua3dtalk.models.emotion.encoder import EmotionEncoder

        teacher = save_teacher(EmotionEncoder(w2v_channels=80), tmp_path / "teacher")
        overrides.append(f"model.emotion.teacher_path={teacher.parent}")
    cfg = compose(overrides)
    assert cfg.name == name
    model, dm, trainer = _instantiate_all(cfg, tmp_path)
    comp = components(model.model_config)
    if name in ABLATIONS:
        key, variant = ABLATIONS[name]
        assert comp[key] == variant
        changed = {key: variant, **ALSO_CHANGED.get(name, {})}
        assert {k: comp[k] for k in changed} == changed
        assert {k: v for k, v in comp.items() if k in FULL and k not in changed} == \
            {k: v for k, v in FULL.items() if k not in changed}
    elif name == "baseline_talkinggaussian":
        assert (comp["prior"], comp["emotion"], comp["fusion"], comp["views"]) == ("none", "none", "concat", "audio")
    else:
        assert {k: comp[k] for k in FULL} == FULL
    # run identity: runs/<scale>/<experiment>[+<variant>]/<subject>/seed<k>; only the teacher override is a variant
    assert cfg.variant == ("" if name != "paper_hdtf" else variant_name(overrides[1:])) and cfg.scale_label in (
        "tiny", "demo", "cpu", "paper")
    runs = Path(str(tmp_path)) / "outputs" / "runs"
    assert Path(cfg.paths.run_dir) == runs / cfg.scale_label / f"{name}{cfg.variant}" / cfg.data.subject / "seed0"
    assert type(dm).__name__ in ("TalkingHeadDataModule", "EmotionalTalkingHeadDataModule")
    assert trainer.max_steps == -1


def test_paper_hdtf_without_teacher_names_the_file(tmp_path, monkeypatch):
    monkeypatch.setenv("UA3DTALK_ROOT", str(tmp_path))
    with pytest.raises(Exception, match="teachers/emotion_mead"):
        build_model(compose(["experiment=paper_hdtf"]))


def test_ablation_switches_change_the_built_model():
    """The switches reach the modules (not only the config): the modules that are built differ."""
    def built(name):
        return build_model(compose([f"experiment={name}", "scale=tiny"]))

    full = built("paper_mead")
    assert full.prior is not None and full.emotion is not None and full.emotion_field is not None
    assert list(full.deformation.views) == ["audio", "content", "style", "emotion"]
    assert list(full.mouth_deformation.views) == ["audio", "content"]
    m = built("abl_prior_none")
    assert m.prior is None and list(m.deformation.views) == ["audio", "emotion"]
    assert list(m.mouth_deformation.views) == ["audio"]
    m = built("abl_emotion_none")
    assert m.emotion is None and m.emotion_field is None and "emotion" not in m.deformation.views
    assert built("abl_heads_single").deformation.decoder.single is True
    assert full.deformation.decoder.single is False
    for name, mode in (("abl_fusion_uniform", "uniform"), ("abl_fusion_concat", "concat"),
                       ("abl_fusion_fullcov", "full_cov")):
        assert built(name).deformation.fusion.fusion == mode
    for name, mode in (("abl_uncertainty_aleatoric", "aleatoric"), ("abl_uncertainty_epistemic", "epistemic")):
        assert built(name).deformation.fusion.uncertainty == mode


def test_tags_name_the_components():
    tags = component_tags(compose(["experiment=abl_fusion_uniform"]))
    for t in ("prior:learned", "emotion:distilled", "fusion:uniform", "uncertainty:both", "heads:multi",
              "data:mead", "ablation"):
        assert t in tags
    assert all(len(t) <= 64 for t in tags)


def _options(group: str) -> list[str]:
    return sorted(p.stem for p in (config_dir() / group).glob("*.yaml"))


GROUPS = ["data", "trainer", "logger", "renderer", "callbacks", "paths", "debug", "scale", "launcher", "grid",
          "model/prior", "model/emotion", "model/deformation/fusion", "model/deformation/uncertainty",
          "model/deformation/heads"]


def test_every_group_option_composes():
    """Every option of every group composes (options of different groups are combined in lockstep to keep
    the number of compositions small) and the model config resolves."""
    from itertools import zip_longest

    opts = {g: _options(g) for g in GROUPS}
    assert all(opts.values()), {g: o for g, o in opts.items() if not o}
    combos = list(zip_longest(*opts.values()))
    for combo in combos:
        ov = [f"{g}={o}" for g, o in zip(opts, combo) if o is not None]
        cfg = compose(ov)
        for g, o in zip(opts, combo):
            if o is not None and g in ("data", "trainer"):
                assert g in cfg
        mc = model_config(cfg)  # resolves every interpolation of the model
        assert mc["_target_"].endswith("UA3DTalk") and cfg.data.root and cfg.paths.run_dir
    assert len(combos) == max(len(o) for o in opts.values())


def test_required_group_options_exist():
    assert {"synth_tiny", "synth_small", "synth_emotional", "regular", "mead"} <= set(_options("data"))
    assert {"cpu", "gpu", "ddp", "ddp_cpu"} <= set(_options("trainer"))
    assert {"wandb", "csv", "many"} <= set(_options("logger"))
    assert {"local", "slurm"} <= set(_options("launcher"))


def test_launchers_select_hydra_plugins():
    from hydra import compose as h_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        slurm = h_compose("train", ["launcher=slurm", "trainer=ddp", "trainer.devices=4"], return_hydra_config=True)
        local = h_compose("train", ["launcher=local"], return_hydra_config=True)
        grid = h_compose("train", ["grid=ablation"], return_hydra_config=True)
    assert slurm.hydra.launcher._target_.endswith("SlurmLauncher")
    assert slurm.hydra.launcher.gpus_per_node == 4 and slurm.hydra.launcher.tasks_per_node == 4
    assert local.hydra.launcher._target_.endswith("BasicLauncher")
    swept = grid.hydra.sweeper.params
    exps = swept.experiment.split(",")
    # the paper's table: every ablation row and the baseline; the ★ rows (the project's terms) are run beside it
    assert set(exps) == EXPERIMENTS - {"paper_hdtf", "demo_synth", "demo_quick", "smoke", "own_video",
                                       "abl_landmark_none", "abl_swap_none"}
    assert swept.seed == "0,1,2"


@pytest.mark.parametrize("path", sorted((config_dir() / "sweep").glob("*.yaml")), ids=lambda p: p.stem)
def test_wandb_sweep_files_run_existing_experiments(path):
    spec = yaml.safe_load(path.read_text())
    assert spec["program"] == "ua3dtalk-train" and "${args_no_hyphens}" in spec["command"]
    params = spec["parameters"]
    exps = params["experiment"]["values"]
    assert set(exps) <= EXPERIMENTS
    # what an agent runs: key=value overrides from the first value of every parameter
    first = {k: (v["values"][0] if "values" in v else v.get("value", v.get("min"))) for k, v in params.items()}
    cfg = compose([f"{k}={v}" for k, v in first.items()])
    assert cfg.name == exps[0]


def test_own_video_takes_the_dataset_by_its_directory(tmp_path, monkeypatch):
    """`experiment=own_video data.root=DIR`: the subject level is DIR's name, data.root is not a variant (the
    run is …/cpu/own_video/<name>/seed0), offline log-mel features, a CPU trainer; `data.subject=` under
    `data.dir` works too."""
    monkeypatch.setenv("UA3DTALK_ROOT", str(tmp_path))
    me = tmp_path / "videos" / "alice"
    cfg = compose(["experiment=own_video", f"data.root={me}"])
    assert (cfg.data.subject, cfg.variant, cfg.data.feature, cfg.trainer.accelerator) == ("alice", "", "mel", "cpu")
    assert Path(cfg.data.root) == me
    assert Path(cfg.paths.run_dir) == tmp_path / "outputs" / "runs" / "cpu" / "own_video" / "alice" / "seed0"
    cfg = compose(["experiment=own_video", "data.subject=bob"])
    assert Path(cfg.data.root) == Path(cfg.paths.data_dir) / "bob"
    assert Path(cfg.paths.run_dir).parts[-2:] == ("bob", "seed0")
    cfg = compose(["experiment=own_video"])
    assert cfg.data.subject == "me" and Path(cfg.data.root).name == "me"


def test_subject_resolver_in_a_hydra_job():
    from ua3dtalk.cli.identity import subject_name

    assert subject_name(["experiment=own_video", "data.root=data/me/"], "x") == "me"
    assert subject_name(["data.root='~/videos/alice'"], "x") == "alice"
    assert subject_name(["experiment=own_video"], "x") == "x"
    assert subject_name(["~data.root"], "x") == "x"
