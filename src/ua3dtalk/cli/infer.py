"""``ua3dtalk-infer``: drive a trained avatar with new speech and a chosen emotion → mp4 (25 fps, audio muxed).

    ua3dtalk-infer ckpt=RUN audio=speech.wav out=out.mp4        # RUN's best checkpoint (or a .ckpt file)
                   [emotion=audio | emotion=happy intensity=2 | emotion=happy blend=sad:0.3]
                   [pose=dataset | pose=poses.npy | pose=transforms_val.json] [expression=expr.npy] [backend=auto]

``emotion=audio`` (default) takes the emotion from the speech (the distilled wav2vec2 student);
a label uses the class/intensity prototypes learned in the emotion stage; ``blend=<emotion>:<w>``
blends linearly towards a second emotion. ``pose=dataset`` loops the training subject's camera
track; a ``.npy`` holds [N,4,4] OpenCV world→camera matrices, a ``.json`` is a TalkingGaussian
``transforms_*.json``. ``expression=`` (a checkpoint trained with ``model.frame_code=expression``): an ``expr.npy``
[frames, 11] — e.g. of a video preprocessed by ``ua3dtalk-preprocess`` — whose brows, eyes and lip corners the
avatar follows (looped like the camera track); without it the face keeps its training video's average expression.

``ckpt=`` is a checkpoint file or a run directory; a run directory stands for its best checkpoint by validation
(``checkpoints/<last stage>/best.ckpt``, recorded in its ``metrics.json``), else its last one; the command
says which it took (:func:`resolve_checkpoint`).
"""
from __future__ import annotations

import time
from pathlib import Path

KEYS = {"ckpt", "audio", "out", "emotion", "intensity", "blend", "pose", "expression", "backend"}


def parse_key_values(argv, keys) -> dict:
    """``key=value`` arguments → dict; raises ValueError for a malformed or unknown key (listing ``keys``)."""
    args = {}
    for a in argv:
        if "=" not in a:
            raise ValueError(f"expected key=value, got {a!r} (keys: {', '.join(sorted(keys))})")
        k, v = a.split("=", 1)
        k = k.lstrip("-")
        if k not in keys:
            raise ValueError(f"unknown argument {k!r}; expected one of {', '.join(sorted(keys))}")
        args[k] = v
    return args


def resolve_checkpoint(arg, command: str = "ua3dtalk") -> Path:
    """The checkpoint ``ckpt=`` stands for: a file as given; for a run directory its best checkpoint by
    validation (``metrics.json`` → ``best_checkpoint``, else ``checkpoints/<stage>/best.ckpt`` of the latest
    stage that has one), else its final ``last.ckpt``. Prints which it took; raises FileNotFoundError naming
    ``arg`` when there is none."""
    import json

    p = Path(str(arg))
    if p.is_file():
        print(f"{command}: checkpoint {p}", flush=True)
        return p
    if not p.is_dir():
        raise FileNotFoundError(f"ckpt={arg}: checkpoint not found (no such file or run directory)")
    meta: dict = {}
    try:
        meta = json.loads((p / "metrics.json").read_text()) if (p / "metrics.json").is_file() else {}
    except (OSError, ValueError):
        meta = {}
    best = meta.get("best_checkpoint") if isinstance(meta, dict) else None
    if isinstance(best, dict) and best.get("path"):
        bp = Path(best["path"])
        bp = bp if bp.is_absolute() or bp.is_file() else p / "checkpoints" / bp.parent.name / bp.name
        if bp.is_file():
            print(f"{command}: checkpoint {bp} (the run's best by {best.get('monitor')} = "
                  f"{float(best.get('score', float('nan'))):.4g})", flush=True)
            return bp
    stages = ("fuse", "face", "mouth", "emotion", "prior")
    for name, why in (("best.ckpt", "the run's best by validation"), ("last.ckpt", "the run's last; no best.ckpt")):
        for st in stages:
            c = p / "checkpoints" / st / name
            if c.is_file():
                print(f"{command}: checkpoint {c} ({why})", flush=True)
                return c
    raise FileNotFoundError(f"ckpt={arg}: the directory holds no checkpoint (expected checkpoints/<stage>/best.ckpt "
                            "or last.ckpt of a ua3dtalk-train run)")


def check_backend(value: str) -> str:
    """``backend=``: one of the renderer backends (:data:`ua3dtalk.render.api.BACKENDS`)."""
    from ..render.api import BACKENDS

    if value not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {value!r}")
    return value


def parse_kv(argv) -> dict:
    import math

    args = parse_key_values(argv, KEYS)
    for k in ("ckpt", "audio", "out"):
        if k not in args:
            raise ValueError(f"missing required argument {k}=...")
    check_backend(args.get("backend", "auto"))
    if "intensity" in args and args["intensity"] not in ("1", "2", "3"):
        raise ValueError(f"intensity must be 1, 2 or 3, got {args['intensity']!r}")
    if args.get("blend"):
        other, _, w = args["blend"].partition(":")
        try:
            wf = float(w) if w else 0.5
        except ValueError:
            wf = float("nan")
        if not other or not math.isfinite(wf) or not 0.0 <= wf <= 1.0:
            raise ValueError(f"blend must be <emotion>:<weight in [0,1]>, got {args['blend']!r}")
    return args


TRUSTED_TARGETS = "ua3dtalk.models."
"""Prefix of the classes a checkpoint's stored model configuration may name (``_target_``)."""


def check_model_config(cfg, where: str, prefix: str = TRUSTED_TARGETS) -> None:
    """Refuse a stored model configuration that would make ``hydra.utils.instantiate`` call anything but
    a model class of this package.

    A checkpoint is untrusted input: its tensors are read with ``weights_only=True``, but the
    ``model_config`` it carries is instantiated, and a ``_target_`` such as ``os.system`` (or a class
    reached through a module attribute, e.g. ``ua3dtalk.models.module.subprocess.Popen``) would run
    code. Every ``_target_`` must resolve to a class whose ``__module__`` is under ``prefix``
    (:data:`TRUSTED_TARGETS`; e.g. ``"ua3dtalk.data."`` for a stored DataModule config);
    interpolations (``${...}``) are refused too. Raises ``CheckpointError`` naming ``where``.
    """
    from ..callbacks.checkpoint import CheckpointError

    def walk(node, path):
        if isinstance(node, dict):
            for k, v in node.items():
                key = f"{path}.{k}" if path else str(k)
                if k == "_target_":
                    _check_target(v, key)
                else:
                    walk(v, key)
        elif isinstance(node, (list, tuple)):
            for i, v in enumerate(node):
                walk(v, f"{path}[{i}]")
        elif isinstance(node, str) and "${" in node:
            raise CheckpointError(f"{where}: model_config.{path} holds an interpolation {node!r}; refused")

    def _check_target(target, key):
        import importlib

        ok = isinstance(target, str) and target.startswith(prefix)
        obj = None
        if ok:
            mod, _, name = target.rpartition(".")
            try:
                obj = getattr(importlib.import_module(mod), name)
            except (ImportError, AttributeError, ValueError):
                obj = None
        if not (ok and isinstance(obj, type) and obj.__module__.startswith(prefix)):
            raise CheckpointError(f"{where}: model_config.{key} = {target!r} is not a class of "
                                  f"{prefix.rstrip('.')}; refusing to instantiate it")

    walk(cfg, "")


def load_model(ckpt_path, backend: str = "auto"):
    """Rebuild the model from the config stored in the checkpoint (checked by
    :func:`check_model_config`) and load its weights."""
    from hydra.utils import instantiate

    from ..callbacks.checkpoint import CheckpointError, load_model_checkpoint, read_checkpoint

    ckpt = read_checkpoint(ckpt_path)
    meta = ckpt.get("ua3dtalk") or {}
    if not isinstance(meta, dict) or not isinstance(meta.get("model_config"), dict) or not meta["model_config"]:
        raise CheckpointError(f"{ckpt_path}: no model configuration stored (not written by ua3dtalk-train)")
    check_model_config(meta["model_config"], str(ckpt_path))
    cfg = dict(meta["model_config"])
    cfg["stage"] = "fuse"
    cfg["backend"] = backend
    model = instantiate(cfg)
    load_model_checkpoint(model, ckpt_path)
    model.model_config, model.data_config = meta["model_config"], meta.get("data_config") or {}
    model.eval()
    return model


def resolve_emotion(model, emotion: str, intensity, blend):
    import torch

    if emotion == "audio":
        if blend:
            raise ValueError("blend= needs a label emotion (emotion=<name>), not emotion=audio")
        return None
    if model.emotion_control is None:
        raise ValueError("this checkpoint has no emotion control (trained without emotion distillation)")
    if intensity is not None:
        try:
            intensity = int(intensity)
        except (TypeError, ValueError):
            raise ValueError(f"intensity must be an integer 1, 2 or 3, got {intensity!r}") from None
        n = int(getattr(model.emotion_control, "n_levels", 3))
        if not 1 <= intensity <= n:
            raise ValueError(f"intensity must be an integer in 1..{n}, got {intensity}")

    def label(name):
        try:
            return model.emotion_control.from_label(name, intensity)
        except RuntimeError as err:  # no prototype: the checkpoint's emotion stage never saw this emotion
            raise ValueError(f"emotion={name}: {err}; use emotion=audio or a checkpoint trained through the "
                             "emotion stage") from None

    e = label(emotion)
    if blend:
        other, _, w = blend.partition(":")
        try:
            w = float(w or 0.5)
        except ValueError:
            raise ValueError(f"blend must be <emotion>:<weight in [0,1]>, got {blend!r}") from None
        e = model.emotion_control.blend(e, label(other), w)
    return torch.as_tensor(e)[None] if torch.as_tensor(e).dim() == 1 else e


#: the training DataModule's arguments a checkpoint keeps (``data_config``) that inference uses
PREDICT_DATA_KEYS = ("feature", "context_feature", "extractor_model", "extractor_layer", "neighbours", "background")


def predict_datamodule(data_config: dict, audio, pose: str = "dataset", emotion: str = "audio", intensity=None,
                       expression=None):
    """The training DataModule set up for ``predict`` (:meth:`~ua3dtalk.data.datamodule.TalkingHeadDataModule.
    predict_dataloader`): ``audio`` with the training features (same model *and* layer), along the training
    dataset's camera track (``pose=dataset``; the dataset must be present) or a camera-track file (over white)."""
    from ..data.datamodule import TalkingHeadDataModule
    from .train import drop_unused_extractor_options

    root = data_config.get("root")
    if pose == "dataset" and (not root or not Path(root).exists()):
        raise FileNotFoundError(f"pose=dataset: the training dataset {root!r} is not available; pass pose=FILE")
    kw = {k: data_config[k] for k in PREDICT_DATA_KEYS if data_config.get(k) is not None}
    kw.setdefault("feature", "mel")
    kw = drop_unused_extractor_options(kw)  # older checkpoints kept them for log-mel
    dm = TalkingHeadDataModule(str(root or "."), predict_audio=str(audio),
                               predict_cameras=None if pose == "dataset" else str(pose),
                               predict_emotion=emotion, predict_intensity=int(intensity) if intensity else None,
                               predict_expression=None if expression is None else str(expression), **kw)
    dm.setup("predict")
    return dm


def check_expression(model, expression) -> None:
    """``expression=`` only for a checkpoint trained with ``model.frame_code=expression`` (a readable ``expr.npy`` of
    the landmark expression's columns); without it such a checkpoint keeps the average expression (one line)."""
    from ..data.predict import read_expression_track
    from ..metrics.landmarks import LANDMARK_EXPR_NAMES

    code = getattr(model.head, "frame_code", "blink")
    if expression is None:
        if code == "expression":
            print("ua3dtalk-infer: expression: the training video's average (pass expression=expr.npy to drive the "
                  "brows, eyes and lip corners)")
        return
    if code != "expression":
        raise ValueError(f"expression={expression}: this checkpoint was trained with model.frame_code={code}; only a "
                         "model trained with model.frame_code=expression follows an expression track")
    e = read_expression_track(expression)
    if e.shape[1] != len(LANDMARK_EXPR_NAMES):
        raise ValueError(f"expression={expression}: expected the {len(LANDMARK_EXPR_NAMES)} landmark expression "
                         f"coefficients of ua3dtalk-preprocess's expr.npy per frame, got {e.shape[1]}")


def infer(ckpt, audio, out, emotion="audio", intensity=None, blend=None, pose="dataset", backend="auto",
          expression=None) -> dict:
    import torch
    from tqdm import tqdm

    from ..utils.io import write_video

    from ..utils.io import check_output

    ckpt_path = resolve_checkpoint(ckpt, "ua3dtalk-infer")
    check_output(out, "out", {"audio": audio, "ckpt": ckpt_path, "pose": pose if str(pose) != "dataset" else None,
                              "expression": expression}, min_free_bytes=64 << 20)
    model = load_model(ckpt_path, backend)
    model.predict_emotion = resolve_emotion(model, emotion, intensity, blend)  # read by predict_step
    check_expression(model, expression)
    dm = predict_datamodule(model.data_config, audio, pose, emotion, intensity, expression)
    n, t0 = [0], time.perf_counter()

    def frames():  # rendered while the encoder consumes them: memory does not grow with the audio length
        with tqdm(total=len(dm.predict_dataset), desc="ua3dtalk-infer", unit="frame") as bar:
            for i, batch in enumerate(dm.predict_dataloader()):
                for img in model.predict_step(batch, i)["images"]:  # [3,H,W] in [0,1]
                    n[0] += 1
                    bar.update(1)
                    yield (img.permute(1, 2, 0).numpy() * 255 + 0.5).clip(0, 255).astype("uint8")

    with torch.no_grad():
        write_video(out, frames(), fps=25, audio_path=dm.predict_dataset.audio_path)
    fps = n[0] / max(time.perf_counter() - t0, 1e-9)
    print(f"ua3dtalk-infer: wrote {out}: {n[0]} frames at {fps:.1f} frames/s (rendering and encoding)")
    return {"frames": n[0], "fps": fps, "out": str(out)}


def _run(argv: list) -> int:
    a = parse_kv(argv)
    infer(a["ckpt"], a["audio"], Path(a["out"]), a.get("emotion", "audio"), a.get("intensity"), a.get("blend"),
          a.get("pose", "dataset"), a.get("backend", "auto"), a.get("expression"))
    return 0


def main(argv=None) -> int:
    from .args import key_value_main

    return key_value_main(argv, "ua3dtalk-infer", KEYS, __doc__, _run)


if __name__ == "__main__":
    raise SystemExit(main())
