"""Training the evaluator networks on a dataset's ground truth (DESIGN §8).

``fit_expression_regressor`` / ``fit_landmark_regressor`` / ``fit_emotion_classifier`` train the
networks of :mod:`.evaluators` on a :class:`~.ground_truth.GroundTruth` (or a dataset path) with a
tqdm progress bar and report held-out (by clip, :func:`~.ground_truth.holdout_mask`) errors;
:class:`TrainConfig` holds the optimisation settings. Crops are float [B,3·in_frames,S,S] in [0,1].
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Optional, Sequence

import torch
from torch import nn
from tqdm.auto import tqdm

from ..utils.threads import torch_threads
from .evaluators import (
    EmotionClassifier,
    EmotionClassifierConfig,
    ExpressionRegressor,
    ExpressionRegressorConfig,
    LandmarkRegressor,
    LandmarkRegressorConfig,
    _CropEvaluator,
    _stack_index,
    _to_box,
    crop_faces,
    emotion_accuracy,
)
from .ground_truth import GroundTruth, holdout_mask, load_ground_truth
from .landmarks import lmd

__all__ = ["TrainConfig", "fit_expression_regressor", "fit_landmark_regressor", "fit_emotion_classifier"]


@dataclass
class TrainConfig:
    """Optimisation of the evaluator networks.

    epochs       passes over the training frames
    batch_size   crops per step
    lr           AdamW peak learning rate (one-cycle schedule)
    weight_decay AdamW weight decay
    jitter       box augmentation: random shift and scale change, as a fraction of the box side
    color_jitter random per-crop brightness/contrast change (fraction)
    val_fraction clips held out (see :func:`holdout_mask`); ignored when ``val_clips`` is given
    val_clips    clip ids held out
    seed         initialisation, sampling, augmentation and dropout seed
    progress     show a tqdm bar
    num_threads  torch intra-op threads while training (restored afterwards); these nets are tiny and one
                 thread is ~10× faster than contended threads on a loaded machine; None keeps the setting
    """

    epochs: int = 30
    batch_size: int = 64
    lr: float = 2e-3
    weight_decay: float = 1e-4
    jitter: float = 0.05
    color_jitter: float = 0.1
    val_fraction: float = 0.2
    val_clips: Optional[list] = None
    seed: int = 0
    progress: bool = True
    num_threads: Optional[int] = 1


def _augment_boxes(boxes: torch.Tensor, jitter: float, g: torch.Generator) -> torch.Tensor:
    if jitter <= 0:
        return boxes
    side = boxes[:, 2:3] - boxes[:, 0:1]
    c = 0.5 * (boxes[:, :2] + boxes[:, 2:])
    c = c + (torch.rand(c.shape, generator=g) * 2 - 1) * jitter * side
    half = 0.5 * side * (1 + (torch.rand(side.shape, generator=g) * 2 - 1) * jitter)
    return torch.cat([c - half, c + half], -1)


def _color_jitter(x: torch.Tensor, amount: float, g: torch.Generator) -> torch.Tensor:
    if amount <= 0:
        return x
    B = x.shape[0]
    gain = 1 + (torch.rand(B, 1, 1, 1, generator=g) * 2 - 1) * amount
    bias = (torch.rand(B, 1, 1, 1, generator=g) * 2 - 1) * amount * 0.5
    return (x * gain + bias).clamp(0, 1)


def _train(model: _CropEvaluator, gt: GroundTruth, train_idx: torch.Tensor, loss_fn, tc: TrainConfig, desc: str):
    """Generic loop: random batches of training frames, augmented boxes, ``loss_fn(model, crops, idx,
    boxes)``; AdamW + one-cycle."""
    # dropout draws from torch's global generator: seed it here (and restore the caller's state after), so a
    # fit depends on its TrainConfig alone, not on what the process drew before
    dev = model.device
    cuda = [dev.index if dev.index is not None else torch.cuda.current_device()] if dev.type == "cuda" else []
    with torch_threads(tc.num_threads), torch.random.fork_rng(devices=cuda):
        torch.manual_seed(tc.seed + 2)
        return _train_loop(model, gt, train_idx, loss_fn, tc, desc)


def _train_loop(model, gt, train_idx, loss_fn, tc: TrainConfig, desc: str):
    if train_idx.numel() == 0:
        raise ValueError(f"{desc}: no training frames (every clip is held out)")
    g = torch.Generator().manual_seed(tc.seed + 1)
    steps_per_epoch = max(1, math.ceil(train_idx.numel() / tc.batch_size))
    total = tc.epochs * steps_per_epoch
    opt = torch.optim.AdamW(model.parameters(), lr=tc.lr, weight_decay=tc.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=tc.lr, total_steps=max(total, 1), pct_start=0.15)
    boxes_all = gt.boxes(model.config.box_scale)
    T = model.config.in_frames
    stack = _stack_index(gt.clip, T) if T > 1 else None
    model.train()
    bar = tqdm(total=total, desc=desc, unit="step", disable=not tc.progress, leave=False)
    loss_ema = None
    for _ in range(tc.epochs):
        perm = train_idx[torch.randperm(train_idx.numel(), generator=g)]
        for s in range(steps_per_epoch):
            idx = perm[s * tc.batch_size:(s + 1) * tc.batch_size]
            if idx.numel() < 2:
                continue
            boxes = _augment_boxes(boxes_all[idx], tc.jitter, g)
            if stack is None:
                crops = crop_faces(gt.images(idx), boxes, model.config.crop_size)
            else:
                nb = stack[idx]  # [B,T] neighbours, all cropped with the centre frame's jittered box
                fr = gt.images(nb.flatten())
                crops = crop_faces(fr, boxes.repeat_interleave(T, 0), model.config.crop_size)
                crops = crops.view(idx.numel(), T * 3, *crops.shape[-2:])
            crops = _color_jitter(crops, tc.color_jitter, g)
            loss = loss_fn(model, crops.to(model.device), idx, boxes)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            loss = loss.detach()
            loss_ema = float(loss) if loss_ema is None else 0.9 * loss_ema + 0.1 * float(loss)
            bar.update(1)
            bar.set_postfix(loss=f"{loss_ema:.4f}")
    bar.close()
    model.eval()
    return loss_ema


def _seeded(cls, config, seed: int):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return cls(config)


def _split(gt: GroundTruth, tc: TrainConfig):
    val = holdout_mask(gt, val_fraction=tc.val_fraction, val_clips=tc.val_clips)
    return (~val).nonzero().flatten(), val.nonzero().flatten()


def fit_expression_regressor(data, config: Optional[ExpressionRegressorConfig] = None,
                             train: Optional[TrainConfig] = None, names: Optional[Sequence[str]] = None
                             ) -> tuple[ExpressionRegressor, dict]:
    """Train an :class:`ExpressionRegressor` on the ``expr.npy`` targets of a dataset.

    Args:
        data: dataset path / loaded dataset / :class:`GroundTruth`.
        config: architecture; ``out_dim`` and the target statistics are set from the data.
        train: optimisation settings.
        names: coefficient names stored in the config (default: ``expr_<k>``).
    Returns:
        (model in eval mode, report) with held-out ``val_rmse`` (coefficient units), ``val_r2`` (mean
        coefficient of determination over coefficients), per-coefficient ``val_r2_per_coef``,
        ``train_frames`` / ``val_frames``.
    """
    gt = load_ground_truth(data, progress=(train or TrainConfig()).progress)
    tc = train or TrainConfig()
    if gt.expr is None:
        raise ValueError("fit_expression_regressor: the dataset has no expr.npy (expression targets)")
    tr, va = _split(gt, tc)
    y = gt.expr
    mean, std = y[tr].mean(0), y[tr].std(0).clamp_min(1e-4)
    cfg = config or ExpressionRegressorConfig()
    cfg = ExpressionRegressorConfig(**{**asdict(cfg), "out_dim": y.shape[1],
                                       "names": list(names) if names is not None else (cfg.names or [
                                           f"expr_{k}" for k in range(y.shape[1])]),
                                       "target_mean": mean.tolist(), "target_std": std.tolist()})
    model = _seeded(ExpressionRegressor, cfg, tc.seed)
    yn = (y - mean) / std

    def loss_fn(m, crops, idx, boxes):
        return nn.functional.mse_loss(m(crops), yn[idx].to(crops.device))

    _train(model, gt, tr, loss_fn, tc, "fit expression regressor")
    report = {"train_frames": int(tr.numel()), "val_frames": int(va.numel())}
    if va.numel():
        pred = model.extract(gt.images(va), gt.boxes(cfg.box_scale)[va], gt.clip[va])
        err = pred - y[va]
        var = y[va].var(0, unbiased=False).clamp_min(1e-8)
        r2 = 1 - (err ** 2).mean(0) / var
        report.update(val_rmse=float(err.pow(2).mean().sqrt()), val_r2=float(r2.mean()),
                      val_r2_per_coef=dict(zip(cfg.names, r2.tolist())))
    return model, report


def fit_landmark_regressor(data, config: Optional[LandmarkRegressorConfig] = None,
                           train: Optional[TrainConfig] = None) -> tuple[LandmarkRegressor, dict]:
    """Train a :class:`LandmarkRegressor` on the ``.lms`` landmarks of a dataset.

    Returns:
        (model, report) with held-out ``val_px_error`` (mean per-point L2 distance in pixels),
        ``val_px_error_mouth`` (points 48-67), ``val_lmd`` (mean-centred mouth LMD against the ground
        truth, i.e. the LMD floor of this detector) and the frame counts.
    """
    gt = load_ground_truth(data, progress=(train or TrainConfig()).progress)
    tc = train or TrainConfig()
    tr, va = _split(gt, tc)
    cfg = config or LandmarkRegressorConfig()
    rel = _to_box(gt.landmarks[tr], gt.boxes(cfg.box_scale)[tr]).reshape(tr.numel(), -1)
    mean, std = rel.mean(0), rel.std(0).clamp_min(1e-4)
    cfg = LandmarkRegressorConfig(**{**asdict(cfg), "target_mean": mean.tolist(), "target_std": std.tolist()})
    model = _seeded(LandmarkRegressor, cfg, tc.seed)

    def loss_fn(m, crops, idx, boxes):
        target = (_to_box(gt.landmarks[idx], boxes).reshape(idx.numel(), -1) - mean) / std
        return nn.functional.smooth_l1_loss(m(crops), target.to(crops.device), beta=0.5)

    _train(model, gt, tr, loss_fn, tc, "fit landmark regressor")
    report = {"train_frames": int(tr.numel()), "val_frames": int(va.numel())}
    if va.numel():
        pred = model.predict(gt.images(va), gt.boxes(cfg.box_scale)[va])
        d = torch.linalg.vector_norm(pred - gt.landmarks[va], dim=-1)
        report.update(val_px_error=float(d.mean()), val_px_error_mouth=float(d[:, 48:].mean()),
                      val_lmd=lmd(pred, gt.landmarks[va]), val_flmd=lmd(pred, gt.landmarks[va], region="face"))
    return model, report


def fit_emotion_classifier(data, config: Optional[EmotionClassifierConfig] = None,
                           train: Optional[TrainConfig] = None) -> tuple[EmotionClassifier, dict]:
    """Train an :class:`EmotionClassifier` on the ``emotion.json`` labels of an emotional dataset.

    Returns:
        (model, report) with held-out-clip ``val_acc`` (frames), ``val_acc_clip`` (clips, mean softmax),
        ``chance`` (1 / number of classes present) and the frame counts.
    """
    gt = load_ground_truth(data, progress=(train or TrainConfig()).progress)
    tc = train or TrainConfig()
    if bool((gt.emotion < 0).any()):
        raise ValueError("fit_emotion_classifier: every clip needs an emotion label (emotion.json)")
    cfg = config or EmotionClassifierConfig()
    if int(gt.emotion.max()) >= len(cfg.class_names):
        raise ValueError(f"fit_emotion_classifier: label {int(gt.emotion.max())} outside class_names {cfg.class_names}")
    tr, va = _split(gt, tc)
    model = _seeded(EmotionClassifier, cfg, tc.seed)

    def loss_fn(m, crops, idx, boxes):
        return nn.functional.cross_entropy(m(crops), gt.emotion[idx].to(crops.device), label_smoothing=0.05)

    _train(model, gt, tr, loss_fn, tc, "fit emotion classifier")
    report = {"train_frames": int(tr.numel()), "val_frames": int(va.numel()),
              "chance": 1.0 / max(1, len(torch.unique(gt.emotion)))}
    if va.numel():
        acc = emotion_accuracy(model, gt.images(va), gt.boxes(cfg.box_scale)[va], gt.emotion[va], gt.clip[va])
        report.update(val_acc=acc["acc_emo"], val_acc_clip=acc["acc_emo_clip"])
    return model, report
