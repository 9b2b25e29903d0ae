"""The bad-input matrix (issue 8 item 1): corrupt, truncated, inconsistent and hostile inputs given to
every entry point — ``ua3dtalk-synth``, ``-validate``, ``-features``, ``-preprocess``,
``-import-mead``, ``-train``, ``-infer``, ``-eval``, ``-score``, ``-evaluators``, ``-tables`` and the
``rasterize`` / model APIs.

Each case asserts: a non-zero exit (or a documented exception) whose message names the file or
field and says what was expected; no traceback for a user error (nothing escapes ``main``, the
console output has no "Traceback"); and no output file left half-written (output directories hold
no partial file and no temporary file).

Most cases call the entry point's ``main(argv)`` in-process (a subprocess costs seconds of imports on
a loaded machine); :func:`test_console_scripts_exit_cleanly` runs a few of them as real processes.
Cases marked ``xfail(strict=True)`` are entry points that mishandle the input today (listed in the
report for their owners); they turn into failures as soon as the entry point is fixed, so the mark
must then be removed.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from robustness_helpers import assert_user_error, call_main, run_cli, temp_leftovers, train_overrides, tree

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::DeprecationWarning")

# --------------------------------------------------------------------------------------------------
# corruption helpers
# --------------------------------------------------------------------------------------------------


def truncate(path: Path, keep: float = 0.5) -> None:
    data = Path(path).read_bytes()
    Path(path).write_bytes(data[: max(1, int(len(data) * keep))])


def garbage(path: Path, n: int = 512, seed: int = 0) -> None:
    Path(path).write_bytes(np.random.default_rng(seed).integers(0, 256, n, dtype=np.uint8).tobytes())


def edit_json(path: Path, fn) -> None:
    d = json.loads(Path(path).read_text())
    fn(d)
    Path(path).write_text(json.dumps(d))


def write_wav(path: Path, seconds: float, sr: int = 16000, channels: int = 1) -> None:
    import soundfile as sf

    t = np.arange(int(seconds * sr)) / sr
    x = (0.2 * np.sin(2 * np.pi * 200 * t)).astype(np.float32)
    sf.write(str(path), np.stack([x] * channels, 1) if channels > 1 else x, sr)


def n_frames(ds: Path) -> int:
    ids = [f["img_id"] for n in ("transforms_train.json", "transforms_val.json")
           for f in json.loads((ds / n).read_text())["frames"]]
    return max(ids) + 1


# --------------------------------------------------------------------------------------------------
# ua3dtalk-validate: one corrupted file per case (a copy of the tiny synthetic subject)
# --------------------------------------------------------------------------------------------------


def _v_truncated_jpg(ds):
    truncate(ds / "ori_imgs" / "3.jpg", 0.4)
    return ["ori_imgs/3.jpg", "image"]


def _v_garbage_png(ds):
    garbage(ds / "parsing" / "5.png")
    return ["parsing/5.png", "unreadable"]


def _v_truncated_json(ds):
    truncate(ds / "transforms_train.json", 0.5)
    return ["transforms_train.json", "json"]


def _v_json_field_type(ds):
    edit_json(ds / "transforms_train.json", lambda d: d.update(focal_len="sixty"))
    return ["transforms_train.json", "focal_len"]


def _v_non_rigid_pose(ds):
    def f(d):
        d["frames"][2]["transform_matrix"][0][0] = 3.0
    edit_json(ds / "transforms_train.json", f)
    return ["transforms_train.json", "transform_matrix", "rigid"]


def _v_img_id_dotdot(ds):
    edit_json(ds / "transforms_train.json", lambda d: d["frames"][0].update(img_id="../../../etc/passwd"))
    return ["transforms_train.json", "img_id", "escape"]


def _v_img_id_absolute(ds):
    edit_json(ds / "transforms_val.json", lambda d: d["frames"][0].update(img_id="/etc/passwd"))
    return ["transforms_val.json", "img_id", "escape"]


def _v_symlink_frame_out(ds):
    outside = ds.parent / "outside.jpg"
    shutil.copy(ds / "ori_imgs" / "0.jpg", outside)
    (ds / "ori_imgs" / "0.jpg").unlink()
    (ds / "ori_imgs" / "0.jpg").symlink_to(outside)
    return ["ori_imgs/0.jpg", "symlink", "outside the dataset"]


def _v_symlink_dir_out(ds):
    shutil.move(str(ds / "parsing"), str(ds.parent / "parsing_elsewhere"))
    (ds / "parsing").symlink_to(ds.parent / "parsing_elsewhere", target_is_directory=True)
    return ["parsing", "symlink", "outside the dataset"]


def _v_symlink_wav_out(ds):
    shutil.move(str(ds / "aud.wav"), str(ds.parent / "elsewhere.wav"))
    (ds / "aud.wav").symlink_to(ds.parent / "elsewhere.wav")
    return ["aud.wav", "symlink", "outside the dataset"]


def _v_symlink_expr_out(ds):
    shutil.move(str(ds / "expr.npy"), str(ds.parent / "elsewhere.npy"))
    (ds / "expr.npy").symlink_to(ds.parent / "elsewhere.npy")
    return ["expr.npy", "symlink", "outside the dataset"]


def _v_wav_44k_stereo(ds):
    write_wav(ds / "aud.wav", n_frames(ds) / 25, sr=44100, channels=2)
    return ["aud.wav", "16 kHz mono", "44100"]


def _v_truncated_wav(ds):
    truncate(ds / "aud.wav", 0.01)
    return ["aud.wav"]


def _v_wav_too_short(ds):
    write_wav(ds / "aud.wav", 1.0)
    return ["aud.wav", "frames"]


def _v_expr_nan(ds):
    a = np.load(ds / "expr.npy")
    a[4, 1] = np.nan
    np.save(ds / "expr.npy", a)
    return ["expr.npy", "nan"]


def _v_feature_inf(ds):
    a = np.load(ds / "aud_mel.npy")
    a[7, 3] = np.inf
    np.save(ds / "aud_mel.npy", a)
    return ["aud_mel.npy", "inf"]


def _v_feature_length(ds):
    a = np.load(ds / "aud_mel.npy")
    np.save(ds / "aud_mel.npy", a[: a.shape[0] // 2])
    return ["aud_mel.npy", "feature length", "frame count"]


def _v_garbage_npy(ds):
    garbage(ds / "expr.npy")
    return ["expr.npy", "unreadable"]


def _v_pickled_npy(ds):
    np.save(ds / "aud_mel.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    return ["aud_mel.npy"]


def _v_landmarks_67(ds):
    p = ds / "ori_imgs" / "2.lms"
    p.write_text("\n".join(p.read_text().splitlines()[:67]))
    return ["ori_imgs/2.lms", "68"]


def _v_au_csv_column(ds):
    p = ds / "au.csv"
    p.write_text(p.read_text().replace("AU45_r", "AU46_r"))
    return ["au.csv", "AU45_r"]


def _v_au_rows(ds):
    p = ds / "au.csv"
    p.write_text("\n".join(p.read_text().splitlines()[:10]) + "\n")
    return ["au.csv"]


def _v_image_size(ds):
    from PIL import Image

    Image.new("RGB", (32, 48), (10, 20, 30)).save(ds / "ori_imgs" / "1.jpg")
    return ["ori_imgs/1.jpg", "size"]


def _v_parsing_colours(ds):
    from PIL import Image

    p = ds / "parsing" / "4.png"
    a = np.asarray(Image.open(p).convert("RGB")).copy()
    a[:8, :8] = (12, 34, 56)
    Image.fromarray(a).save(p)
    return ["parsing/4.png", "palette"]


def _v_missing_frame(ds):
    (ds / "parsing" / "6.png").unlink()
    return ["parsing/6.png", "missing"]


def _v_empty_dir(ds):
    shutil.rmtree(ds)
    ds.mkdir()
    return ["no clips found", "transforms_train.json"]


def _v_no_frames(ds):
    for n in ("transforms_train.json", "transforms_val.json"):
        edit_json(ds / n, lambda d: d.update(frames=[]))
    return ["transforms_train.json", "frames"]


def _v_duplicate_img_id(ds):
    def f(d):
        d["frames"][1]["img_id"] = d["frames"][0]["img_id"]
    edit_json(ds / "transforms_train.json", f)
    return ["transforms_train.json", "duplicate img_id"]


VALIDATE_CASES = {f.__name__[3:]: f for f in [
    _v_truncated_jpg, _v_garbage_png, _v_truncated_json, _v_json_field_type, _v_non_rigid_pose, _v_img_id_dotdot,
    _v_img_id_absolute, _v_symlink_frame_out, _v_symlink_dir_out, _v_symlink_wav_out, _v_symlink_expr_out,
    _v_wav_44k_stereo, _v_truncated_wav, _v_wav_too_short, _v_expr_nan, _v_feature_inf, _v_feature_length,
    _v_garbage_npy, _v_pickled_npy, _v_landmarks_67, _v_au_csv_column, _v_au_rows, _v_image_size,
    _v_parsing_colours, _v_missing_frame, _v_empty_dir, _v_no_frames, _v_duplicate_img_id]}


@pytest.mark.parametrize("case", sorted(VALIDATE_CASES))
def test_validate_rejects(case, regular):
    from ua3dtalk.cli.validate import main

    needles = VALIDATE_CASES[case](regular)
    before = tree(regular)
    r = call_main(main, [str(regular), "--no-progress"])
    assert_user_error(r, *needles, codes=(1,))
    assert tree(regular) == before, "ua3dtalk-validate wrote into the dataset"


def test_loader_raises_the_same_error_as_the_validator(regular):
    """The training loaders run the validator's checks: the error is a DatasetError naming the file."""
    from ua3dtalk.data import load_dataset
    from ua3dtalk.data.formats import DatasetError

    _v_symlink_wav_out(regular)
    with pytest.raises(DatasetError, match="aud.wav.*outside the dataset"):
        load_dataset(regular)


# --------------------------------------------------------------------------------------------------
# emotional layout
# --------------------------------------------------------------------------------------------------


def _clip(root: Path) -> Path:
    return sorted(p.parent for p in root.rglob("emotion.json"))[0]


def test_validate_unknown_emotion_name(emotional):
    from ua3dtalk.cli.validate import main

    ej = _clip(emotional) / "emotion.json"
    edit_json(ej, lambda d: d.update(emotion="furious"))
    r = call_main(main, [str(emotional), "--no-progress", "--quick"])
    assert_user_error(r, "emotion.json", "furious", "neutral", codes=(1,))


def test_validate_intensity_out_of_range(emotional):
    from ua3dtalk.cli.validate import main

    ej = _clip(emotional) / "emotion.json"
    edit_json(ej, lambda d: d.update(intensity=7))
    r = call_main(main, [str(emotional), "--no-progress", "--quick"])
    assert_user_error(r, "emotion.json", "intensity", codes=(1,))


def test_validate_index_entry_symlinked_out_of_the_root(emotional, tmp_path):
    from ua3dtalk.cli.validate import main

    clip = _clip(emotional)
    outside = tmp_path / "outside_clip"
    shutil.move(str(clip), str(outside))
    clip.symlink_to(outside, target_is_directory=True)
    rel = clip.relative_to(emotional)
    (emotional / "clips.json").write_text(json.dumps([str(rel)]))
    r = call_main(main, [str(emotional), "--no-progress", "--quick"])
    assert_user_error(r, str(rel), "symlink", codes=(1,))


# --------------------------------------------------------------------------------------------------
# ua3dtalk-features
# --------------------------------------------------------------------------------------------------


def _drop_features(ds: Path) -> None:
    for p in ds.glob("aud_*"):
        p.unlink()


def test_features_corrupt_wav_writes_nothing(regular):
    from ua3dtalk.cli.features import main

    _drop_features(regular)
    garbage(regular / "aud.wav", 4000)
    before = tree(regular)
    r = call_main(main, [str(regular), "--extractor", "mel", "--no-progress"])
    assert_user_error(r, "aud.wav", codes=(1,))
    assert tree(regular) == before


def test_features_missing_model_writes_nothing(regular, tmp_path):
    from ua3dtalk.cli.features import main

    before = tree(regular)
    r = call_main(main, [str(regular), "--extractor", "wav2vec2", "--model", str(tmp_path / "no-such-model"),
                         "--no-progress"])
    assert_user_error(r, "no-such-model", codes=(1,))
    assert tree(regular) == before


def test_features_not_a_dataset(tmp_path):
    from ua3dtalk.cli.features import main

    r = call_main(main, [str(tmp_path / "nowhere"), "--extractor", "mel", "--no-progress"])
    assert_user_error(r, "nowhere", codes=(1,))


def test_features_model_option_for_mel_is_a_usage_error(regular):
    from ua3dtalk.cli.features import main

    r = call_main(main, [str(regular), "--extractor", "mel", "--layer", "3"])
    assert_user_error(r, "--layer", codes=(2,))


# --------------------------------------------------------------------------------------------------
# ua3dtalk-synth
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("argv,needles", [
    (["--preset", "enormous"], ["--preset", "tiny"]),
    (["--resolution", "0"], ["resolution"]),
    (["--resolution", "-64"], ["resolution"]),
    (["--emotional", "--clips-per-level", "0"], ["--clips-per-level"]),
    (["--features", "mfcc9000"], ["--features", "mfcc9000"]),
], ids=["unknown-preset", "zero-resolution", "negative-resolution", "zero-clips", "unknown-extractor"])
def test_synth_bad_arguments_write_nothing(argv, needles, tmp_path):
    from ua3dtalk.cli.synth import main

    out = tmp_path / "out"
    r = call_main(main, ["--out", str(out), "--preset", "tiny", *argv])
    assert_user_error(r, *needles)
    assert tree(out) == {}, f"half-written dataset left: {sorted(tree(out))[:5]}"


def test_synth_out_is_a_file(tmp_path):
    from ua3dtalk.cli.synth import main

    f = tmp_path / "afile"
    f.write_text("x")
    r = call_main(main, ["--out", str(f), "--preset", "tiny"])
    assert_user_error(r, "afile")
    assert f.read_text() == "x"


# --------------------------------------------------------------------------------------------------
# ua3dtalk-infer (a checkpoint trained for two steps by the ``trained_ckpt`` fixture)
# --------------------------------------------------------------------------------------------------


def _infer(tmp_path, **kw) -> tuple:
    from ua3dtalk.cli.infer import main

    out = tmp_path / "video" / "out.mp4"
    args = {"out": out, **kw}
    r = call_main(main, [f"{k}={v}" for k, v in args.items()])
    return r, out


def _no_video(out: Path) -> None:
    assert not out.exists(), "an output video was written"
    if out.parent.exists():
        assert temp_leftovers(out.parent) == [], temp_leftovers(out.parent)


def test_infer_missing_checkpoint(tmp_path, speech):
    r, out = _infer(tmp_path, ckpt=tmp_path / "nope.ckpt", audio=speech)
    assert_user_error(r, "nope.ckpt", "not found")
    _no_video(out)


def test_infer_truncated_checkpoint(trained_ckpt, tmp_path, speech):
    bad = tmp_path / "trunc.ckpt"
    bad.write_bytes(trained_ckpt.read_bytes()[: trained_ckpt.stat().st_size // 3])
    r, out = _infer(tmp_path, ckpt=bad, audio=speech)
    assert_user_error(r, "trunc.ckpt", "not a loadable checkpoint")
    _no_video(out)


def test_infer_checkpoint_with_nan(trained_ckpt, tmp_path, speech):
    ck = torch.load(trained_ckpt, weights_only=True)
    key = next(k for k, v in ck["state_dict"].items() if k.startswith("head.deformation.") and v.is_floating_point())
    ck["state_dict"][key].view(-1)[0] = float("nan")
    bad = tmp_path / "nan.ckpt"
    torch.save(ck, bad)
    r, out = _infer(tmp_path, ckpt=bad, audio=speech)
    assert_user_error(r, "nan.ckpt", "NaN", key)
    _no_video(out)


def test_infer_checkpoint_of_another_program(tmp_path, speech):
    other = tmp_path / "other.ckpt"
    torch.save({"state_dict": {"layer.weight": torch.ones(2, 2)}, "epoch": 3}, other)
    r, out = _infer(tmp_path, ckpt=other, audio=speech)
    assert_user_error(r, "other.ckpt", "model configuration")
    _no_video(out)


def test_infer_checkpoint_of_another_config(trained_ckpt, tmp_path, speech):
    """A checkpoint whose weights do not fit its stored configuration (other sizes) is refused with
    the mismatched keys listed."""
    ck = torch.load(trained_ckpt, weights_only=True)
    ck["ua3dtalk"]["model_config"]["deformation"]["field_resolution"] = 12
    bad = tmp_path / "otherconf.ckpt"
    torch.save(ck, bad)
    r, out = _infer(tmp_path, ckpt=bad, audio=speech)
    assert_user_error(r, "otherconf.ckpt", "deformation")
    _no_video(out)


def test_infer_corrupt_audio(trained_ckpt, tmp_path):
    wav = tmp_path / "bad.wav"
    garbage(wav, 3000)
    r, out = _infer(tmp_path, ckpt=trained_ckpt, audio=wav)
    assert_user_error(r, "bad.wav")
    _no_video(out)


def test_infer_unknown_emotion(trained_ckpt, tmp_path, speech):
    r, out = _infer(tmp_path, ckpt=trained_ckpt, audio=speech, emotion="furious")
    assert_user_error(r, "furious", "happy")
    _no_video(out)


def test_infer_intensity_out_of_range(trained_ckpt, tmp_path, speech):
    r, out = _infer(tmp_path, ckpt=trained_ckpt, audio=speech, emotion="happy", intensity=9)
    assert_user_error(r, "intensity", "9")
    _no_video(out)


def test_infer_pose_file_of_wrong_shape(trained_ckpt, tmp_path, speech):
    pose = tmp_path / "pose.npy"
    np.save(pose, np.zeros((10, 3, 3), np.float32))
    r, out = _infer(tmp_path, ckpt=trained_ckpt, audio=speech, pose=pose)
    assert_user_error(r, "pose.npy", "4")
    _no_video(out)


def test_infer_unknown_argument(tmp_path, speech, trained_ckpt):
    r, out = _infer(tmp_path, ckpt=trained_ckpt, audio=speech, emotin="happy")
    assert_user_error(r, "emotin", codes=(2,))
    _no_video(out)


# --------------------------------------------------------------------------------------------------
# ua3dtalk-train (in-process; Hydra)
# --------------------------------------------------------------------------------------------------




def _train(root, run_dir, *extra):
    from ua3dtalk.cli.train import main

    r = call_main(main, train_overrides(root, run_dir, *extra))
    torch.set_grad_enabled(True)
    return r


def test_train_config_typo(synth_emotional_small, tmp_path):
    r = _train(synth_emotional_small, tmp_path / "run", "stage_step.face=3")
    assert_user_error(r, "stage_step")
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_train_unknown_stage(synth_emotional_small, tmp_path):
    r = _train(synth_emotional_small, tmp_path / "run", "stages=[prior,teeth]")
    assert_user_error(r, "teeth", "fuse")
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_train_missing_dataset(tmp_path):
    r = _train(tmp_path / "no_dataset", tmp_path / "run", "stages=[face]")
    assert_user_error(r, "no_dataset")
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_train_corrupt_frame_found_during_training(emotional, tmp_path):
    """A truncated JPEG passes the loaders' quick (header) check and fails when decoded in the
    training loop: the run stops with the file's name, no traceback."""
    for p in list(emotional.rglob("ori_imgs/*.jpg")) + list(emotional.rglob("gt_imgs/*.jpg")):
        truncate(p, 0.85)  # the header survives: the quick check at start-up passes
    r = _train(emotional, tmp_path / "run", "stages=[face]")
    assert_user_error(r, ".jpg")


def test_train_one_frame_dataset(regular, tmp_path):
    """A dataset with a single frame has no validation frame: refused with the reason."""
    def keep_first(d):
        d["frames"] = d["frames"][:1]
    edit_json(regular / "transforms_train.json", keep_first)
    (regular / "transforms_val.json").unlink()
    write_wav(regular / "aud.wav", 1 / 25)
    for p in regular.glob("aud_*"):
        p.unlink()
    a = np.load(regular / "expr.npy")
    np.save(regular / "expr.npy", a[:1])
    (regular / "au.csv").write_text("\n".join((regular / "au.csv").read_text().splitlines()[:2]) + "\n")
    r = _train(regular, tmp_path / "run", "data=synth_tiny", f"data.root={regular}", "data.synth=null",
               "stages=[face]")
    assert_user_error(r, "frame")


def test_train_resume_from_a_corrupt_checkpoint(trained_run, synth_emotional_small, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(trained_run, run_dir)
    (run_dir / "checkpoints" / "face" / "done.json").unlink()
    ck = run_dir / "checkpoints" / "face" / "last.ckpt"
    truncate(ck, 0.5)
    r = _train(synth_emotional_small, run_dir, "stages=[emotion,face]", "stage_steps.face=2", "stage_steps.emotion=2",
               "resume=true")  # the run's own configuration (another one is refused before any checkpoint is read)
    assert_user_error(r, "last.ckpt", "not a loadable checkpoint")


def test_train_huge_gaussian_count(synth_emotional_small, tmp_path):
    r = _train(synth_emotional_small, tmp_path / "run", "stages=[face]", "model.face.num_points=2000000000")
    assert_user_error(r, "num_points")
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_train_unknown_renderer_backend(synth_emotional_small, tmp_path):
    r = _train(synth_emotional_small, tmp_path / "run", "stages=[face]", "model.backend=vulkan")
    assert_user_error(r, "vulkan")


# --------------------------------------------------------------------------------------------------
# ua3dtalk-preprocess / ua3dtalk-import-mead
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def small_video(tmp_path_factory) -> Path:
    """A 1.2 s 64² mp4 (25 fps) with an audio track (the tiny synthetic clip, muxed)."""
    from ua3dtalk.utils.io import write_video

    d = tmp_path_factory.mktemp("video")
    frames = [np.full((64, 64, 3), 40 + 5 * i, np.uint8) for i in range(30)]
    wav = d / "a.wav"
    write_wav(wav, 1.2)
    out = d / "clip.mp4"
    write_video(out, frames, fps=25, audio_path=wav)
    return out


def _preprocess(video, out, *extra):
    from ua3dtalk.cli.preprocess import main

    return call_main(main, [str(video), "--out", str(out), "--no-progress", "--size", "64", *extra])


def _no_partial_files(out: Path) -> None:
    assert temp_leftovers(out) == [] if out.exists() else True


def test_preprocess_truncated_mp4(small_video, tmp_path):
    v = tmp_path / "trunc.mp4"
    v.write_bytes(small_video.read_bytes()[: small_video.stat().st_size // 3])
    out = tmp_path / "ds"
    r = _preprocess(v, out)
    assert_user_error(r, "trunc.mp4", codes=(1,))
    _no_partial_files(out)


def test_preprocess_not_a_video(tmp_path):
    v = tmp_path / "notes.mp4"
    v.write_text("this is not a video\n" * 100)
    out = tmp_path / "ds"
    r = _preprocess(v, out)
    assert_user_error(r, "notes.mp4", codes=(1,))
    assert tree(out) == {}


def test_preprocess_missing_video(tmp_path):
    out = tmp_path / "ds"
    r = _preprocess(tmp_path / "ghost.mp4", out)
    assert_user_error(r, "ghost.mp4", codes=(1,))
    assert tree(out) == {}


def test_preprocess_corrupt_audio_file(small_video, tmp_path):
    wav = tmp_path / "voice.wav"
    garbage(wav, 5000)
    out = tmp_path / "ds"
    r = _preprocess(small_video, out, "--audio", str(wav))
    assert_user_error(r, "voice.wav", codes=(1,))
    _no_partial_files(out)


def test_preprocess_unknown_step(small_video, tmp_path):
    r = _preprocess(small_video, tmp_path / "ds", "--steps", "decode,teleport")
    assert_user_error(r, "teleport", codes=(2,))


def test_import_mead_without_a_mead_tree(tmp_path):
    from ua3dtalk.cli.import_mead import main

    (tmp_path / "mead" / "M003").mkdir(parents=True)
    out = tmp_path / "out"
    r = call_main(main, [str(tmp_path / "mead"), "--subject", "M003", "--out", str(out), "--no-progress"])
    assert_user_error(r, "M003", codes=(1,))
    assert tree(out) == {}


def test_import_mead_unknown_emotion(tmp_path):
    from ua3dtalk.cli.import_mead import main

    r = call_main(main, [str(tmp_path), "--subject", "M003", "--out", str(tmp_path / "o"), "--emotions", "furious"])
    assert_user_error(r, "--emotions", "neutral", codes=(2,))


# --------------------------------------------------------------------------------------------------
# ua3dtalk-tables
# --------------------------------------------------------------------------------------------------


def test_tables_corrupt_metrics_json(trained_run, tmp_path):
    runs = tmp_path / "runs" / "smoke" / "synth0" / "seed0"
    runs.mkdir(parents=True)
    (runs / "metrics.json").write_text(json.loads(json.dumps((trained_run / "metrics.json").read_text()))[:40])
    out = tmp_path / "table.md"
    from ua3dtalk.cli.tables import main

    r = call_main(main, ["--runs", str(tmp_path / "runs"), "--table", "ablation", "--out", str(out)])
    assert_user_error(r, "metrics.json")
    assert not out.exists()


def _run_metrics(trained_run, root: Path, seed: int, psnr: float) -> Path:
    d = json.loads((trained_run / "metrics.json").read_text())
    d.update({"experiment": "paper_mead", "seed": seed, "val/psnr": psnr})
    p = root / "paper_mead" / "synth0" / f"seed{seed}" / "metrics.json"
    p.parent.mkdir(parents=True)
    p.write_text(json.dumps(d))
    return p


def test_tables_nan_metric_is_never_averaged_silently(trained_run, tmp_path):
    from ua3dtalk.cli.tables import main

    runs = tmp_path / "runs"
    _run_metrics(trained_run, runs, 1, 30.0)
    _run_metrics(trained_run, runs, 2, 32.0)
    bad = _run_metrics(trained_run, runs, 3, float("nan"))
    r = call_main(main, ["--runs", str(runs), "--table", "ablation", "--published"])
    assert r.exc is None, r.tb
    if r.code:
        assert_user_error(r, str(bad.parent.name), "psnr")
        return
    row = next(ln for ln in r.out.splitlines() if ln.startswith("| UA-3DTalk"))
    psnr_cell = row.split("|")[2]
    flagged = ((str(bad) in r.err and "psnr" in r.err.lower())
               or any(m in psnr_cell.lower() for m in ("nan", "n=2", "†")))
    assert flagged, f"the NaN run vanished from the mean without a mark:\n{r.out}\n{r.err}"


def test_tables_unknown_table(tmp_path):
    from ua3dtalk.cli.tables import main

    r = call_main(main, ["--runs", str(tmp_path), "--table", "paper_t9"])
    assert_user_error(r, "--table", codes=(2,))


# --------------------------------------------------------------------------------------------------
# ua3dtalk-eval / ua3dtalk-score / ua3dtalk-evaluators
# --------------------------------------------------------------------------------------------------


def test_eval_missing_checkpoint(tmp_path):
    from ua3dtalk.cli.eval import main

    r = call_main(main, [f"ckpt={tmp_path / 'gone.ckpt'}", f"out={tmp_path / 'o'}", "metrics=psnr"])
    assert_user_error(r, "gone.ckpt")
    assert tree(tmp_path / "o") == {}


def test_eval_unknown_split(trained_ckpt, tmp_path):
    from ua3dtalk.cli.eval import main

    r = call_main(main, [f"ckpt={trained_ckpt}", "split=holdout", f"out={tmp_path / 'o'}"])
    assert_user_error(r, "split", "holdout")
    assert tree(tmp_path / "o") == {}


def test_eval_checkpoint_of_another_program(tmp_path):
    from ua3dtalk.cli.eval import main

    other = tmp_path / "other.ckpt"
    torch.save({"state_dict": {"w": torch.ones(2)}}, other)
    r = call_main(main, [f"ckpt={other}", f"out={tmp_path / 'o'}", "metrics=psnr"])
    assert_user_error(r, "other.ckpt")
    assert tree(tmp_path / "o") == {}


@pytest.fixture(scope="module")
def two_videos(tmp_path_factory):
    from ua3dtalk.utils.io import write_video

    d = tmp_path_factory.mktemp("score")
    wav = d / "a.wav"
    write_wav(wav, 0.8)
    write_video(d / "gt.mp4", [np.full((32, 32, 3), 90, np.uint8)] * 20, audio_path=wav)
    write_video(d / "short.mp4", [np.full((32, 32, 3), 90, np.uint8)] * 12)
    return d


def test_score_truncated_prediction(two_videos, tmp_path):
    from ua3dtalk.cli.score import main

    pred = tmp_path / "pred.mp4"
    pred.write_bytes((two_videos / "gt.mp4").read_bytes()[:700])
    out = tmp_path / "s.json"
    r = call_main(main, [str(pred), str(two_videos / "gt.mp4"), "--metrics", "psnr", "--json", str(out)])
    assert_user_error(r, "pred.mp4")
    assert not out.exists() and temp_leftovers(tmp_path) == []


def test_score_frame_count_mismatch(two_videos, tmp_path):
    from ua3dtalk.cli.score import main

    out = tmp_path / "s.json"
    r = call_main(main, [str(two_videos / "short.mp4"), str(two_videos / "gt.mp4"), "--metrics", "psnr",
                         "--json", str(out)])
    assert_user_error(r, "12", "20")
    assert not out.exists()


def test_evaluators_train_on_a_missing_dataset(tmp_path):
    from ua3dtalk.cli.evaluators import main

    r = call_main(main, ["train", "--data", str(tmp_path / "nodata"), "--out", str(tmp_path / "ev"), "--no-progress"])
    assert_user_error(r, "nodata")
    assert tree(tmp_path / "ev") == {}


def test_evaluators_show_without_manifest(tmp_path):
    from ua3dtalk.cli.evaluators import main

    r = call_main(main, ["show", str(tmp_path)])
    assert_user_error(r, "manifest.json")
    (tmp_path / "manifest.json").write_text("[1, 2")
    assert_user_error(call_main(main, ["show", str(tmp_path)]), "manifest.json")


@pytest.mark.parametrize("case", ["no_manifest", "garbage_manifest", "no_dataset", "not_a_dataset"])
def test_evaluators_check_bad_inputs(tmp_path, case):
    """``ua3dtalk-evaluators check``: one line naming the file or argument, exit 2, nothing written."""
    from ua3dtalk.cli.evaluators import main

    ev, data = tmp_path / "ev", tmp_path / "data"
    ev.mkdir()
    data.mkdir()
    if case != "no_manifest":
        (ev / "manifest.json").write_text("{not json" if case == "garbage_manifest" else json.dumps(
            {"clips": ["a/b/c"], "clips_role": "evaluator", "evaluators": {}}))
    if case == "no_dataset":
        data = tmp_path / "missing"
    before = tree(tmp_path)
    r = call_main(main, ["check", str(ev), "--data", str(data)])
    assert_user_error(r, {"no_manifest": "manifest.json", "garbage_manifest": "manifest.json",
                          "no_dataset": "missing", "not_a_dataset": str(data)}[case])
    assert tree(tmp_path) == before


# --------------------------------------------------------------------------------------------------
# APIs: rasterize and the Gaussian model
# --------------------------------------------------------------------------------------------------


def _scene(n=8):
    g = torch.Generator().manual_seed(0)
    means = torch.randn(n, 3, generator=g) * 0.1 + torch.tensor([0.0, 0.0, 3.0])
    K = torch.tensor([[50.0, 0, 32], [0, 50.0, 32], [0, 0, 1]])
    return dict(means=means, quats=torch.randn(n, 4, generator=g), scales=torch.full((n, 3), 0.02),
                opacities=torch.full((n,), 0.5), colors=torch.rand(n, 3, generator=g), viewmat=torch.eye(4), K=K)


@pytest.mark.parametrize("w,h", [(100_000, 100_000), (1 << 31, 1), (0, 64), (64, -1)])
def test_rasterize_image_size_is_checked_before_allocating(w, h):
    from ua3dtalk.render import rasterize

    with pytest.raises(ValueError, match=r"rasterize: .*(width|height)"):
        rasterize(**_scene(), width=w, height=h)


def test_rasterize_zero_area_scene_renders_background():
    """Every Gaussian behind the camera (nothing projects): background, zero alpha, finite."""
    from ua3dtalk.render import rasterize

    s = _scene()
    s["means"][:, 2] = -3.0
    bg = torch.tensor([0.2, 0.4, 0.6])
    out = rasterize(**s, width=16, height=12, background=bg)
    assert torch.equal(out.alpha, torch.zeros(12, 16, 1))
    assert torch.allclose(out.image, bg.expand(12, 16, 3))
    assert int(out.radii.max()) == 0


@pytest.mark.parametrize("n", [-5, 2_000_000_000])
def test_gaussian_model_count_is_checked(n):
    from ua3dtalk.models.gaussians import GaussianModel

    with pytest.raises(ValueError, match="num_points"):
        GaussianModel(num_points=n)


# --------------------------------------------------------------------------------------------------
# console scripts: real processes (a few cases; each costs the interpreter start-up)
# --------------------------------------------------------------------------------------------------


def test_console_scripts_exit_cleanly(regular, tmp_path, speech):
    _v_truncated_jpg(regular)
    r = run_cli("validate", [regular, "--no-progress"])
    assert_user_error(r, "ori_imgs/3.jpg", codes=(1,))
    garbage(regular / "aud.wav", 3000)
    _drop_features(regular)
    r = run_cli("features", [regular, "--extractor", "mel", "--no-progress"])
    assert_user_error(r, "aud.wav", codes=(1,))
    assert not list(regular.glob("aud_*")) and not list(regular.glob(".aud_*"))
    out = tmp_path / "o.mp4"
    r = run_cli("infer", [f"ckpt={tmp_path / 'missing.ckpt'}", f"audio={speech}", f"out={out}"])
    assert_user_error(r, "missing.ckpt", codes=(2,))
    assert not out.exists()
