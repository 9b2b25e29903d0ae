"""A tiny random-initialised wav2vec2 model, saved locally like a downloaded checkpoint (DESIGN §10).

Nothing is ever downloaded, so the synthetic experiments cannot use ``facebook/wav2vec2-base``. They
run the wav2vec2 feature path with this stand-in instead: same architecture family
(``Wav2Vec2Model``: 7-layer convolutional feature encoder with group norm, positional convolution,
transformer encoder), tiny sizes, weights drawn from a fixed seed. It is written with
``save_pretrained`` (``config.json`` + ``model.safetensors``) plus a ``preprocessor_config.json``
(``do_normalize=True``, as wav2vec2-base), i.e. exactly the layout that
:class:`~ua3dtalk.data.extractors.Wav2Vec2Extractor` loads from a local directory — the code path of a real
checkpoint. The convolution stack keeps wav2vec2's kernels and strides (product of the strides 320),
so 16 kHz audio gives 50 Hz features like the real model.

Random weights carry no speech knowledge: the features are a fixed random (non-linear) function of the
audio that keeps its local spectral content — enough for the synthetic data, meaningless as a speech
representation. Use a real checkpoint for real data.

    save_tiny_wav2vec2("data/models/wav2vec2-tiny-random")   # idempotent; atomic
    python -m ua3dtalk.data.tiny_wav2vec2 DIR                 # the same from a shell

The directory appears complete or not at all: it is built in a hidden staging directory next to it and
renamed into place; an existing complete directory with the same specification is reused as is.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Optional, Union

TINY_W2V_NAME = "wav2vec2-tiny-random"
"""Directory name used by the shipped configs (``${paths.data_dir}/models/wav2vec2-tiny-random``)."""
TINY_W2V_SPEC = {
    "hidden_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "intermediate_size": 128,
    "conv_dim": [32] * 7,
    "conv_kernel": [10, 3, 3, 3, 3, 2, 2],  # wav2vec2-base's kernels and strides: hop 320 samples (50 Hz)
    "conv_stride": [5, 2, 2, 2, 2, 2, 2],
    "num_conv_pos_embeddings": 16,
    "num_conv_pos_embedding_groups": 4,
    "feat_extract_norm": "group",
    "do_stable_layer_norm": False,
    "vocab_size": 32,
}
"""``Wav2Vec2Config`` arguments of the tiny model (features: ``hidden_size`` channels at 50 Hz)."""
TINY_W2V_SEED = 0
MARKER = "ua3dtalk_tiny_wav2vec2.json"
"""Written last into the staging directory: what was built (kind, seed, config arguments)."""
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


def tiny_wav2vec2_config(**overrides):
    """The ``transformers.Wav2Vec2Config`` of the tiny model (``overrides`` replace entries of
    :data:`TINY_W2V_SPEC`)."""
    from transformers import Wav2Vec2Config

    spec = {**TINY_W2V_SPEC, **overrides}
    return Wav2Vec2Config(**{k: tuple(v) if isinstance(v, list) else v for k, v in spec.items()})


def build_tiny_wav2vec2(seed: int = TINY_W2V_SEED, **overrides):
    """A random-initialised ``Wav2Vec2Model`` (eval mode); the same weights for the same ``seed`` and
    arguments. The global torch random state is left untouched."""
    import torch
    from transformers import Wav2Vec2Model

    cfg = tiny_wav2vec2_config(**overrides)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        model = Wav2Vec2Model(cfg)
    return model.eval()


def _record(seed: int, overrides: dict) -> dict:
    return {"kind": TINY_W2V_NAME, "seed": int(seed), "config": {**TINY_W2V_SPEC, **overrides}, "version": 1}


def tiny_wav2vec2_complete(path: Union[str, Path], seed: int = TINY_W2V_SEED, **overrides) -> bool:
    """Whether ``path`` holds the complete tiny model of this ``seed`` / specification."""
    p = Path(path)
    try:
        rec = json.loads((p / MARKER).read_text())
    except (OSError, ValueError):
        return False
    want = json.loads(json.dumps(_record(seed, overrides)))  # lists, not tuples, as read back from JSON
    return (rec == want and (p / "config.json").is_file() and (p / "preprocessor_config.json").is_file()
            and any((p / w).is_file() for w in WEIGHT_FILES))


def save_tiny_wav2vec2(path: Union[str, Path], seed: int = TINY_W2V_SEED, **overrides) -> Path:
    """Save the tiny random wav2vec2 model into the directory ``path`` (``save_pretrained`` layout +
    ``preprocessor_config.json`` + :data:`MARKER`) and return it.

    Idempotent and safe against concurrent callers and interruption: a complete model with the same
    specification is reused; otherwise the model is built in a hidden staging directory next to
    ``path`` and renamed into place (if another process finished first, its identical model is kept).
    An existing directory that is not a tiny model made here is never replaced (``FileExistsError``);
    one made here with another specification or left incomplete is replaced as a whole."""
    from transformers import Wav2Vec2FeatureExtractor

    from ..utils.io import _tmp_prefix, remove_stale_temporaries
    from .extractors import _quiet_transformers

    path = Path(path).expanduser()
    if tiny_wav2vec2_complete(path, seed, **overrides):
        return path
    if path.exists() and not (path / MARKER).is_file() and (not path.is_dir() or any(path.iterdir())):
        raise FileExistsError(f"{path} exists and is not a tiny wav2vec2 model made by ua3dtalk (no {MARKER}); "
                              "remove it or choose another directory")
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path)
    stage = Path(tempfile.mkdtemp(dir=path.parent, prefix=_tmp_prefix(path, "partial")))
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(stage, 0o777 & ~umask)  # mkdtemp creates 0700
        with _quiet_transformers():
            build_tiny_wav2vec2(seed, **overrides).save_pretrained(str(stage))
            Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=16000, padding_value=0.0, do_normalize=True,
                                     return_attention_mask=False).save_pretrained(str(stage))
        (stage / MARKER).write_text(json.dumps(_record(seed, overrides), indent=2, sort_keys=True) + "\n")
        for f in stage.iterdir():  # the weights are written 0600: give every file the usual permissions
            os.chmod(f, 0o666 & ~umask)
        if tiny_wav2vec2_complete(path, seed, **overrides):  # another process finished first: keep its model
            return path
        if path.exists():  # ours, but another specification or incomplete (checked above): replace it
            old = Path(tempfile.mkdtemp(dir=path.parent, prefix=_tmp_prefix(path, "partial")))
            os.replace(path, old / "old")
            shutil.rmtree(old, ignore_errors=True)
        try:
            os.rename(stage, path)  # fails when another process has just put its (identical) model there
        except OSError:
            if not tiny_wav2vec2_complete(path, seed, **overrides):
                raise
    finally:
        with contextlib.suppress(OSError):
            if stage.exists():
                shutil.rmtree(stage)
    return path


def main(argv: Optional[list] = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1 or argv[0].startswith("-"):
        print("usage: python -m ua3dtalk.data.tiny_wav2vec2 DIR   (save the tiny random wav2vec2 model in DIR)",
              file=sys.stderr)
        return 2
    print(save_tiny_wav2vec2(argv[0]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
