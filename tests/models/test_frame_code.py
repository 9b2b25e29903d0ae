"""``model.frame_code=expression`` (★): the face deformation's eye input is the brow, eye and lip-corner coefficients
of the dataset's ``expr.npy``, standardised with the training frames' statistics — so an expression the audio does
not predict reaches the deformation (docs/history/2026-12-06-expressive-face.md). The tests check the code is what
the design says, that it changes the face (and that with ``frame_code=blink`` the same coefficients change nothing),
that it trains, and that every misuse is refused with a message naming the key."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from ua3dtalk.cli.infer import check_expression
from ua3dtalk.cli.train import build_datamodule, build_model, compose, fill_data_info
from ua3dtalk.data.batch import collate_batches
from ua3dtalk.data.predict import read_expression_track
from ua3dtalk.metrics.landmarks import LANDMARK_EXPR_NAMES
from ua3dtalk.models.talking_head import EXPRESSION_CODE, expression_columns

K = len(LANDMARK_EXPR_NAMES)
CODE = ["model.frame_code=expression", "model.deformation.blink_dim=6"]


@pytest.fixture(autouse=True)
def _single_thread(one_thread):
    yield


@pytest.fixture(scope="module")
def dm(synth_emotional_small, tmp_path_factory):
    cfg = compose(["experiment=smoke", f"data.root={synth_emotional_small}",
                   f"paths.run_dir={tmp_path_factory.mktemp('run')}", "data.limit_val_frames=4"])
    return build_datamodule(cfg)


def model_of(dm, root, tmp_path, *overrides, stage="face"):
    cfg = compose(["experiment=smoke", f"data.root={root}", f"paths.run_dir={tmp_path / 'run'}",
                   "data.limit_val_frames=4", *overrides])
    fill_data_info(cfg, dm)
    torch.manual_seed(0)
    m = build_model(cfg, stage)
    m.static_warmup = 0
    return m


def rows(n: int, seed: int = 0) -> torch.Tensor:
    """``n`` rows of a landmark expression (11 coefficients of realistic size and spread)."""
    g = torch.Generator().manual_seed(seed)
    return 0.4 + 0.05 * torch.randn(n, K, generator=g)


class WithExpr(Dataset):
    """A frame dataset whose frames carry an 11-coefficient landmark expression (the synthetic set's ``expr.npy``
    has the generator's own coefficients)."""

    def __init__(self, ds, expr):
        self.ds, self.expr = ds, expr

    def __len__(self):
        return len(self.expr)

    def __getitem__(self, i):
        return dataclasses.replace(self.ds[i], expr=self.expr[i:i + 1].float())


def test_the_code_is_the_standardised_expression_columns_and_moves_the_face(dm, synth_emotional_small, tmp_path):
    assert [LANDMARK_EXPR_NAMES[c] for c in expression_columns()] == list(EXPRESSION_CODE)
    assert "mouth_open" not in EXPRESSION_CODE and "jaw_drop" not in EXPRESSION_CODE  # the speech stays with the audio
    model = model_of(dm, synth_emotional_small, tmp_path, *CODE)
    train = rows(200)
    model.head.set_code_statistics(train)
    cols = train[:, expression_columns()].double()
    torch.testing.assert_close(model.head.code_mean, cols.mean(0).float())
    torch.testing.assert_close(model.head.code_std, cols.std(0).float())
    dm.stage = "fuse"
    ds = dm.frame_dataset("val")
    e = rows(2, seed=1)
    b = collate_batches([dataclasses.replace(ds[0], expr=e[i:i + 1]) for i in range(2)])
    model.eval()
    cond = model.head.conditioning(b)
    want = (e[:, expression_columns()] - model.head.code_mean) / model.head.code_std
    torch.testing.assert_close(cond.code, want)
    assert cond.face_eye().shape == (2, len(EXPRESSION_CODE))
    W, H = b.width, b.height
    with torch.no_grad():
        r0 = model.head.render_face(cond, 0, b.viewmat[0], b.K[0], W, H)
        r1 = model.head.render_face(cond, 1, b.viewmat[0], b.K[0], W, H)  # same camera and audio, other code
    # the expression reaches the offsets (at initialisation the eye input is 6 of the audio view's 38 channels)
    assert (r0.deltas.xyz - r1.deltas.xyz).abs().max() > 1e-3 * r0.deltas.xyz.abs().max()
    # without expr outside training: the training average (code 0); with frame_code=blink the same coefficients
    # change nothing
    cond0 = model.head.conditioning(dataclasses.replace(b, expr=None))
    assert torch.equal(cond0.code, torch.zeros(2, len(EXPRESSION_CODE)))
    blink = model_of(dm, synth_emotional_small, tmp_path)
    blink.eval()
    assert blink.head.conditioning(b).code is None
    with torch.no_grad():
        c = blink.head.conditioning(b)
        d0 = blink.head.render_face(c, 0, b.viewmat[0], b.K[0], W, H).deltas.xyz
        c.blink = c.blink.flip(0)
        b2 = dataclasses.replace(b, expr=e.flip(0))
        c2 = blink.head.conditioning(b2)
        assert torch.equal(blink.head.render_face(c2, 0, b.viewmat[0], b.K[0], W, H).deltas.xyz, d0)


def test_the_code_trains_and_is_kept_in_the_checkpoint(dm, synth_emotional_small, tmp_path):
    import lightning as L

    model = model_of(dm, synth_emotional_small, tmp_path, *CODE)
    dm.stage = "face"
    ds = dm.frame_dataset("train")
    expr = rows(len(ds), seed=2)
    model.head.set_code_statistics(expr)
    eye = model.deformation.audio_view.eye_proj.weight.detach().clone()
    loader = DataLoader(WithExpr(ds, expr[:2]), batch_size=2, collate_fn=collate_batches)
    trainer = L.Trainer(max_steps=2 * len(model._optimizers_for_stage()), accelerator="cpu", devices=1, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        num_sanity_val_steps=0, limit_val_batches=0)
    trainer.fit(model, train_dataloaders=loader)
    assert not torch.equal(model.deformation.audio_view.eye_proj.weight, eye)  # the expression input learns
    sd = model.state_dict()
    assert bool(sd["head.code_ready"]) and torch.equal(sd["head.code_mean"], model.head.code_mean)
    # a training frame without expression coefficients is refused, naming the key
    model.train()
    b = collate_batches([ds[0]])
    with pytest.raises(ValueError, match="frame_code=expression"):
        model.head.conditioning(dataclasses.replace(b, expr=None))


def test_misuse_is_refused_naming_the_key(dm, synth_emotional_small, tmp_path):
    with pytest.raises(Exception, match="blink_dim=6"):  # hydra wraps the ValueError
        model_of(dm, synth_emotional_small, tmp_path, "model.frame_code=expression")
    with pytest.raises(Exception, match="frame_code"):
        model_of(dm, synth_emotional_small, tmp_path, "model.frame_code=smile")
    model = model_of(dm, synth_emotional_small, tmp_path, *CODE)
    # the synthetic set's expr.npy holds the generator's coefficients, not the landmark expression
    train = dm.train_expr()
    assert train is not None and len(train) == len(dm.split_index["train"])  # held-out frames are not in it
    assert train.shape[1] != K
    with pytest.raises(ValueError, match="frame_code=expression needs expr.npy with the 11 landmark"):
        model.head.set_code_statistics(torch.as_tensor(train))
    model.eval()
    dm.stage = "fuse"
    b = collate_batches([dataclasses.replace(dm.frame_dataset("val")[0], expr=rows(1))])
    with pytest.raises(RuntimeError, match="statistics are not set"):
        model.head.conditioning(b)
    # inference: expression= only for such a checkpoint, and only an expr.npy of the landmark expression
    blink = model_of(dm, synth_emotional_small, tmp_path)
    good = tmp_path / "expr.npy"
    np.save(good, rows(30).numpy())
    with pytest.raises(ValueError, match="frame_code=blink"):
        check_expression(blink, good)
    check_expression(model, good)
    wrong = tmp_path / "expr5.npy"
    np.save(wrong, np.zeros((30, 5), np.float32))
    with pytest.raises(ValueError, match="expr5.npy: expected the 11"):
        check_expression(model, wrong)
    for bad, msg in ((tmp_path / "none.npy", "no such file"), (tmp_path / "text.npy", "not a readable"),
                     (tmp_path / "vec.npy", r"\[frames, coefficients\]")):
        if bad.name == "text.npy":
            bad.write_text("frame, AU45_r\n1, 0.2\n")
        elif bad.name == "vec.npy":
            np.save(bad, np.zeros(7))
        with pytest.raises(ValueError, match=msg):
            read_expression_track(bad)


def test_a_blink_model_keeps_its_state_dict_keys(dm, synth_emotional_small, tmp_path):
    """Checkpoints written before frame_code existed load: a ``blink`` model has no code buffers."""
    blink = model_of(dm, synth_emotional_small, tmp_path)
    assert not [k for k in blink.state_dict() if k.startswith("head.code_")]
    with pytest.raises(ValueError, match="frame_code=blink"):
        blink.head.set_code_statistics(rows(10))
    code = model_of(dm, synth_emotional_small, tmp_path, *CODE)
    assert {k for k in code.state_dict() if k.startswith("head.code_")} == {"head.code_mean", "head.code_std",
                                                                             "head.code_ready"}


def test_a_landmark_bank_of_an_older_checkpoint_is_upgraded(dm, synth_emotional_small, tmp_path):
    """The replay bank stores the face's eye input (``eye [n, blink_dim]``); banks saved before held ``blink [n]``."""
    from ua3dtalk.models.module import CHECKPOINT_VERSION

    model = model_of(dm, synth_emotional_small, tmp_path)
    blink = torch.tensor([0.0, 0.5, 1.0])
    ck = {"ua3dtalk": {"version": CHECKPOINT_VERSION},
          "ua3dtalk_landmark_bank": {"seen": 3, "n": 3, "rows": {"blink": blink, "K": torch.eye(3).repeat(3, 1, 1)}}}
    model.on_load_checkpoint(ck)
    assert set(model._bank) == {"eye", "K"} and torch.equal(model._bank["eye"], blink[:, None])
