"""Untrusted files (issue 8 item 2): checkpoints, weights and caches never run code when loaded; a
checkpoint's stored model configuration cannot name arbitrary callables; nothing evaluates config
text; dataset paths cannot leave the dataset root.

Every pickle here carries a live payload: its ``__reduce__`` creates a marker file. The tests first
prove the payload works (a full unpickle creates the marker), then hand the file to every loader of
the project and check that the loader refuses it with its documented error and that the marker was
never created.
"""
from __future__ import annotations

import ast
import json
import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from robustness_helpers import REPO, assert_user_error, call_main, train_overrides

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::DeprecationWarning")


class Payload:
    """Unpickling this object calls ``open(marker, "w")``: it creates the marker file."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.fixture
def marker(tmp_path) -> Path:
    m = tmp_path / "PAYLOAD_RAN"
    yield m
    assert not m.exists(), "a loader unpickled the payload: it created the marker file"


def _live(path: Path, marker: Path) -> Path:
    """Check that ``path`` really runs its payload under a full unpickle, then remove the marker."""
    torch.load(path, weights_only=False)
    assert marker.exists(), "the payload is not live"
    marker.unlink()
    return path


@pytest.fixture
def evil_state_dict(tmp_path, marker) -> Path:
    """A ``torch.save``d state dict with a payload next to the tensors."""
    p = tmp_path / "evil.pt"
    torch.save({"weight": torch.ones(2, 2), "bias": torch.zeros(2), "x": Payload(marker)}, p)
    return _live(p, marker)


@pytest.fixture
def evil_checkpoint(trained_ckpt, tmp_path, marker) -> Path:
    """The real checkpoint of the session's run with a payload added."""
    ck = torch.load(trained_ckpt, weights_only=True)
    ck["ua3dtalk"]["note"] = Payload(marker)
    p = tmp_path / "evil.ckpt"
    torch.save(ck, p)
    return _live(p, marker)


# --------------------------------------------------------------------------------------------------
# pickles: every loader
# --------------------------------------------------------------------------------------------------


def _loaders():
    from ua3dtalk.callbacks.checkpoint import AtomicCheckpointIO, CheckpointError, read_checkpoint
    from ua3dtalk.metrics.image import LPIPSMetric, LPIPSWeightsError
    from ua3dtalk.metrics.syncnet import SyncNetWeightsError, load_syncnet
    from ua3dtalk.models.emotion.distill import load_teacher
    from ua3dtalk.models.prior.io import WeightsError, read_state_dict
    from ua3dtalk.preprocess.bisenet import BiSeNetParser
    from ua3dtalk.preprocess.errors import PreprocessError

    return {
        "read_checkpoint": (read_checkpoint, CheckpointError),
        "AtomicCheckpointIO.load_checkpoint": (AtomicCheckpointIO().load_checkpoint, CheckpointError),
        "prior read_state_dict": (read_state_dict, WeightsError),
        "load_syncnet": (load_syncnet, SyncNetWeightsError),
        "LPIPS AlexNet backbone": (lambda p: LPIPSMetric(backbone_path=p), LPIPSWeightsError),
        "BiSeNet parser": (BiSeNetParser, PreprocessError),
        "emotion teacher (TorchScript path)": (load_teacher, WeightsError),
    }


LOADERS = ["read_checkpoint", "AtomicCheckpointIO.load_checkpoint", "prior read_state_dict", "load_syncnet",
           "LPIPS AlexNet backbone", "BiSeNet parser", "emotion teacher (TorchScript path)"]


@pytest.mark.parametrize("name", LOADERS)
def test_malicious_weights_file_is_refused(name, evil_state_dict, marker):
    fn, err = _loaders()[name]
    with pytest.raises(err) as ei:
        fn(evil_state_dict)
    assert "evil.pt" in str(ei.value)


def test_malicious_checkpoint_is_refused_by_infer(evil_checkpoint, tmp_path, speech, marker):
    from ua3dtalk.cli.infer import main

    out = tmp_path / "o.mp4"
    r = call_main(main, [f"ckpt={evil_checkpoint}", f"audio={speech}", f"out={out}"])
    assert_user_error(r, "evil.ckpt", "not a loadable checkpoint")
    assert not out.exists()


def test_malicious_checkpoint_is_refused_on_resume(evil_checkpoint, trained_run, synth_emotional_small, tmp_path,
                                                   marker):
    """``resume=true`` meets a booby-trapped ``last.ckpt``: refused (non-zero exit), nothing executed."""
    from ua3dtalk.cli.train import main

    run_dir = tmp_path / "run"
    shutil.copytree(trained_run, run_dir)
    for d in (run_dir / "checkpoints").iterdir():
        (d / "done.json").unlink(missing_ok=True)
        shutil.copy(evil_checkpoint, d / "last.ckpt")
    r = call_main(main, train_overrides(synth_emotional_small, run_dir, "stages=[emotion,face]",
                                        "stage_steps.face=2", "stage_steps.emotion=2", "resume=true"))
    torch.set_grad_enabled(True)
    assert r.exc is None and r.code not in (None, 0), r.text[-2000:]
    assert "not a loadable checkpoint" in r.text and "last.ckpt" in r.text


def test_malicious_wav2vec2_weights_are_refused(tiny_w2v, tmp_path, marker):
    """A wav2vec2 model directory whose ``pytorch_model.bin`` carries a payload."""
    from ua3dtalk.data.extractors import MissingModelError, Wav2Vec2Extractor

    d = tmp_path / "w2v_evil"
    shutil.copytree(tiny_w2v, d)
    for f in d.glob("*.safetensors"):
        f.unlink()
    torch.save({"wav2vec2.masked_spec_embed": torch.zeros(32), "x": Payload(marker)}, d / "pytorch_model.bin")
    _live(d / "pytorch_model.bin", marker)
    with pytest.raises(MissingModelError, match="w2v_evil"):
        Wav2Vec2Extractor(str(d))




# --------------------------------------------------------------------------------------------------
# pickled .npy files (features, expression coefficients, teeth masks, camera tracks, landmarks)
# --------------------------------------------------------------------------------------------------


def _evil_npy(path: Path, marker: Path) -> Path:
    np.save(path, np.array([Payload(marker)], dtype=object), allow_pickle=True)
    np.load(path, allow_pickle=True)
    assert marker.exists(), "the payload is not live"
    marker.unlink()
    return path


def test_pickled_npy_is_refused_by_every_reader(tmp_path, marker):
    from ua3dtalk.data.audio import read_feature_file
    from ua3dtalk.data.predict import load_camera_track
    from ua3dtalk.data.formats import DatasetError, read_teeth_mask
    from ua3dtalk.preprocess.errors import PreprocessError
    from ua3dtalk.preprocess.landmarks import read_given

    p = _evil_npy(tmp_path / "aud_mel.npy", marker)
    with pytest.raises(DatasetError, match="aud_mel.npy"):
        read_feature_file(p)
    with pytest.raises(DatasetError, match="aud_mel.npy"):
        read_teeth_mask(p)
    with pytest.raises((ValueError, OSError)):
        load_camera_track(p)
    with pytest.raises((PreprocessError, ValueError)):
        read_given(p, 1)


def test_pickled_expr_npy_in_a_dataset_is_refused(regular, marker):
    from ua3dtalk.data import load_dataset
    from ua3dtalk.data.formats import DatasetError

    _evil_npy(regular / "expr.npy", marker)
    with pytest.raises(DatasetError, match="expr.npy"):
        load_dataset(regular)


# --------------------------------------------------------------------------------------------------
# a checkpoint's stored configuration is code if instantiated blindly
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("where,target", [
    ("top", "os.system"),
    ("nested", "builtins.open"),
    ("nested", "ua3dtalk.models.module.subprocess.Popen"),  # a class reached through a module attribute
    ("nested", "ua3dtalk.utils.io.atomic_write_text"),     # project code, but not a model class
])
def test_checkpoint_config_cannot_name_arbitrary_callables(where, target, trained_ckpt, tmp_path, speech, marker):
    """The tensors of a checkpoint load with ``weights_only=True``, but ``ua3dtalk-infer`` rebuilds the
    model with ``hydra.utils.instantiate`` from the configuration stored in it: a ``_target_`` other
    than a model class of ``ua3dtalk.models`` is refused before anything is instantiated."""
    from ua3dtalk.cli.infer import main

    ck = torch.load(trained_ckpt, weights_only=True)
    mc = ck["ua3dtalk"]["model_config"]
    node = mc if where == "top" else mc["face"]
    node.clear() if where == "nested" else None
    node.update({"_target_": target, "_args_": [str(marker), "w"] if "open" in target or "write" in target
                 else [f"touch {marker}"]})
    evil = tmp_path / "config_payload.ckpt"
    torch.save(ck, evil)
    out = tmp_path / "o.mp4"
    r = call_main(main, [f"ckpt={evil}", f"audio={speech}", f"out={out}"])
    assert_user_error(r, "config_payload.ckpt", target)
    assert not out.exists()


def test_checkpoint_config_interpolations_are_refused(trained_ckpt, tmp_path, speech, monkeypatch):
    from ua3dtalk.cli.infer import main

    monkeypatch.setenv("UA3DTALK_SECRET", "hunter2")
    ck = torch.load(trained_ckpt, weights_only=True)
    ck["ua3dtalk"]["model_config"]["face"]["seed"] = "${oc.env:UA3DTALK_SECRET}"
    evil = tmp_path / "interp.ckpt"
    torch.save(ck, evil)
    r = call_main(main, [f"ckpt={evil}", f"audio={speech}", f"out={tmp_path / 'o.mp4'}"])
    assert_user_error(r, "interp.ckpt", "interpolation")


# --------------------------------------------------------------------------------------------------
# config text is never evaluated
# --------------------------------------------------------------------------------------------------


def test_config_values_are_not_evaluated(synth_emotional_small, tmp_path, marker):
    """Hydra overrides whose text is Python code (or an ``eval`` resolver, or a YAML python tag) are
    data, never executed."""
    from ua3dtalk.cli.train import main

    code = f"__import__('os').system('touch {marker}')"
    for override in (f"name={code!r}", f"tags=[{code!r}]", f"seed=${{eval:\"{code}\"}}",
                     f"name=${{python:{code}}}"):
        # stages=[] stops the run after the data and the model are built (every value resolved and used)
        r = call_main(main, train_overrides(synth_emotional_small, tmp_path / "run", "stages=[]", override))
        torch.set_grad_enabled(True)
        assert r.exc is None and r.code != 0
    yaml_file = tmp_path / "exp.yaml"
    yaml_file.write_text(f"# @package _global_\nname: !!python/object/apply:os.system ['touch {marker}']\n")
    from omegaconf import OmegaConf

    with pytest.raises(Exception):  # noqa: B017 - any YAML error; the point is the marker
        OmegaConf.load(yaml_file)


def test_published_numbers_yaml_is_read_safely(tmp_path, marker):
    from ua3dtalk.cli.tables import main

    pub = tmp_path / "pub.yaml"
    pub.write_text(f"source: !!python/object/apply:os.system ['touch {marker}']\nrows: []\n")
    r = call_main(main, ["--runs", str(tmp_path), "--table", "ablation", "--published", str(pub)])
    assert r.exc is None, r.tb
    assert r.code != 0 and "pub.yaml" in r.text


_UNSAFE_CALLS = {"eval", "exec", "compile", "__import__"}


def _unsafe_calls(path: Path) -> list[str]:
    """Calls that evaluate text or unpickle arbitrary objects."""
    tree = ast.parse(path.read_text(), str(path))
    bad = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        f = node.func
        name = f.id if isinstance(f, ast.Name) else (f.attr if isinstance(f, ast.Attribute) else "")
        owner = f.value.id if isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name) else ""
        kw = {k.arg: k.value for k in node.keywords}
        where = f"{path.relative_to(REPO)}:{node.lineno}"
        if isinstance(f, ast.Name) and name in _UNSAFE_CALLS:
            bad.append(f"{where} {name}()")
        elif owner == "pickle" and name in ("load", "loads", "Unpickler"):
            bad.append(f"{where} pickle.{name}")
        elif owner == "yaml" and name in ("load", "unsafe_load", "full_load", "load_all"):
            bad.append(f"{where} yaml.{name}")
        elif owner == "torch" and name == "load":
            wo = kw.get("weights_only")
            if not (isinstance(wo, ast.Constant) and wo.value is True):
                bad.append(f"{where} torch.load without weights_only=True")
        elif owner == "np" and name == "load":
            ap = kw.get("allow_pickle")
            if ap is not None and not (isinstance(ap, ast.Constant) and ap.value is False):
                bad.append(f"{where} np.load(allow_pickle=...)")
        elif name in ("run", "Popen", "call", "check_output", "check_call") and owner == "subprocess":
            sh = kw.get("shell")
            if sh is not None and not (isinstance(sh, ast.Constant) and sh.value is False):
                bad.append(f"{where} subprocess.{name}(shell=...)")
        elif name == "register_new_resolver" and path.name not in REVIEWED_RESOLVERS:
            bad.append(f"{where} OmegaConf.register_new_resolver (review: may evaluate config text)")
    return bad


REVIEWED_RESOLVERS = ("identity.py",)
"""Files whose OmegaConf resolvers were reviewed: ``cli/identity.py`` registers ``ua3dtalk_variant`` /
``ua3dtalk_identity`` (format the Hydra job's override strings into a name; nothing is evaluated),
``ua3dtalk_subject`` (the last path component of a ``data.root=`` override) and
``ua3dtalk_slurm_gpus`` / ``ua3dtalk_slurm_tasks`` (``int()`` of ``trainer.devices``)."""


def test_source_never_evaluates_text_or_unpickles():
    """Static check of ``src/ua3dtalk``: no eval/exec, no pickle/yaml.load, every ``torch.load`` with
    ``weights_only=True``, no ``np.load(allow_pickle=True)``, no shell commands, no custom OmegaConf
    resolvers. (TorchScript / torch.export teachers are programs by design: loaded only from a path
    the user names, documented in ``ua3dtalk.models.emotion.distill``.)"""
    bad = []
    for p in sorted((REPO / "src" / "ua3dtalk").rglob("*.py")):
        bad += _unsafe_calls(p)
    assert bad == [], "\n".join(bad)


# --------------------------------------------------------------------------------------------------
# dataset paths cannot escape the dataset root
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("img_id", ["../../../etc/passwd", "/etc/passwd", "0/../../x", "~root", "C:\\x", "1e3",
                                    "-1", True, 2.5, None, "١٢"])
def test_img_id_must_be_a_plain_frame_number(img_id, regular):
    from ua3dtalk.data import load_dataset
    from ua3dtalk.data.formats import DatasetError

    d = json.loads((regular / "transforms_train.json").read_text())
    d["frames"][0]["img_id"] = img_id
    (regular / "transforms_train.json").write_text(json.dumps(d))
    with pytest.raises(DatasetError, match="transforms_train.json.*img_id"):
        load_dataset(regular)


@pytest.mark.parametrize("entry", ["../outside", "/etc", "a/../../outside"])
def test_index_entry_cannot_leave_the_root(entry, emotional):
    from ua3dtalk.data import load_dataset
    from ua3dtalk.data.formats import DatasetError

    (emotional / "clips.json").write_text(json.dumps([entry]))
    with pytest.raises(DatasetError, match="clips.json.*escape"):
        load_dataset(emotional)


@pytest.mark.parametrize("name", ["transforms_train.json", "aud.wav", "au.csv", "expr.npy", "aud_mel.npy",
                                  "bc.jpg", "ori_imgs/0.lms", "torso_imgs/0.png", "gt_imgs"])
def test_symlinks_out_of_the_root_are_refused_and_never_read(name, regular, tmp_path):
    """Every clip file (and frame directory) that is a symlink to outside the dataset directory is an
    error naming the file, and the target is never read: the targets hold garbage, which would be
    reported as unreadable if anything opened them."""
    from ua3dtalk.data import load_dataset
    from ua3dtalk.data.formats import DatasetError

    src = regular / name
    outside = tmp_path / "outside" / name.replace("/", "_")
    outside.parent.mkdir(exist_ok=True)
    shutil.move(str(src), str(outside))
    for f in ([outside] if outside.is_file() else list(outside.iterdir())):
        f.write_bytes(b"\x00garbage\xff" * 50)
    src.symlink_to(outside, target_is_directory=outside.is_dir())
    with pytest.raises(DatasetError) as ei:
        load_dataset(regular, level="full")
    probs = [p for p in ei.value.problems if str(p.path).startswith(str(src))]
    assert probs, str(ei.value)
    assert all("outside the dataset directory" in p.message for p in probs), str(ei.value)


def test_symlink_inside_the_root_is_fine(regular):
    from ua3dtalk.data import load_dataset

    (regular / "bc_copy.jpg").write_bytes((regular / "bc.jpg").read_bytes())
    (regular / "bc.jpg").unlink()
    (regular / "bc.jpg").symlink_to(regular / "bc_copy.jpg")
    clip = load_dataset(regular)
    assert clip.background_path is not None


def test_pickle_protocol_of_dataset_error_cannot_be_abused():
    """DatasetError crosses DataLoader workers by pickle; it rebuilds from plain data only."""
    from ua3dtalk.data.formats import DatasetError, Problem

    e = DatasetError([Problem(Path("a/b.jpg"), "bad")], "root")
    f = pickle.loads(pickle.dumps(e))
    assert isinstance(f, DatasetError) and "a/b.jpg" in str(f)
    assert os.fspath(f.root) == "root"
