"""Behaviour of the ``UA3DTalk`` LightningModule (issue 4 "Tests"; DESIGN §4), fast unit tests.

Models are built the way ``ua3dtalk-train`` builds them (``compose(["experiment=smoke", ...])`` +
:func:`~ua3dtalk.cli.train.build_model`, ``data_info`` filled from the DataModule of the
``synth_emotional_small`` fixture) and trained for one step through a real ``lightning.Trainer`` on a
couple of frames of that DataModule (``FrameBatch`` for the rendering stages, ``AudioBatch`` for the
prior / emotion stages). Checked:

* every stage: gradients and updates reach every parameter of the stage's trainable modules
  (:func:`~ua3dtalk.models.module.stage_trainable_modules`), and every other module — parameters
  *and* buffers (e.g. BatchNorm statistics of the frozen emotion encoder) — is unchanged bit for bit;
* every ablation switch builds and runs training steps (stage A and stage B of the ensembles);
* checkpoints: save → :func:`ua3dtalk.cli.infer.load_model` → identical renders (also after density
  control changed the number of Gaussians); a checkpoint of another configuration is refused with the
  mismatched keys listed; a pickle that would run code is refused (``weights_only``); NaN weights are
  never written over a good checkpoint;
* a NaN in a face parameter stops training with :class:`NonFiniteLossError` naming the step and the
  tensor, before any optimizer step, and the last checkpoint stays the last good one.
"""
from __future__ import annotations

import contextlib

import dataclasses
import os
import re
from pathlib import Path

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader, Subset

from ua3dtalk.callbacks.checkpoint import (
    AtomicCheckpointIO,
    CheckpointError,
    PeriodicCheckpoint,
    load_model_checkpoint,
    read_checkpoint,
)
from ua3dtalk.cli.infer import load_model
from ua3dtalk.cli.train import build_datamodule, build_model, compose, fill_data_info
from ua3dtalk.data.batch import AudioBatch, collate_batches
from ua3dtalk.data.batch import FrameBatch
from ua3dtalk.models.landmarks import landmark_loss, project
from ua3dtalk.models.module import (CHECKPOINT_VERSION, STAGES, NonFiniteLossError, TalkingHead, UA3DTalk,
                                    HEAD_MODULES, stage_trainable_modules, upgrade_state_dict)

pytestmark = pytest.mark.filterwarnings(
    "ignore:.*does not have many workers:UserWarning",
    "ignore:.*val_dataloader.*:UserWarning",
    "ignore:.*smaller than the logging interval.*:UserWarning",
)


@pytest.fixture(autouse=True)
def _single_thread(one_thread):
    """Tiny renders: one torch thread is much faster than contended intra-op threads on a loaded machine."""
    yield


# --------------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------------


def make_cfg(root: Path, run_dir: Path, *overrides: str, dm=None):
    cfg = compose(["experiment=smoke", f"data.root={root}", f"paths.run_dir={run_dir}",
                   "data.limit_val_frames=4", *overrides])
    if dm is not None:
        fill_data_info(cfg, dm)
    return cfg


@pytest.fixture(scope="module")
def dm(synth_emotional_small, tmp_path_factory):
    """The smoke experiment's DataModule on the fixture (set up for fit)."""
    cfg = make_cfg(synth_emotional_small, tmp_path_factory.mktemp("dm_run"))
    return build_datamodule(cfg)


@pytest.fixture
def cfg_factory(dm, synth_emotional_small, tmp_path):
    """``cfg_factory(*overrides)`` → a composed smoke config with ``data_info`` filled from ``dm``."""
    return lambda *ov: make_cfg(synth_emotional_small, tmp_path / "run", *ov, dm=dm)


def new_model(cfg, stage: str) -> UA3DTalk:
    torch.manual_seed(int(cfg.seed))  # the networks' initialisation (the Gaussians are seeded by the config)
    model = build_model(cfg, stage)
    model.static_warmup = 0  # deform from the first face step
    return model


def train_loader(dm, stage: str, n: int = 2) -> DataLoader:
    """``n`` training frames of ``dm`` for ``stage`` (FrameBatch or AudioBatch), one batch, no shuffling.

    The frames are spread over the split (several clips and emotions; several frames for the prior's
    InfoNCE); the first is a blinking frame, so that the eye input is non-zero (the eye gates of the
    audio view get a gradient only from a blink); in the fuse stage the last is the widest-open mouth
    (``fuse_mouth_grad=inner``: the mouth branch learns from inner-mouth pixels only)."""
    dm.stage = stage
    ds = dm.dataset("train")
    m = len(ds)
    idx = [int(round(k * (m - 1) / max(n - 1, 1))) for k in range(n)] if n > 1 else [m // 2]
    rows = dm.split_index["train"]
    blink = [float(dm.clips[int(ci)].blink()[dm.clips[int(ci)].img_ids[int(pos)]]) for ci, pos in rows]
    idx[0] = max(range(m), key=lambda i: blink[i])
    assert blink[idx[0]] > 0.5, "the fixture has no blinking training frame"
    if stage == "fuse" and n > 1:  # an open mouth: the mouth branch gets gradients whatever fuse_mouth_grad is
        idx[-1] = max(range(0, m, 3), key=lambda i: float(ds[i].mouth_mask.sum()))
    return DataLoader(Subset(ds, idx), batch_size=n, collate_fn=collate_batches)


def prime_batch(ds) -> FrameBatch:
    """16 frames spread over ``ds`` in one batch (to prime the landmark anchors: ``min_frames`` is 16)."""
    return collate_batches([ds[i] for i in range(0, len(ds), max(1, len(ds) // 16))][:16])


def val_batch(dm, n: int = 2) -> FrameBatch:
    dm.stage = "fuse"
    ds = dm.frame_dataset("val")
    return collate_batches([ds[i] for i in range(min(n, len(ds)))])


def make_trainer(steps: int, **kw) -> L.Trainer:
    """A CPU trainer stopping after ``steps`` optimizer steps (Lightning's ``global_step`` counts
    optimizer steps: one training step of a stage = one step per optimizer of the stage)."""
    args = dict(max_steps=steps, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                limit_val_batches=0)
    args.update(kw)
    return L.Trainer(**args)


def fit_steps(model: UA3DTalk, loader: DataLoader, steps: int = 1, **kw) -> L.Trainer:
    n_opt = len(model._optimizers_for_stage())
    trainer = make_trainer(steps * n_opt, **kw)
    trainer.fit(model, train_dataloaders=loader)
    assert model.stage_step() == steps, f"expected {steps} training steps, ran {model.stage_step()}"
    return trainer


def snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def named_modules(model: UA3DTalk) -> list[tuple[str, torch.nn.Module]]:
    """(state-dict prefix, module) of the talking head's modules and of the LightningModule's own."""
    return [*((f"head.{n}", m) for n, m in model.head.named_children()),
            *((n, m) for n, m in model.named_children() if m is not model.head)]


def module_names(model: UA3DTalk, modules) -> set[str]:
    """Short names (``face``, ``landmark_anchors``) of ``modules``."""
    ids = {id(m) for m in modules}
    return {n.removeprefix("head.") for n, m in named_modules(model) if id(m) in ids}


def differing(before: dict, after: dict, prefix: str, require: bool = True) -> list[str]:
    """State-dict keys under module ``prefix`` (a short name such as ``face`` is looked up under ``head.``)
    whose value changed; a prefix with no key at all fails (the comparison would be vacuous)."""
    if prefix in HEAD_MODULES:
        prefix = f"head.{prefix}"
    keys = sorted(k for k in set(before) | set(after) if k.startswith(prefix + "."))
    assert keys or not require, f"no state-dict entry under {prefix!r}"
    return [k for k in keys if k not in before or k not in after or before[k].shape != after[k].shape
            or not torch.equal(before[k], after[k])]


# Parameters that cannot influence any output, so no gradient can reach them: the attention fusion of
# the single-branch (wav2vec2-only) emotion student — a softmax over one branch is the constant 1.
DEAD_PARAMETERS = ("head.emotion.student.fusion.",)


def assert_stage_updates(model: UA3DTalk, before: dict, changed_ok: set[str] = frozenset()) -> None:
    """Every parameter of the stage's trainable modules has a finite, non-zero gradient and was updated;
    every other module's state (parameters and buffers) is bit-for-bit unchanged and got no gradient."""
    after = model.state_dict()
    trainable = module_names(model, stage_trainable_modules(model))
    assert trainable, f"stage {model.stage}: no trainable module"
    problems = []
    for name, mod in named_modules(model):
        if name.removeprefix("head.") in trainable:
            for pn, p in mod.named_parameters():
                key = f"{name}.{pn}"
                if key.startswith(DEAD_PARAMETERS):
                    assert p.grad is None or not bool((p.grad != 0).any()), f"{key} is not dead after all"
                    continue
                if p.grad is None:
                    problems.append(f"{key}: no gradient")
                elif not bool(torch.isfinite(p.grad).all()):
                    problems.append(f"{key}: non-finite gradient")
                elif not bool((p.grad != 0).any()):
                    problems.append(f"{key}: gradient is zero everywhere")
                elif float(p.grad.abs().max()) > 1e-9 and torch.equal(before[key], p.detach()):
                    # (a first Adam step is ≈ lr·sign(g) for |g| ≫ eps = 1e-8; for the tiny gradients that
                    # reach the occluded mouth in a first fuse step it can fall below float resolution)
                    problems.append(f"{key}: not updated (max |grad| {float(p.grad.abs().max()):.2e})")
        else:
            changed = differing(before, after, name, require=False)
            if changed and name.removeprefix("head.") not in changed_ok:
                problems.append(f"frozen module {name} changed: {changed[:6]}")
            for pn, p in mod.named_parameters():
                if p.grad is not None and bool((p.grad != 0).any()):
                    problems.append(f"frozen {name}.{pn} received a gradient")
    assert not problems, f"stage {model.stage}:\n  " + "\n  ".join(problems)


# --------------------------------------------------------------------------------------------------
# stages: what learns and what stays frozen
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("stage", ["face", "mouth", "fuse"])
def test_render_stage_updates_exactly_its_modules(stage, dm, cfg_factory):
    model = new_model(cfg_factory(), stage)
    before = snapshot(model)
    fit_steps(model, train_loader(dm, stage, 2))
    # the landmark anchors have no parameters; every render stage adds its frames to their statistics
    assert_stage_updates(model, before, changed_ok={"landmark_anchors"})
    assert int(model.landmark_anchors.frames) == 2
    # the frozen prior and emotion modules are bit-for-bit unchanged (parameters and buffers)
    after = model.state_dict()
    for frozen in ("prior", "emotion", "emotion_control"):
        assert differing(before, after, frozen) == [], frozen
    expected = {"face": {"face", "deformation", "emotion_field"}, "mouth": {"mouth", "mouth_deformation"},
                "fuse": {"face", "deformation", "emotion_field", "mouth", "mouth_deformation"}}[stage]
    assert module_names(model, stage_trainable_modules(model)) == expected


def test_frozen_modules_give_the_same_conditioning_while_training(dm, cfg_factory):
    """The conditioning a render stage trains with is the one inference sees (frozen modules in eval
    mode: e.g. the emotion student's BatchNorm uses its learned statistics, never the batch's)."""
    model = new_model(cfg_factory(), "face")
    batch = val_batch(dm, 2)
    model.eval()
    ref = model.head.conditioning(batch)
    model.train()
    got = model.head.conditioning(batch)
    for name in ("content", "style", "emotion"):
        assert torch.equal(getattr(ref, name), getattr(got, name)), name


@pytest.mark.parametrize("source", ["label", "audio"])
def test_emotion_condition_while_training(source, dm, cfg_factory):
    """emotion_condition=label: a training render stage conditions the emotion view on the prototype of
    each frame's (emotion, intensity) label — the embedding label-driven inference uses; validation and
    inference (eval mode) keep the audio embedding; emotion_condition=audio always uses the audio."""
    model = new_model(cfg_factory(f"model.emotion_condition={source}"), "face")
    batch = val_batch(dm, 2)
    assert bool((batch.emotion >= 0).all()) and bool((batch.intensity >= 1).all())
    ctl = model.emotion_control
    protos = torch.randn(2, ctl.dim)
    ctl.update_prototypes(protos, batch.emotion, batch.intensity)
    model.eval()
    audio = model.head.conditioning(batch).emotion
    model.train()
    got = model.head.conditioning(batch).emotion
    if source == "label":
        torch.testing.assert_close(got, ctl.from_labels(batch.emotion, batch.intensity, audio))
        assert not torch.allclose(got, audio)
    else:
        assert torch.equal(got, audio)
    with pytest.raises(Exception, match="emotion_condition must be 'audio' or 'label'"):  # Hydra wraps it
        build_model(cfg_factory("model.emotion_condition=prosody"), "face")


@pytest.mark.parametrize("stage", ["prior", "emotion"])
def test_audio_stage_updates_exactly_its_modules(stage, dm, cfg_factory):
    model = new_model(cfg_factory(), stage)
    loader = train_loader(dm, stage, 12)
    batch = next(iter(loader))
    assert isinstance(batch, AudioBatch)
    assert len(set(batch.emotion.tolist())) > 1  # the frames span several emotions
    before = snapshot(model)
    fit_steps(model, loader)
    # the emotion stage also updates the (non-gradient) class/intensity prototypes of EmotionControl
    assert_stage_updates(model, before, changed_ok={"emotion_control"} if stage == "emotion" else set())
    if stage == "emotion":
        assert differing(before, model.state_dict(), "emotion_control"), "emotion prototypes were not updated"
    assert module_names(model, stage_trainable_modules(model)) == {stage}


def test_static_warmup_trains_the_canonical_gaussians_only(dm, cfg_factory):
    model = new_model(cfg_factory(), "face")
    model.static_warmup = 5
    before = snapshot(model)
    fit_steps(model, train_loader(dm, "face", 1))
    after = model.state_dict()
    assert differing(before, after, "face"), "face Gaussians not updated in the static warm-up"
    for name in ("deformation", "emotion_field", "mouth", "mouth_deformation", "prior", "emotion"):
        assert differing(before, after, name) == [], name


# --------------------------------------------------------------------------------------------------
# ablations: every switch builds and trains (stage A, then stage B of the ensembles)
# --------------------------------------------------------------------------------------------------

ABLATIONS = {
    "full_cov": ["model.deformation.fusion=full_cov"],
    "uniform": ["model.deformation.fusion=uniform"],
    "concat": ["model.deformation.fusion=concat"],
    "aleatoric": ["model.deformation.uncertainty=aleatoric"],
    "epistemic": ["model.deformation.uncertainty=epistemic"],
    "single_head": ["model.deformation.single_head=true"],
    "no_prior": ["model.deformation.views=[audio,emotion]", "model.mouth_deformation.views=[audio]",
                 "model.prior=null"],
    "no_emotion": ["model.deformation.views=[audio,content,style]", "model.emotion=null",
                   "model.emotion_field=null", "model.emotion_swap_weight=0"],
}


@pytest.mark.parametrize("name", list(ABLATIONS))
def test_ablation_builds_and_trains(name, dm, cfg_factory):
    cfg = cfg_factory(*ABLATIONS[name], "model.deformation.ensemble_switch=1",
                      "model.mouth_deformation.ensemble_switch=1")
    model = new_model(cfg, "fuse")
    if name == "no_prior":
        assert model.prior is None and model.deformation.views == ("audio", "emotion")
    if name == "no_emotion":
        assert model.emotion is None and model.emotion_field is None and "emotion" not in model.deformation.views
    before = snapshot(model)
    fit_steps(model, train_loader(dm, "fuse", 2), steps=2)  # step 0: stage A, step 1: stage B
    assert_stage_updates(model, before, changed_ok={"landmark_anchors"})  # accumulates its statistics
    model.eval()
    img = model.render_batch(val_batch(dm, 1))
    assert img.shape == (1, 3, *dm.image_size) and bool(torch.isfinite(img).all())


def test_ensemble_schedule_counts_each_networks_steps_across_stages(dm, cfg_factory, tmp_path):
    """Stage A of an ensemble lasts ``ensemble_switch`` optimizer steps of *its network*, over all stages: the
    fuse stage continues the face stage's schedule. (It once restarted at the stage's step 0: at demo and paper
    scale the whole fuse stage trained single members, the code statistics followed their outputs, and
    inference — the members' mean — saw the fused code at 0.4 of unit scale.) The count survives a checkpoint."""
    cfg = cfg_factory("model.deformation.ensemble_switch=2", "model.mouth_deformation.ensemble_switch=2")
    face = new_model(cfg, "face")
    fit_steps(face, train_loader(dm, "face", 2), steps=3)
    assert (int(face.deformation.trained_steps), int(face.mouth_deformation.trained_steps)) == (3, 0)
    ckpt = tmp_path / "face.ckpt"
    torch.save({"state_dict": face.state_dict()}, ckpt)
    fuse = new_model(cfg, "fuse")
    fuse.load_state_dict(torch.load(ckpt, weights_only=True)["state_dict"])
    stages = {"face": [], "mouth": []}
    for name, net in (("face", fuse.deformation), ("mouth", fuse.mouth_deformation)):
        net.register_forward_pre_hook(
            lambda mod, args, kw, name=name: stages[name].append(mod.fusion.is_single_member(kw.get("step"))),
            with_kwargs=True)
    fit_steps(fuse, train_loader(dm, "fuse", 2), steps=3)
    assert stages["face"] and not any(stages["face"]), "the face network restarted stage A in the fuse stage"
    assert stages["mouth"] == [True] * 4 + [False] * 2, stages["mouth"]  # its steps 0, 1 (two frames each): A
    assert (int(fuse.deformation.trained_steps), int(fuse.mouth_deformation.trained_steps)) == (6, 3)
    # a checkpoint from before the counter existed loads (the count starts at 0)
    old = {k: v for k, v in fuse.state_dict().items() if not k.endswith("trained_steps")}
    fresh = new_model(cfg, "fuse")
    fresh.load_state_dict(old)
    assert int(fresh.deformation.trained_steps) == 0


def test_prior_and_emotion_stages_need_their_modules(cfg_factory):
    cfg = cfg_factory(*ABLATIONS["no_prior"])
    with pytest.raises(ValueError, match="prior"):
        build_model(cfg, "prior").configure_optimizers()
    with pytest.raises(Exception, match="content/style"):  # content/style views without a prior
        build_model(cfg_factory("model.prior=null"), "face")


# --------------------------------------------------------------------------------------------------
# checkpoints
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("densify", [False, True], ids=["fixed", "densified"])
def test_checkpoint_round_trip_renders_identically(densify, dm, cfg_factory, tmp_path):
    ov = ["model.face_density.start=1", "model.face_density.interval=1", "model.face_density.grad_threshold=1e-12",
          "model.mouth_density.start=1", "model.mouth_density.interval=1",
          "model.mouth_density.grad_threshold=1e-12"] if densify else []
    cfg = cfg_factory(*ov)
    model = new_model(cfg, "fuse")
    n0 = (len(model.face), len(model.mouth))
    trainer = fit_steps(model, train_loader(dm, "fuse", 2), steps=2 if densify else 1,
                        plugins=[AtomicCheckpointIO()])
    if densify:
        assert (len(model.face), len(model.mouth)) != n0, "density control did not change the Gaussians"
    path = tmp_path / "ck" / "last.ckpt"
    trainer.save_checkpoint(path)
    loaded = load_model(path)
    assert isinstance(loaded, UA3DTalk) and loaded.stage == "fuse" and not loaded.training
    assert (len(loaded.face), len(loaded.mouth)) == (len(model.face), len(model.mouth))
    own, other = model.state_dict(), loaded.state_dict()
    assert set(own) == set(other)
    assert [k for k in own if not torch.equal(own[k], other[k])] == []
    model.eval()
    batch = val_batch(dm, 2)
    a, b = model.render_batch(batch), loaded.render_batch(batch)
    assert a.shape == (2, 3, *dm.image_size)
    assert a.std() > 0.01  # a real render, not a constant image
    assert torch.equal(a, b)
    # renders with an explicit emotion embedding too
    e = torch.randn(1, 128, generator=torch.Generator().manual_seed(0))
    assert torch.equal(model.render_batch(batch, emotion=e), loaded.render_batch(batch, emotion=e))


@pytest.fixture
def default_checkpoint(dm, cfg_factory, tmp_path) -> Path:
    model = new_model(cfg_factory(), "face")
    trainer = fit_steps(model, train_loader(dm, "face", 1), plugins=[AtomicCheckpointIO()])
    path = tmp_path / "default.ckpt"
    trainer.save_checkpoint(path)
    return path


def test_checkpoint_of_another_config_lists_mismatched_keys(dm, cfg_factory, tmp_path):
    concat = new_model(cfg_factory("model.deformation.fusion=concat"), "face")
    trainer = fit_steps(concat, train_loader(dm, "face", 1), plugins=[AtomicCheckpointIO()])
    path = tmp_path / "concat.ckpt"
    trainer.save_checkpoint(path)
    model = new_model(cfg_factory(), "fuse")
    before = snapshot(model)
    with pytest.raises(CheckpointError) as ei:
        load_model_checkpoint(model, path)
    msg = str(ei.value)
    assert str(path) in msg
    assert "missing: " in msg and "unexpected: " in msg
    own, theirs = set(model.state_dict()), set(read_checkpoint(path)["state_dict"])
    missing, unexpected = sorted(own - theirs), sorted(theirs - own)
    assert missing and unexpected
    assert missing[0] in msg and unexpected[0] in msg
    assert all(k.startswith("head.deformation.") for k in missing + unexpected)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # nothing was loaded


def test_checkpoint_with_other_sizes_lists_shape_mismatches(default_checkpoint, cfg_factory):
    model = new_model(cfg_factory("model.deformation.field_resolution=8"), "fuse")
    with pytest.raises(CheckpointError, match=r"shape mismatch: head\.deformation\.position_field"):
        load_model_checkpoint(model, default_checkpoint)


def test_checkpoint_of_another_version_is_refused(default_checkpoint, cfg_factory, tmp_path):
    ck = torch.load(default_checkpoint, weights_only=True)
    ck["ua3dtalk"]["version"] = 99
    bad = tmp_path / "v99.ckpt"
    torch.save(ck, bad)
    with pytest.raises(CheckpointError, match="version 99"):
        load_model_checkpoint(new_model(cfg_factory(), "fuse"), bad)
    del ck["ua3dtalk"]
    torch.save(ck, bad)
    with pytest.raises(CheckpointError, match="not written by ua3dtalk"):
        load_model(bad)


def test_format_1_checkpoint_is_upgraded_on_load(default_checkpoint, dm, cfg_factory, tmp_path):
    """A checkpoint of format 1 (the head's modules at the top level: ``face.means``) loads into the format-2
    module (``head.face.means``) with the same weights, through the CLI loader and through Lightning's
    ``load_state_dict``; keys of the LightningModule itself keep their names."""
    ck = torch.load(default_checkpoint, weights_only=True)
    assert ck["ua3dtalk"]["version"] == CHECKPOINT_VERSION == 2
    new_keys = ck["state_dict"]
    assert "head.face.means" in new_keys and "face.means" not in new_keys
    old = {k.removeprefix("head."): v for k, v in new_keys.items()}
    assert "mouth_color_initialised" in old and any(k.startswith("landmark_anchors.") for k in old)
    ck1 = {**ck, "state_dict": old, "ua3dtalk": {**ck["ua3dtalk"], "version": 1}}
    path = tmp_path / "format1.ckpt"
    torch.save(ck1, path)
    a, b = new_model(cfg_factory(), "face"), new_model(cfg_factory(), "face")
    load_model_checkpoint(a, default_checkpoint)
    load_model_checkpoint(b, path)
    sa, sb = a.state_dict(), b.state_dict()
    assert set(sa) == set(sb) == set(new_keys)
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    c = new_model(cfg_factory(), "face")
    c.load_state_dict(dict(old))  # Lightning's resume path: the pre-hook renames the keys
    assert all(torch.equal(sa[k], v) for k, v in c.state_dict().items())
    assert upgrade_state_dict(new_keys) is new_keys  # format 2 stays as it is


def test_talking_head_is_a_plain_module_that_renders_like_the_lightning_module(default_checkpoint, dm, cfg_factory):
    """The forward model without Lightning: ``model.head`` is an ``nn.Module`` (not a LightningModule), owns
    every avatar module, and renders a predict batch exactly as ``predict_step``; a head built on its own loads
    the checkpoint's ``head.*`` weights and renders the same."""
    model = load_model(default_checkpoint)
    head = model.head
    assert isinstance(head, TalkingHead) and isinstance(head, torch.nn.Module)
    assert not isinstance(head, L.LightningModule)
    assert {n for n, _ in head.named_children()} >= {"face", "mouth", "deformation", "mouth_deformation"}
    assert model.face is head.face and model.deformation is head.deformation
    batch = val_batch(dm, 2)
    with torch.no_grad():
        via_head = head(batch, stage="fuse")
    out = model.predict_step(batch)
    assert torch.equal(out["images"], via_head) and via_head.std() > 0.01
    fresh = new_model(cfg_factory(), "face").head.eval()
    sd = read_checkpoint(default_checkpoint)["state_dict"]
    fresh.load_state_dict({k.removeprefix("head."): v for k, v in sd.items() if k.startswith("head.")})
    with torch.no_grad():
        assert torch.equal(fresh(batch, stage="fuse"), via_head)
        # the stage decides what is shown: one branch over the background differs from the composite
        assert not torch.equal(fresh(batch, stage="mouth"), via_head)


@pytest.mark.parametrize("stage, expected", [("emotion", False), ("face", True)])
def test_checkpoint_from_before_the_mouth_colour_flag_loads(stage, expected, default_checkpoint, cfg_factory, tmp_path):
    """A checkpoint written before ``mouth_color_initialised`` existed loads; the flag says whether its mouth
    colours were trained (a mouth/face/fuse-stage checkpoint) or are still to be initialised."""
    ck = torch.load(default_checkpoint, weights_only=True)
    del ck["state_dict"]["mouth_color_initialised"]
    ck["ua3dtalk"]["stage"] = stage
    old = tmp_path / "old.ckpt"
    torch.save(ck, old)
    model = new_model(cfg_factory(), "mouth")
    model.mouth_color_initialised.fill_(not expected)
    load_model_checkpoint(model, old)
    assert bool(model.mouth_color_initialised) is expected


class _Payload:
    """Unpickling this object creates the directory ``marker`` (a stand-in for arbitrary code)."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def test_malicious_pickle_checkpoint_is_refused(default_checkpoint, tmp_path):
    marker = tmp_path / "pwned"
    ck = torch.load(default_checkpoint, weights_only=True)
    ck["payload"] = _Payload(str(marker))
    evil = tmp_path / "evil.ckpt"
    torch.save(ck, evil)
    # the payload is live: a full unpickle runs it
    torch.load(evil, weights_only=False)
    assert marker.is_dir()
    marker.rmdir()
    with pytest.raises(CheckpointError, match=re.escape(str(evil))):
        read_checkpoint(evil)
    with pytest.raises(CheckpointError):
        load_model(evil)
    with pytest.raises(CheckpointError):
        AtomicCheckpointIO().load_checkpoint(evil)
    assert not marker.exists(), "loading the checkpoint ran code"


def test_atomic_checkpoint_io_refuses_nan_and_keeps_the_previous_file(tmp_path):
    io = AtomicCheckpointIO()
    path = tmp_path / "ck" / "last.ckpt"
    good = {"state_dict": {"face.means": torch.randn(5, 3), "deformation.w": torch.ones(2)}, "ua3dtalk": {"version": 1}}
    io.save_checkpoint(good, path)
    data = path.read_bytes()
    bad = {"state_dict": {"face.means": torch.randn(5, 3), "deformation.w": torch.tensor([1.0, float("nan")])}}
    with pytest.raises(CheckpointError, match=r"deformation\.w"):
        io.save_checkpoint(bad, path)
    inf = {"state_dict": {"face.means": torch.full((5, 3), float("inf")), "deformation.w": torch.ones(2)}}
    with pytest.raises(CheckpointError, match=r"face\.means"):
        io.save_checkpoint(inf, path)
    assert path.read_bytes() == data
    assert sorted(p.name for p in path.parent.iterdir()) == ["last.ckpt"]  # no temporary file left
    ck = io.load_checkpoint(path)
    assert torch.equal(ck["state_dict"]["face.means"], good["state_dict"]["face.means"])
    # a NaN checkpoint written by other means is refused on reading
    torch.save(bad, tmp_path / "nan.ckpt")
    with pytest.raises(CheckpointError, match="NaN"):
        read_checkpoint(tmp_path / "nan.ckpt")


# --------------------------------------------------------------------------------------------------
# non-finite losses
# --------------------------------------------------------------------------------------------------


class _InjectNaN(L.Callback):
    """Before training batch ``at``: remember the weights, then put NaN into ``head.face.sh`` (or into the
    parameter ``target`` of the model)."""

    def __init__(self, at: int, target: str = "head.face.sh"):
        self.at, self.target = at, target
        self.before: dict | None = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if batch_idx == self.at:
            self.before = snapshot(pl_module)
            with torch.no_grad():
                pl_module.get_parameter(self.target).view(-1)[:3] = float("nan")


def test_nan_in_a_network_parameter_is_named(dm, cfg_factory):
    """Network parameters are not scanned every step (34 M at paper size); a NaN in one still stops
    the step before the optimizer, naming the parameter (found once the loss is non-finite)."""
    model = new_model(cfg_factory(), "face")
    target = "head.deformation.decoder." + next(n for n, _ in model.deformation.decoder.named_parameters())
    trainer = make_trainer(4 * len(model._optimizers_for_stage()), callbacks=[_InjectNaN(0, target)])
    with pytest.raises(NonFiniteLossError) as ei:
        trainer.fit(model, train_dataloaders=train_loader(dm, "face", 1))
    assert re.search(r"\bstep 0\b", str(ei.value)) and f"`{target}`" in str(ei.value), str(ei.value)


def test_nan_in_a_face_parameter_stops_training_and_keeps_the_checkpoint(dm, cfg_factory, tmp_path):
    model = new_model(cfg_factory(), "face")
    last = tmp_path / "checkpoints" / "face" / "last.ckpt"
    inject = _InjectNaN(at=2)
    n_opt = len(model._optimizers_for_stage())
    trainer = make_trainer(5 * n_opt, plugins=[AtomicCheckpointIO()],
                           callbacks=[PeriodicCheckpoint(last, every_n_steps=1), inject])
    loader = train_loader(dm, "face", 1)
    loader = DataLoader(Subset(loader.dataset.dataset, list(range(5))), batch_size=1, collate_fn=collate_batches)
    with pytest.raises(NonFiniteLossError) as ei:
        trainer.fit(model, train_dataloaders=loader)
    msg = str(ei.value)
    assert re.search(r"\bstep 2\b", msg), msg
    assert "`head.face.sh`" in msg, msg
    # nothing was stepped after the NaN appeared: every other weight is as before the failing step
    after = model.state_dict()
    changed = [k for k in inject.before if k != "head.face.sh" and not torch.equal(inject.before[k], after[k])]
    assert changed == []
    # the checkpoint written after the last good step is intact, finite and holds those weights
    ck = read_checkpoint(last)
    sd = ck["state_dict"]
    assert all(bool(torch.isfinite(v).all()) for v in sd.values() if v.is_floating_point())
    assert all(torch.equal(sd[k], inject.before[k]) for k in inject.before)
    loaded = load_model(last)
    assert torch.equal(loaded.face.sh, inject.before["head.face.sh"])


def test_non_finite_gradient_stops_before_the_optimizer_step(dm, cfg_factory):
    """A finite loss with a non-finite gradient (e.g. from a degenerate Gaussian) must not be stepped."""
    model = new_model(cfg_factory(), "face")
    before = snapshot(model)
    model.face.sh.register_hook(lambda g: torch.where(torch.arange(g.numel()).reshape(g.shape) == 7,
                                                      torch.full_like(g, float("inf")), g))
    with pytest.raises(NonFiniteLossError, match=r"step 0: `gradient of head\.face\.sh` is not finite \(1 of"):
        fit_steps(model, train_loader(dm, "face", 1))
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # nothing was stepped


class _NaNImages(torch.utils.data.Dataset):
    def __init__(self, ds):
        self.ds = ds

    def __len__(self):
        return len(self.ds)

    def __getitem__(self, i):
        b = self.ds[i]
        b.image[..., 10:20, 10:20] = float("nan")
        return b


def test_non_finite_render_loss_names_the_step_and_tensor(dm, cfg_factory):
    model = new_model(cfg_factory(), "face")
    before = snapshot(model)
    loader = train_loader(dm, "face", 1)
    loader = DataLoader(_NaNImages(loader.dataset), batch_size=1, collate_fn=collate_batches)
    with pytest.raises(NonFiniteLossError, match=r"step 0: `train/loss` is not finite"):
        fit_steps(model, loader)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # nothing was stepped


def test_non_finite_prior_loss_names_the_tensor(dm, cfg_factory):
    model = new_model(cfg_factory(), "prior")
    with torch.no_grad():
        model.prior.content.out.weight.fill_(float("inf"))
    with pytest.raises(NonFiniteLossError, match=r"step 0: `prior/total`"):
        fit_steps(model, train_loader(dm, "prior", 4))


def test_unknown_stage_is_refused(cfg_factory):
    with pytest.raises(Exception, match="unknown stage"):
        build_model(cfg_factory(), "teeth")
    assert set(STAGES) == {"prior", "emotion", "mouth", "face", "fuse"}


def test_unknown_backend_is_refused_at_construction(cfg_factory):
    with pytest.raises(Exception, match="unknown renderer backend 'vulkan'"):
        build_model(cfg_factory("model.backend=vulkan"), "face")


# --------------------------------------------------------------------------------------------------
# loss terms of the render stages
# --------------------------------------------------------------------------------------------------
def test_mouth_hole_and_cover_terms_are_means_over_the_inner_mouth():
    """hole = mean alpha, cover = mean transparency (1 − alpha), both over the inner-mouth pixels only."""
    alpha = torch.zeros(6, 5, 1)
    inner = torch.zeros(6, 5, 1)
    inner[2:4, 1:3] = 1  # 4 inner-mouth pixels
    alpha[2, 1] = 1.0
    alpha[3, 2] = 0.5
    alpha[0, 0] = 1.0  # outside the inner mouth: not counted
    assert float(UA3DTalk._hole(alpha, inner)) == pytest.approx(1.5 / 4)
    assert float(UA3DTalk._cover(alpha, inner)) == pytest.approx((0 + 0.5 + 1 + 1) / 4)
    assert float(UA3DTalk._cover(torch.ones_like(alpha), inner)) == 0.0  # filled
    for term in (UA3DTalk._hole, UA3DTalk._cover):
        assert float(term(alpha, torch.zeros_like(inner))) == 0.0  # closed mouth: no term


@pytest.mark.parametrize("mode", ["frame", "region"])
def test_mouth_stage_l1_is_averaged_as_mouth_photo_says(mode, dm, cfg_factory):
    """``mouth_photo``: ``frame`` averages the mouth stage's L1 over the inner mouth ∪ the outside of the head
    together; ``region`` (★) is the mean over the inner mouth plus the mean over the outside of the head, so a few
    hundred inner-mouth pixels weigh as much as the mouth-cover term."""
    dm.stage = "mouth"
    ds = dm.dataset("train")
    i = max(range(0, len(ds), 3), key=lambda j: float(ds[j].mouth_mask.sum()))
    batch = collate_batches([ds[i]])
    model = new_model(cfg_factory(f"model.mouth_photo={mode}"), "mouth")
    cond = model.head.conditioning(batch)
    H, W = batch.image.shape[-2:]
    with torch.no_grad():
        _, terms = model._frame_loss(batch, cond, 0, 0, None, [], W, H)
        r = model.head.render_mouth(cond, 0, batch.viewmat[0], batch.K[0], W, H, step=0)
    img, bg = batch.image[0].permute(1, 2, 0), batch.background[0].permute(1, 2, 0)
    inner = batch.mouth_mask[0, 0][..., None].float()
    head = (batch.face_mask[0, 0] | batch.hair_mask[0, 0])[..., None].float() * (1 - inner)
    err = (r.image + (1 - r.alpha) * bg - (img * inner + bg * (1 - inner))).abs()
    outside = 1 - head - inner
    assert float(inner.sum()) > 20 and float(outside.sum()) > 20
    if mode == "frame":
        expect = (err * (1 - head)).sum() / (3 * (1 - head).sum())
    else:
        expect = (err * inner).sum() / (3 * inner.sum()) + (err * outside).sum() / (3 * outside.sum())
    torch.testing.assert_close(terms["l1"], expect, rtol=5e-3, atol=0)  # (the two modes differ by ~30×)


def one_step_per_weight(key: str, stage: str, loader, cfg_factory, monkeypatch, weights=(0.0, 4.0)):
    """One training step from the same initial state for each value of the model key ``key`` (a hydra override,
    e.g. ``+model.hole_weight``) → ({weight: the step's logged values}, {weight: the trained model})."""
    logs, models = {}, {}
    for w in weights:
        model = new_model(cfg_factory(f"{key}={w}"), stage)
        logged = logs.setdefault(w, {})
        monkeypatch.setattr(model, "log_dict", lambda d, logged=logged, **kw: logged.update(d))
        fit_steps(model, loader)
        models[w] = model
    return logs, models


@pytest.mark.parametrize("stage", ["face", "fuse"])
def test_hole_term_enters_the_loss_with_its_weight(stage, dm, cfg_factory, monkeypatch):
    """One step on open-mouth frames with hole_weight 0 and 4 from the same initial state: the logged
    hole term is the mean face alpha over the inner mouth (> 0 for a fresh face covering it), and the
    losses differ by exactly 4 × that term."""
    dm.stage = stage
    ds = dm.dataset("train")
    opened = sorted(range(0, len(ds), 3), key=lambda i: -float(ds[i].mouth_mask.sum()))[:2]  # widest open
    loader = DataLoader(Subset(ds, opened), batch_size=2, collate_fn=collate_batches)
    assert float(next(iter(loader)).mouth_mask.sum()) > 0, "the batch needs open-mouth frames"
    logs, _ = one_step_per_weight("+model.hole_weight", stage, loader, cfg_factory, monkeypatch)
    hole = float(logs[4.0]["train/hole"])
    assert hole > 0.05 and float(logs[0.0]["train/hole"]) == pytest.approx(hole, rel=1e-3)  # same renders
    others = [k for k in ("train/l1", "train/ssim", "train/alpha") if k in logs[0.0]]
    rest = {w: sum(float(logs[w][k]) for k in others) for w in logs}
    assert rest[4.0] == pytest.approx(rest[0.0], rel=1e-3)
    gap = float(logs[4.0]["train/loss"]) - float(logs[0.0]["train/loss"])
    assert gap == pytest.approx(4 * hole, rel=1e-2)


@pytest.mark.parametrize("stage", ["mouth", "fuse"])
def test_cover_term_enters_the_loss_with_its_weight(stage, dm, cfg_factory, monkeypatch):
    """As the hole term: one step on open-mouth frames with cover_weight 0 and 4 from the same initial
    state; the logged cover term (transparency over the inner mouth, > 0 for a fresh model) enters the
    loss with exactly its weight, and its gradient moves the mouth branch's parameters."""
    dm.stage = stage
    ds = dm.dataset("train")
    opened = sorted(range(0, len(ds), 3), key=lambda i: -float(ds[i].mouth_mask.sum()))[:2]
    loader = DataLoader(Subset(ds, opened), batch_size=2, collate_fn=collate_batches)
    assert float(next(iter(loader)).mouth_mask.sum()) > 0, "the batch needs open-mouth frames"
    logs, models = one_step_per_weight("+model.cover_weight", stage, loader, cfg_factory, monkeypatch)
    means = {w: m.mouth.means.detach() for w, m in models.items()}
    cover = float(logs[4.0]["train/cover"])
    # a fresh mouth branch leaves most of the inner mouth transparent; in the fuse stage the fresh face
    # still covers it (the hole term parts the lips later), so only a little shows through
    assert (0.05 if stage == "mouth" else 1e-4) < cover <= 1.0
    assert float(logs[0.0]["train/cover"]) == pytest.approx(cover, rel=1e-3, abs=1e-5)  # same renders
    gap = float(logs[4.0]["train/loss"]) - float(logs[0.0]["train/loss"])
    assert gap == pytest.approx(4 * cover, rel=1e-2)
    assert not torch.equal(means[0.0], means[4.0])  # the term's gradient reaches the mouth Gaussians


def test_lip_term_is_the_l1_of_the_lip_box():
    """The lip box: square around the mouth landmarks (40 % margin), else around the inner-mouth mask, None
    without either; the lip term is the mean L1 over the box's pixels inside the frame, so an error of the
    same size inside the box counts the same whatever the box's size, and an error outside it not at all."""
    H = W = 40
    inner = torch.zeros(H, W, 1)
    lms = torch.full((68, 2), float("nan"))
    lms[48:68] = torch.tensor([[15.0, 18.0], [25.0, 22.0]]).repeat(10, 1)  # box 10 wide → half 7, centre (20, 20)
    box = UA3DTalk._lip_box(lms, inner, torch.float32)
    assert box.tolist() == pytest.approx([13.0, 13.0, 27.0, 27.0])
    inner[30:32, 5:9] = 1  # xs 5..8, ys 30..31 → centre (7, 31), half max(2, 4) → 4
    assert UA3DTalk._lip_box(None, inner, torch.float32).tolist() == pytest.approx([3.0, 27.0, 11.0, 35.0])
    assert UA3DTalk._lip_box(None, torch.zeros(H, W, 1), torch.float32) is None
    target = torch.zeros(H, W, 3)
    pred = target.clone()
    pred[13:27, 13:27] = 0.5  # exactly the landmark box
    pred[0:5, 0:5] = 1.0  # outside the box: not counted
    model = UA3DTalk.__new__(UA3DTalk)
    assert float(model._lip(pred, target, lms, inner)) == pytest.approx(0.5)
    assert float(model._lip(pred, target, None, torch.zeros(H, W, 1))) == 0.0
    lms[48:68] += 15  # box [28, 42]², partly outside the frame: only its pixels inside count
    pred = target.clone()
    pred[28:, 28:] = 0.25
    pred[:28] = 1.0
    assert float(model._lip(pred, target, lms, inner)) == pytest.approx(0.25)
    lms[48:68] += 30  # box wholly outside the frame
    assert float(model._lip(pred, target, lms, inner)) == 0.0


@pytest.mark.parametrize("stage", ["face", "fuse"])
def test_lip_term_enters_the_loss_with_its_weight(stage, dm, cfg_factory, monkeypatch):
    """One step with lip_weight 0 and 4 from the same initial state: the logged lip term is > 0 for a fresh
    model, the other terms are the same, the losses differ by exactly 4 × it, and its gradient changes the
    deformation network's step; weight 0 (the paper) logs no lip term."""
    dm.stage = stage
    loader = DataLoader(Subset(dm.dataset("train"), [0, 5]), batch_size=2, collate_fn=collate_batches)
    logs, models = one_step_per_weight("model.lip_weight", stage, loader, cfg_factory, monkeypatch)
    nets = {w: torch.cat([p.detach().flatten() for p in m.deformation.parameters()]) for w, m in models.items()}
    assert "train/lip" not in logs[0.0]
    lip = float(logs[4.0]["train/lip"])
    assert lip > 1e-3
    rest = {w: float(logs[w]["train/l1"]) + float(logs[w]["train/ssim"]) for w in logs}
    assert rest[4.0] == pytest.approx(rest[0.0], rel=1e-3)  # same renders
    gap = float(logs[4.0]["train/loss"]) - float(logs[0.0]["train/loss"])
    assert gap == pytest.approx(4 * lip, rel=1e-2)
    assert not torch.equal(nets[0.0], nets[4.0])


@pytest.mark.parametrize("stage", ["face", "fuse"])
def test_landmark_term_enters_the_loss_and_its_anchors_persist(stage, dm, cfg_factory, monkeypatch):
    """landmark_weight 1 and 5 from the same state (anchors primed on 16 training frames): the logged
    landmark term (projected deformed anchors vs the frames' landmarks) is the same, > 0, and the losses
    differ by exactly 4 × it; the step adds its frames to the anchors; the anchors survive a state-dict
    round trip; weight 0 (the paper) builds no anchors; a batch without landmarks skips the term."""
    dm.stage = stage
    ds = dm.dataset("train")
    prime = prime_batch(ds)
    logs, models = {}, {}
    for w in (1.0, 5.0):
        model = new_model(cfg_factory(f"model.landmark_weight={w}", "model.landmark_frames=0",
                                            "model.emotion_swap_weight=0"), stage)
        model.landmark_anchors.accumulate(prime.landmarks, prime.viewmat, prime.K)
        assert model.landmark_anchors.ready
        logged = logs.setdefault(w, {})
        monkeypatch.setattr(model, "log_dict", lambda d, logged=logged, **kw: logged.update(d))
        fit_steps(model, train_loader(dm, stage))
        models[w] = model
    lmk = float(logs[1.0]["train/landmark"])
    assert lmk > 1e-4 and float(logs[5.0]["train/landmark"]) == pytest.approx(lmk, rel=1e-2)
    gap = float(logs[5.0]["train/loss"]) - float(logs[1.0]["train/loss"])
    assert gap == pytest.approx(4 * lmk, rel=1e-2)
    anchors = models[1.0].landmark_anchors
    assert int(anchors.frames) == 16 + 2
    fresh = new_model(cfg_factory("model.landmark_weight=1.0", "model.landmark_frames=0",
                                  "model.emotion_swap_weight=0"), stage)
    fresh.load_weights(models[1.0].state_dict())
    torch.testing.assert_close(fresh.landmark_anchors.anchors(), anchors.anchors())
    paper = new_model(cfg_factory("model.landmark_weight=0", "model.emotion_swap_weight=0"), stage)
    assert paper.landmark_anchors is None
    no_lm = dataclasses.replace(prime, landmarks=None)
    assert fresh._landmark_anchors(no_lm) is None and int(fresh.landmark_anchors.frames) == 18


def test_landmark_replay_bank(dm, cfg_factory, monkeypatch):
    """landmark_frames > 0: every step stores its frames' conditioning in a bounded bank (reservoir once
    full) and adds the landmark term on frames drawn from it; the bank term equals the landmark loss of
    the deformation field at the anchors for the bank's frames."""
    dm.stage = "face"
    ds = dm.dataset("train")
    model = new_model(cfg_factory("model.landmark_weight=1.0", "model.landmark_frames=8",
                                  "+model.landmark_bank=3"), "face")
    prime = prime_batch(ds)
    model.landmark_anchors.accumulate(prime.landmarks, prime.viewmat, prime.K)
    logged = {}
    monkeypatch.setattr(model, "log_dict", lambda d, **kw: logged.update(d))
    fit_steps(model, train_loader(dm, "face"), steps=2)
    assert model._bank_seen == 4 and len(model._bank["K"]) == 3  # capacity 3
    assert float(logged["train/landmark_bank"]) > 1e-4
    loader_frames = next(iter(train_loader(dm, "face")))
    assert any(torch.equal(model._bank["landmarks"][k], loader_frames.landmarks[j]) for k in range(3) for j in range(2))
    model.eval()
    x = model.landmark_anchors.anchors()
    with torch.no_grad():
        got, swap = model._bank_landmark(x, step=10**6, width=128, height=128)
        assert swap is None  # no emotion prototypes yet
        b = model._bank
        f = model.emotion_field(x, b["emotion"])
        d = model.deformation(x, audio=b["audio"], blink=b["eye"], content=b["content"], style=b["style"],
                              emotion=f)
        ref = landmark_loss(x, d.deltas.xyz, b["landmarks"], model.landmark_anchors.indices, b["viewmat"], b["K"],
                            128, 128)
    torch.testing.assert_close(got, ref)  # all 3 frames drawn (8 asked), in another order: same mean
    # growth past the first allocation keeps every row: 5 × 16 frames into a 100-frame bank
    big = new_model(cfg_factory("model.landmark_weight=1.0", "+model.landmark_bank=100"), "face")
    with torch.no_grad():
        cond = big.head.conditioning(prime)
    for _ in range(5):
        big._bank_add(prime, cond)
    assert big._bank_n == 80 and big._bank_seen == 80 and len(big._bank["K"]) == 100
    torch.testing.assert_close(big._bank["landmarks"][:80], prime.landmarks.repeat(5, 1, 1))
    torch.testing.assert_close(big._bank["audio"][64:80], cond.audio)
    with pytest.raises(Exception, match="landmark_frames must be ≥ 0"):
        build_model(cfg_factory("model.landmark_weight=1.0", "model.landmark_frames=-1"), "face")


def test_landmark_term_gradient_moves_the_deformation_towards_the_landmarks(dm, cfg_factory):
    """Only the landmark term (photometric terms weighted 0 by a huge landmark weight): a few steps on one
    batch bring its frames' projected anchors closer to their landmarks."""
    dm.stage = "face"
    ds = dm.dataset("train")
    model = new_model(cfg_factory("model.landmark_weight=1000.0", "model.landmark_frames=0",
                                  "model.emotion_swap_weight=0"), "face")
    prime = prime_batch(ds)
    model.landmark_anchors.accumulate(prime.landmarks, prime.viewmat, prime.K)
    loader = train_loader(dm, "face")
    batch = next(iter(loader))

    def error() -> float:
        x = model.landmark_anchors.anchors()
        model.eval()  # the whole ensemble, no random member
        cond = model.head.conditioning(batch)
        with torch.no_grad():
            tot = 0.0
            for i in range(2):
                r = model.head.render_face(cond, i, batch.viewmat[i], batch.K[i], 16, 16, anchors=x)
                tot += float(landmark_loss(x, r.anchor_xyz, batch.landmarks[i:i + 1], model.landmark_anchors.indices,
                                           batch.viewmat[i:i + 1], batch.K[i:i + 1], 128, 128))
        model.train()
        return tot

    before = error()
    fit_steps(model, loader, steps=8)
    assert error() < 0.7 * before, (before, error())


def test_optional_opacity_and_colour_heads_reach_the_render(dm, cfg_factory):
    """extra_heads=[opacity,color]: Δopacity is added to the opacity logits and Δcolor to the DC colour of
    the rendered face (a head that is computed but not applied would leave the render unchanged)."""
    model = new_model(cfg_factory("model.deformation.extra_heads=[opacity,color]"), "face")
    model.eval()
    batch = val_batch(dm, 1)
    cond = model.head.conditioning(batch)
    H, W = batch.image.shape[-2:]
    render = lambda: model.head.render_face(cond, 0, batch.viewmat[0], batch.K[0], W, H)  # noqa: E731
    with torch.no_grad():
        base = render()
        dec = model.deformation.decoder
        dec.output_bias("opacity").fill_(-30.0)  # every Gaussian transparent
        faded = render()
        dec.output_bias("opacity").zero_()
        dec.output_bias("color").fill_(0.2)  # +0.2 RGB on every Gaussian
        brighter = render()
    assert float(base.alpha.mean()) > 0.05 and float(faded.alpha.max()) < 1e-6
    torch.testing.assert_close(brighter.alpha, base.alpha, atol=1e-5, rtol=0)
    shift = (brighter.image - base.image).sum() / base.alpha.sum() / 3  # image is premultiplied by alpha
    assert float(shift) == pytest.approx(0.2, abs=0.03)


def test_mouth_colour_is_initialised_from_the_inner_mouth_pixels(dm, cfg_factory):
    """init_mouth_color: the first mouth-stage batch showing the inner mouth sets every mouth Gaussian's
    colour to the mean ground-truth colour there (dark), once; off, the colours stay random mid-grey."""
    dm.stage = "mouth"
    ds = dm.dataset("train")
    opened = sorted(range(0, len(ds), 3), key=lambda i: -float(ds[i].mouth_mask.sum()))[:2]
    loader = DataLoader(Subset(ds, opened), batch_size=2, collate_fn=collate_batches)
    batch = next(iter(loader))
    m = batch.mouth_mask.float()
    inner = (batch.image * m).sum((0, 2, 3)) / m.sum()
    rgb = lambda model: model.mouth.sh[:, 0].detach() * 0.28209479177387814 + 0.5  # noqa: E731
    model = new_model(cfg_factory(), "mouth")
    assert not bool(model.mouth_color_initialised)
    fit_steps(model, loader)
    assert bool(model.mouth_color_initialised)
    torch.testing.assert_close(rgb(model), inner.expand(len(model.mouth), 3), atol=0.01, rtol=0)
    assert float(inner.mean()) < 0.35  # the synthetic inner mouth is dark: the colour did change
    model.mouth.set_colors(torch.tensor([0.9, 0.9, 0.9]))  # once only: a later batch does not reset it
    model._init_mouth_color(batch)
    assert float(rgb(model).min()) > 0.89
    off = new_model(cfg_factory("model.init_mouth_color=false"), "mouth")
    fit_steps(off, loader)
    assert not bool(off.mouth_color_initialised) and float((rgb(off).mean(0) - 0.5).abs().max()) < 0.05
    closed = dataclasses.replace(batch, mouth_mask=torch.zeros_like(batch.mouth_mask))
    fresh = new_model(cfg_factory(), "mouth")
    fresh._init_mouth_color(closed)
    assert not bool(fresh.mouth_color_initialised)


def _static_head_psnr(model, batch) -> float:
    """PSNR over the face ∪ hair pixels of frame 0 of the face branch's canonical (undeformed) render."""
    cond = model.head.conditioning(batch)
    H, W = batch.image.shape[-2:]
    with torch.no_grad():
        r = model.head.render_face(cond, 0, batch.viewmat[0], batch.K[0], W, H, deform=False)
    bg = batch.background[0].permute(1, 2, 0)
    pred, gt = r.image + (1 - r.alpha) * bg, batch.image[0].permute(1, 2, 0)
    m = (batch.face_mask[0, 0] | batch.hair_mask[0, 0]) & ~batch.mouth_mask[0, 0]
    return float(10 * torch.log10(1 / ((pred - gt)[m] ** 2).mean()))


def test_init_from_frame_puts_each_branch_on_its_frames_pixels_once(dm, cfg_factory):
    """init_from_frame: the first face-stage frame places the face Gaussians on its face ∪ hair pixels (their
    colours), so the canonical face renders that frame far better than the random initialisation; the mouth waits
    for a frame that shows the inner mouth and takes its dark colours; once per branch (flags in the checkpoint);
    off, nothing changes and the flags are not in the state dict."""
    dm.stage = "face"
    ds = dm.dataset("train")
    loader = DataLoader(Subset(ds, [0]), batch_size=1, collate_fn=collate_batches)
    batch = next(iter(loader))
    on, off = (new_model(cfg_factory(*ov), "face") for ov in (["model.init_from_frame=true"], []))
    random_psnr = _static_head_psnr(on, batch)
    fit_steps(on, loader)  # the real training step initialises, then steps once
    assert bool(on.face_points_initialised) and not bool(on.mouth_points_initialised)
    assert "face_points_initialised" in on.state_dict() and "face_points_initialised" not in off.state_dict()
    fresh = new_model(cfg_factory("model.init_from_frame=true"), "face")
    fresh._init_points_from_frame(batch, "face")
    placed = _static_head_psnr(fresh, batch)
    assert placed > random_psnr + 3.0, (placed, random_psnr)
    means = fresh.face.means.detach().clone()
    fresh._init_points_from_frame(next(iter(DataLoader(Subset(ds, [5]), batch_size=1, collate_fn=collate_batches))),
                                  "face")
    assert torch.equal(fresh.face.means, means)  # once only
    fit_steps(off, loader)
    assert _static_head_psnr(off, batch) < placed - 3.0
    dm.stage = "mouth"
    ds = dm.dataset("train")
    order = sorted(range(0, len(ds), 3), key=lambda i: float(ds[i].mouth_mask.sum()))
    closed = collate_batches([ds[order[0]]])
    opened = collate_batches([ds[order[-1]]])
    assert float(closed.mouth_mask.sum()) < 16 <= float(opened.mouth_mask.sum())
    mouth = new_model(cfg_factory("model.init_from_frame=true"), "mouth")
    mouth._init_points_from_frame(closed, "mouth")
    assert not bool(mouth.mouth_points_initialised)
    mouth._init_points_from_frame(opened, "mouth")
    assert bool(mouth.mouth_points_initialised) and bool(mouth.mouth_color_initialised)
    rgb = mouth.mouth.sh[:, 0].detach() * 0.28209479177387814 + 0.5
    m = opened.mouth_mask[0, 0]
    inner = opened.image[0].permute(1, 2, 0)[m]
    assert abs(float(rgb.mean()) - float(inner.mean())) < 0.05 and float(rgb.mean()) < 0.35  # the dark inner mouth
    with pytest.raises(Exception, match="init_from_frame_opacity must be in"):
        build_model(cfg_factory("model.init_from_frame_opacity=1.5"), "face")
    # init_mouth_back: a third of the mouth forms the cavity behind the lips with the darkest fifth's colour (hook)
    back = new_model(cfg_factory("model.init_from_frame=true", "model.init_mouth_back=0.3"), "mouth")
    back._init_points_from_frame(opened, "mouth")
    k = round(0.3 * len(back.mouth))
    rgb_b = back.mouth.sh[:, 0].detach() * 0.28209479177387814 + 0.5
    lum = inner @ torch.tensor([0.299, 0.587, 0.114])
    dark = inner[lum <= torch.quantile(lum, 0.2)].mean(0)
    torch.testing.assert_close(rgb_b[-k:], dark.expand(k, 3), atol=1e-5, rtol=0)
    cam = -opened.viewmat[0, :3, :3].T @ opened.viewmat[0, :3, 3]
    far = (back.mouth.means[-k:].detach() - cam).norm(dim=-1).mean()
    near = (mouth.mouth.means[-k:].detach() - cam).norm(dim=-1).mean()
    assert float(far - near) > 0.015  # 2 cm deeper than where their rays enter the mouth's ellipsoid
    with pytest.raises(Exception, match="init_mouth_back must be in"):
        build_model(cfg_factory("model.init_mouth_back=1.0"), "face")


def test_fuse_stage_trains_the_mouth_colours_on_the_inner_mouth_only(dm, cfg_factory):
    """render_frame(mouth_color_mask=M): the same composite, but the mouth branch's colours get gradients
    only from the pixels of M (fuse_mouth_grad=inner passes the ground-truth inner mouth); its positions and
    opacities, and the face, keep their full gradients."""
    model = new_model(cfg_factory(), "fuse")
    batch = val_batch(dm, 1)
    cond = model.head.conditioning(batch)
    H, W = batch.image.shape[-2:]
    bg = batch.background[0].permute(1, 2, 0)
    args = (cond, 0, batch.viewmat[0], batch.K[0], W, H, bg)
    half = torch.zeros(H, W, 1)
    half[: H // 2] = 1
    got = {}
    for name, mask in (("none", None), ("zeros", torch.zeros(H, W, 1)), ("half", half)):
        torch.manual_seed(0)
        image, alpha, _, _ = model.head.render_frame(*args, mouth_color_mask=mask)
        model.zero_grad(set_to_none=True)
        (image.sum() + alpha.sum()).backward()
        got[name] = {"image": image.detach(), "sh": model.mouth.sh.grad, "means": model.mouth.means.grad.clone(),
                     "opacity": model.mouth.opacity_logits.grad.clone(), "face": model.face.sh.grad.clone()}
    for name in ("zeros", "half"):
        torch.testing.assert_close(got[name]["image"], got["none"]["image"])  # same values
        for k in ("means", "opacity", "face"):  # geometry, opacity and the face learn as before
            torch.testing.assert_close(got[name][k], got["none"][k])
    assert got["zeros"]["sh"] is None or float(got["zeros"]["sh"].abs().max()) == 0.0
    sh_all, sh_half = (float(got[k]["sh"].abs().sum()) for k in ("none", "half"))
    assert sh_all > 0 and 0 < sh_half < sh_all
    assert model.fuse_mouth_grad == "all"  # the default; inner is an option
    with pytest.raises(Exception, match="fuse_mouth_grad must be 'inner' or 'all'"):
        build_model(cfg_factory("model.fuse_mouth_grad=some"), "fuse")


@pytest.mark.parametrize("random_bg", [True, False])
def test_face_stage_random_background(random_bg, dm, cfg_factory, monkeypatch):
    """face_random_background: the face stage composites the face and its target over a random colour (here
    fixed by a patch) instead of the frame's background; the logged L1 is that composite's."""
    model = new_model(cfg_factory(f"model.face_random_background={str(random_bg).lower()}"), "face")
    model.static_warmup = 5  # canonical Gaussians only: the render is deterministic
    color = torch.tensor([0.9, 0.1, 0.8])
    monkeypatch.setattr(model, "_random_color", lambda like: color.to(like))
    logged = {}
    monkeypatch.setattr(model, "log_dict", lambda d, **kw: logged.update(d))
    loader = train_loader(dm, "face", 1)
    batch = next(iter(loader))
    with torch.no_grad():
        cond = model.head.conditioning(batch)
        H, W = batch.image.shape[-2:]
        r = model.head.render_face(cond, 0, batch.viewmat[0], batch.K[0], W, H, deform=False)
    img, bg, m = model._targets(batch, 0)
    mask = torch.clamp(m("face_mask") + m("hair_mask"), 0, 1)
    behind = color.expand_as(bg) if random_bg else bg
    expected = ((r.image + (1 - r.alpha) * behind) - (img * mask + behind * (1 - mask))).abs().mean()
    fit_steps(model, loader)
    assert float(logged["train/l1"]) == pytest.approx(float(expected), rel=1e-4)


def test_lpips_term_in_the_fuse_stage(dm, cfg_factory, monkeypatch):
    model = new_model(cfg_factory("+model.lpips_weight=0.5", "+model.lpips_random_backbone=true"), "fuse")
    assert model._lpips_net and model._lpips_net[0].key == "lpips_randbackbone"
    assert not any("lpips" in k for k in model.state_dict())  # fixed weights stay out of checkpoints
    batch = val_batch(dm, 1)
    img = batch.image[0].permute(1, 2, 0)
    inner = batch.mouth_mask[0, 0][..., None].float()
    head = batch.face_mask[0, 0][..., None].float()
    lm = batch.landmarks[0] if batch.landmarks is not None else None
    same = model._perceptual(img, img, lm, inner, head, step=3)
    assert float(same) == pytest.approx(0.0, abs=1e-6)
    pred = img.clone().requires_grad_(True)
    noisy = (img + 0.2 * torch.randn(img.shape, generator=torch.Generator().manual_seed(0))).clamp(0, 1)
    d = model._perceptual(pred, noisy, lm, inner, head, step=3)
    assert float(d) > 0.01
    d.backward()
    assert pred.grad is not None and float(pred.grad.abs().sum()) > 0
    # the term is logged by a fuse training step
    logged = {}
    monkeypatch.setattr(model, "log_dict", lambda d, **kw: logged.update(d))
    fit_steps(model, train_loader(dm, "fuse", 2))
    assert "train/lpips" in logged and float(logged["train/lpips"]) > 0


def test_lpips_weight_without_the_backbone_file_fails_at_construction(cfg_factory, tmp_path, monkeypatch):
    from ua3dtalk.metrics.image import LPIPSWeightsError

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    with pytest.raises(Exception) as e:
        new_model(cfg_factory("+model.lpips_weight=0.5"), "fuse")
    err = e.value
    while not isinstance(err, LPIPSWeightsError) and err.__cause__ is not None:  # through Hydra's wrapper
        err = err.__cause__
    assert isinstance(err, LPIPSWeightsError) and "alexnet-owt-7be5be79.pth" in str(err)


def test_runaway_scale_offsets_do_not_reach_the_renderer_as_zero_scales(dm, cfg_factory):
    model = new_model(cfg_factory(), "face")
    batch = val_batch(dm, 1)
    H, W = batch.image.shape[-2:]
    g = model.face
    with torch.no_grad():
        out = model.head._render(g, g.means, g.quats, g.log_scales - 500.0, batch.viewmat[0], batch.K[0], W, H)
        assert bool(torch.isfinite(out.image).all())


def swap_model(cfg_factory, ds, weight: float = 1.0, frames: int = 8, *overrides: str) -> UA3DTalk:
    """A face-stage model with the emotion-swap term: prototypes for every label cell (random embeddings, as
    if the emotion stage had run), anchors and per-label anchors primed on 16 training frames (one frame
    per cell suffices here)."""
    model = new_model(cfg_factory("model.landmark_weight=1.0", f"model.landmark_frames={frames}",
                                  f"model.emotion_swap_weight={weight}", *overrides), "face")
    ctl = model.emotion_control
    g = torch.Generator().manual_seed(0)
    ctl.prototypes.copy_(torch.randn(ctl.prototypes.shape, generator=g))
    ctl.counts.fill_(10)
    prime = prime_batch(ds)
    model.landmark_anchors.min_frames = 1
    model.landmark_anchors.accumulate(prime.landmarks, prime.viewmat, prime.K, cells=model._cells(prime))
    assert int((model.landmark_anchors.cell_frames > 0).sum()) >= 2, "the fixture needs two labelled cells"
    return model


def banked_swap_model(cfg_factory, ds) -> UA3DTalk:
    """:func:`swap_model` (8 bank frames a step) with one primed batch already in the replay bank."""
    model = swap_model(cfg_factory, ds, 1.0, 8)
    with torch.no_grad():
        model._bank_add(prime := prime_batch(ds), model.head.conditioning(prime))
    return model


def one_step_grads(model, dm) -> dict:
    """The gradient of every parameter after one training step of the face stage (seed 1)."""
    torch.manual_seed(1)
    fit_steps(model, train_loader(dm, "face"), steps=1)
    return {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}


def test_emotion_swap_term_enters_the_loss_and_matches_its_definition(dm, cfg_factory, monkeypatch):
    """emotion_swap_weight 1 and 5 from the same state: the logged swap term is the same, > 0, and the losses
    differ by 4 × it; the frames' label cells go to the per-label anchors and the bank. The batched term
    equals its definition computed separately: for each bank frame with a ready label, another ready label's
    prototype replaces its emotion embedding, and the field's change at the anchors (projected) must equal
    the two labels' anchor offsets' difference."""
    dm.stage = "face"
    ds = dm.dataset("train")
    logs, models = {}, {}
    for w in (1.0, 5.0):
        torch.manual_seed(0)
        model = swap_model(cfg_factory, ds, w)
        logged = logs.setdefault(w, {})
        monkeypatch.setattr(model, "log_dict", lambda d, logged=logged, **kw: logged.update(d))
        torch.manual_seed(1)
        fit_steps(model, train_loader(dm, "face"), steps=2)
        models[w] = model
    swap = float(logs[1.0]["train/emotion_swap"])
    assert swap > 1e-5 and float(logs[5.0]["train/emotion_swap"]) == pytest.approx(swap, rel=1e-2)
    gap = float(logs[5.0]["train/loss"]) - float(logs[1.0]["train/loss"])
    assert gap == pytest.approx(4 * swap, rel=2e-2)
    model = models[1.0]
    batch = next(iter(train_loader(dm, "face")))
    assert int(model.landmark_anchors.cell_frames.sum()) == 16 + 4  # 16 primed + 2 steps × 2 frames
    torch.testing.assert_close(model._bank["cell"][:2], model._cells(batch))
    # the definition, on the whole bank, in eval mode (the full ensemble: deterministic)
    model.eval()
    x = model.landmark_anchors.anchors()
    b, n = model._bank, model._bank_n
    with torch.no_grad():
        torch.manual_seed(7)
        _, got = model._bank_landmark(x, step=10**6, width=128, height=128)
        torch.manual_seed(7)
        pick = torch.randperm(n)[:8]
        rows, emb, off = model._swap_plan(b["cell"][pick])
        assert len(rows) == n  # every bank frame has a ready label here

        def field(emotion, r):
            f = model.emotion_field(x, emotion)
            return model.deformation(x, audio=b["audio"][pick][r], blink=b["eye"][pick][r],
                                     content=b["content"][pick][r], style=b["style"][pick][r], emotion=f).deltas.xyz

        own = field(b["emotion"][pick][rows], rows)
        swapped = field(emb, rows)
        vm, K = b["viewmat"][pick][rows], b["K"][pick][rows]
        ref = (project(x[None] + swapped, vm, K) - project(x[None] + own + off, vm, K)).abs().mean() / 128
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-7)
    # the target label is never the frame's own, and always a ready one
    cells = torch.arange(model.landmark_anchors.n_cells)
    ready = model.landmark_anchors.cell_offsets()[1]
    for _ in range(20):
        plan = model._swap_plan(cells)
        target = [int(torch.nonzero((model.emotion_control.prototypes.view(len(cells), -1) == e).all(1))[0])
                  for e in plan[1]]
        own_cells = cells[plan[0]].tolist()
        assert all(t != o and bool(ready[t]) for t, o in zip(target, own_cells))
        assert set(own_cells) == set(torch.nonzero(ready)[:, 0].tolist())


def test_bank_frames_share_the_frames_plane_samples_with_the_same_gradients(dm, cfg_factory, monkeypatch):
    """The training step samples the plane fields at the landmark anchors together with the frame's
    Gaussians (``TalkingHead.co_sample``): the same gradients of every trained parameter as sampling them
    separately, with fewer plane samplings (each costs a zero-filled gradient of every plane)."""
    import ua3dtalk.models.fields as fields

    dm.stage = "face"
    ds = dm.dataset("train")
    real = fields.sample_planes
    grads, calls = {}, {}
    for co in (True, False):
        torch.manual_seed(0)
        model = banked_swap_model(cfg_factory, ds)
        if not co:
            monkeypatch.setattr(type(model.head), "co_sample", lambda self, points: contextlib.nullcontext())
        n = calls.setdefault(co, [])
        monkeypatch.setattr(fields, "sample_planes", lambda g, grid, *a, n=n: n.append(1) or real(g, grid, *a))
        grads[co] = one_step_grads(model, dm)
        monkeypatch.undo()
    assert grads[True].keys() == grads[False].keys()
    assert any(k.startswith("head.deformation.position_field.") for k in grads[True])
    assert any(k.startswith("head.emotion_field.planes.") for k in grads[True])
    for k in grads[True]:
        torch.testing.assert_close(grads[True][k], grads[False][k], rtol=1e-4, atol=1e-6, msg=k)
    assert len(calls[True]) < len(calls[False]), (len(calls[True]), len(calls[False]))


def test_swapped_copies_reuse_their_frames_views_with_the_same_gradients(dm, cfg_factory, monkeypatch):
    """The emotion-swapped copies of the bank frames differ from their frames in the emotion only: the training
    step evaluates the audio/content/style views once per bank frame (``frame_rows``). Every trained parameter
    gets the same gradient as with the copies' frame inputs repeated, and the frame views see fewer rows."""
    from ua3dtalk.models.deformation import DeformationNetwork

    dm.stage = "face"
    ds = dm.dataset("train")
    real = DeformationNetwork.forward

    def repeated(self, xyz, audio=None, blink=None, content=None, style=None, emotion=None, frame_rows=None, **kw):
        if frame_rows is not None:  # the reference: every output row gets its frame's inputs
            audio, blink, content, style = (None if t is None else t[frame_rows]
                                            for t in (audio, blink, content, style))
        return real(self, xyz, audio=audio, blink=blink, content=content, style=style, emotion=emotion, **kw)

    grads, rows = {}, {}
    for gathered in (True, False):
        torch.manual_seed(0)
        model = banked_swap_model(cfg_factory, ds)
        if not gathered:
            monkeypatch.setattr(DeformationNetwork, "forward", repeated)
        seen = rows.setdefault(gathered, [])
        model.deformation.fusion.blocks["audio"].register_forward_hook(lambda m, a, o, seen=seen: seen.append(
            o.mu.shape[0] * o.mu.shape[1]))
        logged = {}
        monkeypatch.setattr(model, "log_dict", lambda d, logged=logged, **kw: logged.update(d))
        grads[gathered] = one_step_grads(model, dm)
        assert float(logged["train/emotion_swap"]) > 0
        monkeypatch.undo()
    assert grads[True].keys() == grads[False].keys()
    assert any(k.startswith("head.deformation.fusion.blocks.audio.") for k in grads[True])
    for k in grads[True]:
        torch.testing.assert_close(grads[True][k], grads[False][k], rtol=1e-4, atol=1e-6, msg=k)
    assert sum(rows[True]) < sum(rows[False]), (rows[True], rows[False])


def test_emotion_swap_term_teaches_labels_their_expression(dm, cfg_factory, monkeypatch):
    """Gradient steps on the swap term alone (Adam on the emotion field and the deformation, full ensemble),
    with per-label offsets of a few millimetres (random, fixed): the field's label-swap response moves
    towards them — the term falls by 40 % (a wrong sign, a target that is not detached or a swap that
    does not reach the emotion view would not)."""
    dm.stage = "face"
    ds = dm.dataset("train")
    torch.manual_seed(0)
    model = swap_model(cfg_factory, ds, 1.0, 16)
    with torch.no_grad():
        model._bank_add(prime := prime_batch(ds), model.head.conditioning(prime))
    anchors = model.landmark_anchors
    ready = anchors.cell_offsets()[1]
    offsets = 0.004 * torch.randn(anchors.n_cells, len(anchors.indices), 3, generator=torch.Generator().manual_seed(2))
    monkeypatch.setattr(anchors, "cell_offsets", lambda *a, **k: (offsets * ready[:, None, None], ready))
    x = anchors.anchors()
    model.eval()  # the full ensemble: deterministic

    def swap_term() -> torch.Tensor:
        torch.manual_seed(3)  # the same frames and target labels every time
        return model._bank_landmark(x, step=10**6, width=128, height=128)[1]

    opt = torch.optim.Adam([*model.emotion_field.parameters(), *model.deformation.parameters()], lr=5e-3)
    before = float(swap_term())
    for _ in range(150):
        opt.zero_grad()
        swap_term().backward()
        opt.step()
    after = float(swap_term())
    assert after < 0.6 * before, (before, after)


def test_emotion_swap_needs_its_inputs_and_old_checkpoints_load(default_checkpoint, cfg_factory, tmp_path):
    """The swap term is refused without the landmark term, the bank or the emotion view (named); a
    checkpoint written before the per-label anchors loads, with empty per-label anchors."""
    with pytest.raises(Exception, match="landmark_frames > 0"):
        build_model(cfg_factory("model.landmark_weight=1.0", "model.landmark_frames=0",
                                "model.emotion_swap_weight=1.0"), "face")
    with pytest.raises(Exception, match="landmark_weight > 0"):
        build_model(cfg_factory("model.landmark_weight=0", "model.emotion_swap_weight=1.0"), "face")
    with pytest.raises(Exception, match="emotion_swap_weight must be ≥ 0"):
        build_model(cfg_factory("model.emotion_swap_weight=-1"), "face")
    model = new_model(cfg_factory("model.landmark_weight=1.0", "model.emotion_swap_weight=1.0"), "face")
    ck = torch.load(default_checkpoint, weights_only=True)
    for k in [k for k in ck["state_dict"] if k.startswith("landmark_anchors.cell_")]:
        del ck["state_dict"][k]  # as written before the per-label anchors existed
    old = tmp_path / "old.ckpt"
    torch.save(ck, old)
    model.landmark_anchors.cell_frames.fill_(3)
    load_model_checkpoint(model, old)
    assert int(model.landmark_anchors.cell_frames.sum()) == 0
    torch.testing.assert_close(model.landmark_anchors.ata, ck["state_dict"]["landmark_anchors.ata"])




def test_plane_gradients_reuse_last_steps_buffers_with_the_same_training(dm, cfg_factory, monkeypatch):
    """Each step's plane gradients are written into the previous step's buffers
    (``PlaneField.keep_grad_buffers``; a fresh buffer costs a page fault per 4 kB on a CPU): three steps give
    bit-for-bit the parameters of three steps with fresh buffers, and from the second step on every plane
    gradient lives where the previous one did."""
    from ua3dtalk.models.fields import PlaneField

    dm.stage = "face"
    ds = dm.dataset("train")
    states, ptrs = {}, {}
    for keep in (True, False):
        torch.manual_seed(0)
        model = banked_swap_model(cfg_factory, ds)
        if not keep:
            monkeypatch.setattr(PlaneField, "keep_grad_buffers", lambda self: 0)
        planes = {n: p for n, p in model.named_parameters() if ".grids." in n}
        assert any(n.startswith("head.deformation.position_field.") for n in planes)
        assert any(n.startswith("head.emotion_field.planes.") for n in planes)
        seen = ptrs.setdefault(keep, [])
        monkeypatch.setattr(type(model), "on_train_batch_end", lambda self, *a, seen=seen, planes=planes: seen.append(
            {n: p.grad.data_ptr() for n, p in planes.items() if p.grad is not None}))
        torch.manual_seed(1)
        fit_steps(model, train_loader(dm, "face"), steps=3)
        states[keep] = snapshot(model)
        monkeypatch.undo()
    for k, v in states[True].items():
        assert torch.equal(v, states[False][k]), k
    kept = ptrs[True]
    assert len(kept) == 3 and kept[0].keys() == set(kept[1]) == set(kept[2]) and len(kept[0]) >= 4
    assert kept[1] == kept[0] and kept[2] == kept[0]
