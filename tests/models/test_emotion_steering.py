"""Emotion you can steer (issue 15 item 4; DESIGN §4.3–4.4), at the level of the LightningModule and the CLI:

* the label prototypes at the end of the emotion stage are the exact eval-mode means of the *final* student
  over the training frames (``UA3DTalk.on_train_end``), flagged ``emotion_control.recomputed`` in the
  checkpoint — also when a run is resumed from a checkpoint taken after the stage's last step;
* the prior's L_recon leaves out the expression coefficients the dataset marks emotional (``recon_dims:
  auto`` in the experiment configs, ``data_info.emotional_expr_dims`` from ``synth.json``), and keeps all of
  them for a dataset that does not say.

Models are built as ``ua3dtalk-train`` builds them (``experiment=smoke`` on the ``synth_emotional_small``
fixture), trained for a step or two on CPU.
"""
from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader, Subset

from ua3dtalk.callbacks.checkpoint import load_model_checkpoint, read_checkpoint
from ua3dtalk.cli.train import SimulatedInterruption, build_datamodule, build_model, compose, fill_data_info, run
from ua3dtalk.data.batch import collate_batches
from ua3dtalk.data.expr_semantics import emotional_expr_columns
from ua3dtalk.data.synth.head import EXPR_NAMES
from ua3dtalk.data.synth.speech import EMOTIONAL_EXPR

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::DeprecationWarning")

TINY = ["scale=tiny", "trainer.enable_progress_bar=false", "+trainer.enable_model_summary=false", "callbacks=none"]
EMOTIONAL_COLUMNS = [EXPR_NAMES.index(n) for n in EMOTIONAL_EXPR]


@pytest.fixture(autouse=True)
def _single_thread(one_thread):
    yield


def make_cfg(root: Path, run_dir: Path, *overrides: str, dm=None):
    cfg = compose(["experiment=smoke", f"data.root={root}", f"paths.run_dir={run_dir}", "data.limit_val_frames=4",
                   *overrides])
    if dm is not None:
        fill_data_info(cfg, dm)
    return cfg


@pytest.fixture(scope="module")
def dm(synth_emotional_small, tmp_path_factory):
    dm = build_datamodule(make_cfg(synth_emotional_small, tmp_path_factory.mktemp("dm_run")))
    dm.stage = "emotion"
    return dm


@pytest.fixture
def cfg_factory(dm, synth_emotional_small, tmp_path):
    return lambda *ov: make_cfg(synth_emotional_small, tmp_path / "run", *ov, dm=dm)


def eval_means(model, batches, n_cells: int = 24) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference: the mean eval-mode student embedding per (emotion, level) cell, and the counts."""
    student = model.emotion.encoder
    was = student.training
    student.eval()
    sums, n = torch.zeros(n_cells, 128, dtype=torch.float64), torch.zeros(n_cells, dtype=torch.long)
    with torch.no_grad():
        for b in batches:
            e = student(w2v=b.context).embedding.double()
            ok = (b.emotion >= 0) & (b.intensity >= 1)
            cell = b.emotion[ok] * 3 + b.intensity[ok] - 1
            sums.index_add_(0, cell, e[ok])
            n += torch.bincount(cell, minlength=n_cells)
    student.train(was)
    return (sums / n.clamp_min(1)[:, None]).float().view(8, 3, 128), n.view(8, 3)


class Capture(L.Callback):
    """The prototypes as they are when training ends, before the module's own on_train_end (callbacks run first)."""

    def on_train_end(self, trainer, pl_module):
        ctl = pl_module.emotion_control
        self.running = ctl.prototypes.clone()
        self.flag = bool(ctl.recomputed)


def test_emotion_stage_ends_with_the_final_students_eval_mode_prototypes(dm, cfg_factory):
    """After ``fit`` of the emotion stage the prototypes are the exact eval-mode means of the final student over
    the training loader (one pass), not the running means of training-mode embeddings of earlier students."""
    model = build_model(cfg_factory(), "emotion")
    ds = dm.audio_dataset("train")
    idx = list(range(0, len(ds), max(1, len(ds) // 24)))[:24]
    loader = DataLoader(Subset(ds, idx), batch_size=12, collate_fn=collate_batches)
    cap = Capture()
    trainer = L.Trainer(max_steps=2, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                        limit_val_batches=0, callbacks=[cap])
    trainer.fit(model, train_dataloaders=loader)
    ctl = model.emotion_control
    assert not cap.flag and bool(ctl.recomputed)
    want, counts = eval_means(model, loader)
    assert torch.equal(ctl.counts, counts) and int(counts.sum()) == len(idx)
    torch.testing.assert_close(ctl.prototypes, want, rtol=1e-5, atol=1e-6)
    seen = counts > 0
    assert not torch.allclose(cap.running[seen], want[seen], atol=1e-4)  # the running means were something else
    assert model.emotion.training  # the student's mode is restored


def test_recompute_over_the_datamodule_and_checkpoints(dm, cfg_factory, tmp_path):
    """With the DataModule: every training frame of the split exactly once; the flag and the prototypes
    survive a checkpoint; a checkpoint from before the flag loads with ``recomputed = False``."""
    model = build_model(cfg_factory(), "emotion")
    model.emotion_control.update_prototypes(torch.ones(2, 128), torch.tensor([0, 1]), torch.tensor([1, 1]))
    n = model.recompute_emotion_prototypes(dm)
    ds = dm.audio_dataset("train")
    assert n == len(ds) == int(model.emotion_control.counts.sum())
    want, counts = eval_means(model, DataLoader(ds, batch_size=64, collate_fn=collate_batches))
    assert torch.equal(model.emotion_control.counts, counts)
    torch.testing.assert_close(model.emotion_control.prototypes, want, rtol=1e-5, atol=1e-6)
    trainer = L.Trainer(max_steps=0, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)
    trainer.strategy.connect(model)
    path = tmp_path / "m.ckpt"
    trainer.save_checkpoint(path, weights_only=True)
    ck = read_checkpoint(path)
    assert bool(ck["state_dict"]["head.emotion_control.recomputed"])
    fresh = build_model(cfg_factory(), "face")
    load_model_checkpoint(fresh, path)
    assert bool(fresh.emotion_control.recomputed)
    torch.testing.assert_close(fresh.emotion_control.prototypes, model.emotion_control.prototypes)
    del ck["state_dict"]["head.emotion_control.recomputed"]  # as written before the flag existed
    old = tmp_path / "old.ckpt"
    torch.save(ck, old)
    load_model_checkpoint(fresh, old)
    assert not bool(fresh.emotion_control.recomputed)


def test_emotion_stage_resumed_after_its_last_step_still_recomputes(synth_emotional_small, tmp_path):
    """A run interrupted right after the checkpoint of the emotion stage's last step (before on_train_end):
    the resumed run has nothing left to fit, and the CLI recomputes the prototypes — the same ones as an
    uninterrupted run."""
    base = ["experiment=smoke", *TINY, f"data.root={synth_emotional_small}", "stages=[emotion]",
            "stage_steps.emotion=2", "checkpoint_every=1"]
    d = tmp_path / "b"
    with pytest.raises(SimulatedInterruption):
        run(compose(base + [f"paths.run_dir={d}", "interrupt_at={stage: emotion, step: 2}"]))
    last = d / "checkpoints" / "emotion" / "last.ckpt"
    mid = read_checkpoint(last)
    assert mid["global_step"] == 2 and not bool(mid["state_dict"]["head.emotion_control.recomputed"])
    run(compose(base + [f"paths.run_dir={d}", "resume=true"]))
    resumed = read_checkpoint(last)["state_dict"]
    assert bool(resumed["head.emotion_control.recomputed"])
    run(compose(base + [f"paths.run_dir={tmp_path / 'a'}"]))
    straight = read_checkpoint(tmp_path / "a" / "checkpoints" / "emotion" / "last.ckpt")["state_dict"]
    assert bool(straight["head.emotion_control.recomputed"])
    assert torch.equal(straight["head.emotion_control.counts"], resumed["head.emotion_control.counts"])
    torch.testing.assert_close(straight["head.emotion_control.prototypes"], resumed["head.emotion_control.prototypes"])


# --------------------------------------------------------------------------------------------------
# the prior's L_recon columns from the dataset
# --------------------------------------------------------------------------------------------------


def test_prior_recon_dims_follow_what_the_dataset_says(dm, cfg_factory):
    assert emotional_expr_columns(dm.clips) == EMOTIONAL_COLUMNS
    cfg = cfg_factory()
    assert list(cfg.data_info.emotional_expr_dims) == EMOTIONAL_COLUMNS
    prior = build_model(cfg, "prior").prior
    assert prior.recon_mode == "non_emotional"
    assert prior.recon_dims == tuple(i for i in range(len(EXPR_NAMES)) if i not in EMOTIONAL_COLUMNS)
    assert {EXPR_NAMES[i] for i in prior.recon_dims} == {"jaw_open", "lip_round", "lip_spread", "eye_open"}
    assert build_model(cfg_factory("model.prior.recon_dims=all"), "prior").prior.recon_dims == \
        tuple(range(len(EXPR_NAMES)))
    # a dataset that does not say which coefficients are emotional (real video, MEAD): all of them
    cfg.data_info.emotional_expr_dims = None
    prior = build_model(cfg, "prior").prior
    assert prior.recon_mode == "all" and prior.recon_dims == tuple(range(len(EXPR_NAMES)))
    cfg = cfg_factory("model.prior.recon_dims=non_emotional")
    cfg.data_info.emotional_expr_dims = None
    with pytest.raises(Exception, match="needs emotional_dims"):
        build_model(cfg, "prior")


def test_emotional_expr_columns_sources(tmp_path):
    """synth.json's explicit ``expr_emotional``; else the generator's labelling for ua3dtalk-synth; else (no
    synth.json, another generator, clips that disagree, no expr.npy) unknown."""
    def clip(name: str, meta, expr: bool = True):
        root = tmp_path / name
        root.mkdir()
        if meta is not None:
            (root / "synth.json").write_text(json.dumps(meta))
        return SimpleNamespace(root=root, available=frozenset({"expr"} if expr else ()))

    names = ["jaw_open", "smile", "brow_lower", "eye_open"]
    explicit = clip("a", {"generator": "other", "expr_names": names, "expr_emotional": ["brow_lower"]})
    assert emotional_expr_columns([explicit]) == [2]
    legacy = clip("b", {"generator": "ua3dtalk-synth", "expr_names": names})
    assert emotional_expr_columns([legacy]) == [1, 2]
    assert emotional_expr_columns([legacy, clip("c", {"generator": "ua3dtalk-synth", "expr_names": names})]) == [1, 2]
    assert emotional_expr_columns([explicit, legacy]) is None  # the clips disagree
    assert emotional_expr_columns([clip("d", {"generator": "other", "expr_names": names})]) is None
    assert emotional_expr_columns([clip("e", None)]) is None
    assert emotional_expr_columns([clip("f", {"generator": "ua3dtalk-synth", "expr_names": names}, expr=False)]) is None
    assert emotional_expr_columns([clip("g", {"expr_names": names, "expr_emotional": ["nose"]})]) is None
    (tmp_path / "h").mkdir()
    (tmp_path / "h" / "synth.json").write_text("{not json")
    assert emotional_expr_columns([SimpleNamespace(root=tmp_path / "h", available=frozenset({"expr"}))]) is None
