"""``ua3dtalk-teacher``: train the emotion teacher on an emotional dataset and save it (DESIGN §4.4).

    ua3dtalk-teacher --data DATASET_DIR --out DIR [--epochs 20] [--batch-size 64] [--lr 1e-3] [--seed 0]
                     [--feature wav2vec2] [--extractor-model M] [--threads 1] [--device auto] [--force]
                     [--no-progress]
                     [--val-fraction 0.1 --test-fraction 0.1 --evaluator-fraction 0.0 --split-seed 0]

e.g. ``ua3dtalk-teacher --data data/mead/M003 --out data/teachers/emotion_mead``: the teacher that
``experiment=paper_hdtf`` reads (``model.emotion.teacher_path``).

**Model and loss.** The full three-branch :class:`~ua3dtalk.models.emotion.EmotionEncoder` (log-mel CNN,
MFCC BiLSTM, wav2vec2-feature projection, attention fusion) — the architecture of the self-distillation
teacher (``EmotionDistillation(teacher_path=None)``) — trained with that teacher's label losses
(:class:`~ua3dtalk.models.emotion.DistillationLoss` without a teacher: emotion cross-entropy + 0.5 ·
intensity cross-entropy + 0.5 · per-branch cross-entropy), Adam, on the inputs the emotion stage feeds a
teacher: ``AudioBatch.waveform`` (2 s of 16 kHz audio centred on each frame) and ``AudioBatch.context``
(the frame's 50-frame audio context of ``--feature``).

**Clips** (DESIGN §5.5). The dataset is split exactly as the avatar's
:class:`~ua3dtalk.data.datamodule.EmotionalTalkingHeadDataModule` splits it
(:func:`~ua3dtalk.data.splits.split_emotional_clips`; the fractions default to
``experiments/data/mead.yaml``'s, :data:`MEAD_SPLIT`): the teacher trains on the avatar's ``train`` clips
only and its held-out accuracy is measured on the ``val`` clips; ``test`` and ``evaluator`` clips are never
read.

**Output.** ``DIR/teacher.json`` + ``teacher.safetensors`` (:func:`~ua3dtalk.models.emotion.save_teacher`;
:func:`~ua3dtalk.models.emotion.load_teacher` reads the directory) and ``manifest.json`` (dataset, clips
used, held-out clips, accuracy, epochs, seed, created time, per-epoch losses). Everything is written into a
hidden staging directory next to ``DIR`` and moved into place only on success; an existing ``DIR`` is
refused unless ``--force``.

``--feature`` must name the features the experiment feeds the teacher (its ``data.context_feature``, else
``data.feature``: ``wav2vec2`` for ``data=regular`` and ``data=mead``): the wav2vec2 branch is built for
their channel count. Missing feature caches are computed first (as ``ua3dtalk-train`` does).
"""
from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path
from typing import Optional

PROG = "ua3dtalk-teacher"
MEAD_SPLIT = {"val_fraction": 0.1, "test_fraction": 0.1, "evaluator_fraction": 0.0, "split_seed": 0}
"""Clip-role fractions of ``experiments/data/mead.yaml`` (a test checks that the two agree)."""
MANIFEST = "manifest.json"


class TeacherError(ValueError):
    """A bad input of ``ua3dtalk-teacher`` (the message names the argument or file)."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2 (no usage block)
        self.exit(2, f"{self.prog}: error: {message}\n")


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog=PROG, description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True, help="emotional dataset directory, e.g. data/mead/M003")
    p.add_argument("--out", required=True, help="output directory, e.g. data/teachers/emotion_mead")
    p.add_argument("--epochs", type=int, default=20, help="training epochs over the train clips' frames (default 20)")
    p.add_argument("--batch-size", type=int, default=64, help="frames per batch (default 64)")
    p.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate (default 1e-3, model.lr_emotion)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--feature", default="wav2vec2",
                   help="audio features of the w2v branch (the experiment's data.context_feature / data.feature; "
                        "default wav2vec2)")
    p.add_argument("--extractor-model", default=None,
                   help="wav2vec2 model (hub id in the local cache, or a directory) for --feature wav2vec2 (the "
                        "experiment's data.extractor_model; default facebook/wav2vec2-base-960h)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    p.add_argument("--device", default="auto", help="auto (cuda when available), cpu, cuda, cuda:1, ...")
    p.add_argument("--force", action="store_true", help="replace an existing --out directory")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    for k, v in MEAD_SPLIT.items():
        p.add_argument(f"--{k.replace('_', '-')}", type=type(v), default=v,
                       help=f"clip split (default {v}; must match the avatar's data.{k})")
    return p


def check_inputs(data: Path, out: Path, *, epochs: int, batch_size: int, lr: float, threads: int, force: bool,
                 split: dict) -> None:
    """Cheap checks before anything is imported or loaded; raises :class:`TeacherError` naming the argument."""
    if not data.exists():
        raise TeacherError(f"--data: dataset directory not found: {data}")
    if not data.is_dir():
        raise TeacherError(f"--data: not a directory: {data}")
    if epochs < 1:
        raise TeacherError(f"--epochs must be ≥ 1, got {epochs}")
    if batch_size < 1:
        raise TeacherError(f"--batch-size must be ≥ 1, got {batch_size}")
    if not (math.isfinite(lr) and lr > 0):
        raise TeacherError(f"--lr must be a finite number > 0, got {lr}")
    if threads < 1:
        raise TeacherError(f"--threads must be ≥ 1, got {threads}")
    for k in ("val_fraction", "test_fraction", "evaluator_fraction"):
        if not 0.0 <= float(split[k]) < 1.0:
            raise TeacherError(f"--{k.replace('_', '-')} must be in [0, 1), got {split[k]}")
    if sum(float(split[k]) for k in ("val_fraction", "test_fraction", "evaluator_fraction")) >= 1.0:
        raise TeacherError("--val-fraction + --test-fraction + --evaluator-fraction must be < 1")
    if out.exists() or out.is_symlink():
        if not out.is_dir():
            raise TeacherError(f"--out: {out} exists and is not a directory")
        if not force:
            raise TeacherError(f"--out: {out} already exists (pass --force to replace it)")
    from ..utils.io import OutputError, check_output_dir

    try:  # not the dataset, not inside it, not holding it; writable with room
        check_output_dir(out, "--out", {"--data": data}, what="teacher")
    except OutputError as e:
        raise TeacherError(str(e)) from None
    except OSError as e:
        raise TeacherError(f"--out: {out}: {e}") from None


def _device(name: str):
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError as e:
        raise TeacherError(f"--device: {e}") from e
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise TeacherError(f"--device {name}: CUDA is not available")
    return dev


def load_splits(data: Path, feature: str, batch_size: int, seed: int, split: dict,
                extractor_model: Optional[str] = None):
    """Set up the avatar's emotional DataModule on ``data`` (stage ``emotion``) → ``(dm, roles)`` with
    ``roles`` = ``{"train", "val", "test", "evaluator"}`` clip lists. Checks that it is an emotional
    dataset whose training clips carry ≥ 2 emotion labels and audio."""
    from ..data.extractors import MissingModelError
    from ..data.datamodule import EmotionalTalkingHeadDataModule
    from ..data.clip import detect_layout
    from ..data.loading import list_clip_dirs

    if detect_layout(data) == "regular":
        raise TeacherError(f"--data: {data} is a regular (single-video) dataset without emotion labels; the teacher "
                           "needs an emotional dataset (<emotion>/level_<k>/<clip>/emotion.json, e.g. imported with "
                           "ua3dtalk-import-mead)")
    list_clip_dirs(data)  # "no clips found" before any feature extractor is built
    if extractor_model is not None and feature != "wav2vec2":
        raise TeacherError(f"--extractor-model is for --feature wav2vec2, not --feature {feature}")
    dm = EmotionalTalkingHeadDataModule(str(data), feature=feature, stage="emotion", audio_batch_size=batch_size,
                                        seed=seed, extractor_model=extractor_model, **split)
    try:
        dm.prepare_data()  # missing feature caches (as ua3dtalk-train does)
    except MissingModelError as e:
        raise TeacherError(f"--feature {feature}: {_one_line(e)}") from e
    dm.setup()
    roles = {k: list(dm.split_clips.get(k, [])) for k in ("train", "val", "test", "evaluator")}
    train = roles["train"]
    unlabelled = [c.clip_id for c in train if int(c.emotion) < 0]
    if unlabelled:
        raise TeacherError(f"--data: {len(unlabelled)} training clip(s) have no emotion label "
                           f"({', '.join(unlabelled[:5])})")
    if len({int(c.emotion) for c in train}) < 2:
        raise TeacherError(f"--data: the training clips of {data} cover fewer than 2 emotions; a teacher needs ≥ 2")
    no_wav = [c.clip_id for c in train + roles["val"] if c.wav_path is None]
    if no_wav:
        raise TeacherError(f"--data: {len(no_wav)} clip(s) have no aud.wav ({', '.join(no_wav[:5])}); the log-mel "
                           "and MFCC branches need the waveform")
    return dm, roles


def _loader(ds, batch_size: int, shuffle: bool, seed: int):
    import torch
    from torch.utils.data import DataLoader

    from ..data.batch import collate_batches

    g = torch.Generator().manual_seed(int(seed)) if shuffle else None
    return DataLoader(ds, batch_size=batch_size, shuffle=shuffle, generator=g, collate_fn=collate_batches)


def evaluate(model, ds, batch_size: int, device, progress: bool = False) -> dict:
    """Eval-mode accuracy of ``model`` on an :class:`~ua3dtalk.data.datasets.AudioFrameDataset`: per frame
    (``acc``), per clip (``acc_clip``: arg-max of the clip's mean probabilities) and per emotion."""
    import torch
    from tqdm.auto import tqdm

    from ..models.emotion import EMOTIONS

    logits, labels, clips = [], [], []
    model.eval()
    with torch.no_grad():
        for b in tqdm(_loader(ds, batch_size, False, 0), desc="teacher: held-out", unit="batch",
                      disable=not progress, leave=False):
            logits.append(model(waveform=b.waveform.to(device), w2v=b.context.to(device)).logits.float().cpu())
            labels.append(b.emotion)
            clips += b.clip_id
    if not labels:
        return {}
    lg, y = torch.cat(logits), torch.cat(labels)
    hit = lg.argmax(-1) == y
    per_clip, clip_hits = {}, []
    for i, c in enumerate(clips):
        per_clip.setdefault(c, []).append(i)
    for rows in per_clip.values():
        p = lg[rows].softmax(-1).mean(0)
        clip_hits.append(bool(int(p.argmax()) == int(y[rows[0]])))
    per_emotion = {EMOTIONS[k]: round(float(hit[y == k].float().mean()), 4) for k in sorted(set(y.tolist()))}
    return {"acc": float(hit.float().mean()), "acc_clip": sum(clip_hits) / len(clip_hits), "frames": len(y),
            "clips": len(per_clip), "per_emotion": per_emotion}


def train_teacher(data, out, *, epochs: int = 20, batch_size: int = 64, lr: float = 1e-3, seed: int = 0,
                  feature: str = "wav2vec2", threads: int = 1, device: str = "auto", force: bool = False,
                  progress: bool = True, split: Optional[dict] = None, extractor_model: Optional[str] = None) -> dict:
    """Train the three-branch teacher on the train clips of ``data`` and write it to ``out`` (see the module
    docstring); returns the manifest (also ``out/manifest.json``)."""
    data, out = Path(data), Path(out)
    split = {**MEAD_SPLIT, **(split or {})}
    check_inputs(data, out, epochs=epochs, batch_size=batch_size, lr=lr, threads=threads, force=force, split=split)

    import torch
    from tqdm.auto import tqdm

    from ..data.datasets import AudioFrameDataset
    from ..data.splits import clip_key
    from ..models.emotion import BRANCHES, DistillationLoss, EmotionEncoder, load_teacher, save_teacher
    from ..utils.io import atomic_directory, atomic_write_json
    from ..utils.threads import torch_threads

    t0 = time.time()
    dev = _device(device)
    with torch_threads(threads):
        dm, roles = load_splits(data, feature, batch_size, seed, split, extractor_model)
        common = dict(feature=dm.feature_name, segment_seconds=dm.segment_seconds, context=dm.context, lip=False)
        train_ds = AudioFrameDataset(dm.clips, dm.split_index["train"], **common)
        held_ds = AudioFrameDataset(dm.clips, dm.split_index["val"], **common) if roles["val"] else None
        torch.manual_seed(int(seed))
        model = EmotionEncoder(w2v_channels=dm.context_channels, branches=BRANCHES).to(dev)
        loss_fn = DistillationLoss()
        opt = torch.optim.Adam(model.parameters(), lr=float(lr))
        loader = _loader(train_ds, batch_size, True, seed)
        history = []
        bar = tqdm(total=epochs * len(loader), desc="teacher: train", unit="batch", disable=not progress)
        try:
            for ep in range(1, epochs + 1):
                model.train()
                tot, hits, n = 0.0, 0, 0
                for b in loader:
                    y = b.emotion.to(dev)
                    o = model(waveform=b.waveform.to(dev), w2v=b.context.to(dev))
                    loss = loss_fn(o, y, b.intensity.to(dev))["total"]
                    if not bool(torch.isfinite(loss)):
                        raise RuntimeError(f"{PROG}: non-finite training loss at epoch {ep} (try a lower --lr)")
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    k = len(y)
                    tot, n = tot + float(loss.detach()) * k, n + k
                    hits += int((o.logits.detach().argmax(-1) == y).sum())
                    bar.update(1)
                    bar.set_postfix(epoch=ep, loss=f"{tot / n:.3f}", acc=f"{hits / n:.2f}")
                history.append({"epoch": ep, "loss": round(tot / n, 5), "train_acc": round(hits / n, 4)})
        finally:
            bar.close()
        held = evaluate(model, held_ds, batch_size, dev, progress) if held_ds is not None else {}
        model = model.cpu().eval()
    chance = 1.0 / len({int(c.emotion) for c in roles["train"]})
    accuracy = {"heldout_acc": held.get("acc"), "heldout_acc_clip": held.get("acc_clip"), "chance": chance,
                "heldout_frames": held.get("frames", 0), "per_emotion": held.get("per_emotion", {})}
    manifest = {
        "kind": "ua3dtalk-emotion-teacher", "teacher": "teacher.json", "dataset": str(data),
        "dataset_abs": str(data.resolve()), "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "seed": int(seed), "epochs": int(epochs), "batch_size": int(batch_size), "lr": float(lr),
        "feature": dm.feature_name, "w2v_channels": int(dm.context_channels), "branches": list(BRANCHES),
        "segment_seconds": dm.segment_seconds, "context": dm.context, "split": split,
        "clips_role": "train", "clips": [clip_key(c) for c in roles["train"]], "train_frames": len(train_ds),
        "heldout_role": "val", "heldout_clips": [clip_key(c) for c in roles["val"]],
        "unused_clips": {k: [clip_key(c) for c in roles[k]] for k in ("test", "evaluator")},
        "accuracy": accuracy, "history": history, "device": str(dev), "seconds": None,
    }
    if not force and out.exists():  # appeared while training
        raise TeacherError(f"--out: {out} already exists (pass --force to replace it)")
    with atomic_directory(out) as stage:
        save_teacher(model, stage)
        load_teacher(stage)  # the written teacher must load (weights and config agree)
        manifest["seconds"] = round(time.time() - t0, 1)
        atomic_write_json(stage / MANIFEST, manifest)
    return manifest


def _one_line(e: BaseException) -> str:
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()] or [type(e).__name__]
    more = f" (+{len(lines) - 4} more)" if len(lines) > 4 else ""
    return "; ".join(lines[:4]) + more


def main(argv=None) -> int:
    args = _parser().parse_args(sys.argv[1:] if argv is None else argv)
    try:
        m = train_teacher(args.data, args.out, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                          seed=args.seed, feature=args.feature, threads=args.threads, device=args.device,
                          force=args.force, progress=not args.no_progress,
                          split={k: getattr(args, k) for k in MEAD_SPLIT}, extractor_model=args.extractor_model)
    except Exception as e:  # noqa: BLE001 - CLI: one clear line, exit code 2
        from ..data.formats import DatasetError

        if isinstance(e, (ValueError, FileNotFoundError, NotADirectoryError)):
            msg = _one_line(e)
            if isinstance(e, DatasetError) and not msg.startswith("--"):
                msg = f"--data: {msg}"
            print(f"{PROG}: error: {msg}", file=sys.stderr)
            return 2
        raise
    acc = m["accuracy"]
    if acc["heldout_acc"] is None:
        print(f"{PROG}: no held-out (val) clips in {args.data}: the held-out accuracy was not measured")
    else:
        print(f"{PROG}: held-out accuracy {acc['heldout_acc']:.3f} per frame, {acc['heldout_acc_clip']:.3f} per clip "
              f"(chance {acc['chance']:.3f}) on {len(m['heldout_clips'])} val clips ({acc['heldout_frames']} frames)")
        if acc["heldout_acc"] <= acc["chance"]:
            print(f"{PROG}: warning: the held-out accuracy is not above chance: the teacher does not generalise to "
                  "other clips (more training clips per emotion or other --epochs / --lr?)")
    print(f"{PROG}: trained on {len(m['clips'])} clips ({m['train_frames']} frames), {m['epochs']} epochs, final "
          f"loss {m['history'][-1]['loss']:.4f}; wrote {Path(args.out)} (teacher.json, teacher.safetensors, "
          f"{MANIFEST})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
