"""ua3dtalk-validate: one test per problem kind (file + message printed, exit 1), and the loaders
raise DatasetError with the same problem."""
from __future__ import annotations

import json
import os
import runpy
import sys

import numpy as np
import pytest
import soundfile as sf
from PIL import Image

from dataset_builders import make_emotional, make_regular, parsing_map, write_wav
from ua3dtalk.cli.validate import main
from ua3dtalk.data.formats import DatasetError
from ua3dtalk.data.loading import load_dataset


def edit_json(path, fn):
    d = json.loads(path.read_text())
    fn(d)
    path.write_text(json.dumps(d))


def rm(p):
    os.remove(p)


def garbage(p):
    p.write_bytes(b"\x00garbage, not an image")


def truncate(p):
    p.write_bytes(p.read_bytes()[:120])


def stereo_44k(p):
    write_wav(p, 11 / 25, sr=44100, channels=2)


def bad_palette(p):
    a = parsing_map(5)
    a[3:5, 3:5] = (12, 34, 56)
    Image.fromarray(a).save(p)


def jpeg_parsing(p):
    Image.fromarray(parsing_map(5)).save(p.with_suffix(".tmp.jpg"), quality=60)
    os.replace(p.with_suffix(".tmp.jpg"), p)  # lossy colours, still named .png


def nan_array(p):
    a = np.load(p)
    a.flat[7] = np.nan
    np.save(p, a)


def long_features(p):
    np.save(p, np.zeros((21, 16, 29), np.float32))


def lms_67(p):
    np.savetxt(p, np.zeros((67, 2)), "%d")


def lms_3cols(p):
    np.savetxt(p, np.zeros((68, 3)), "%d")


def symlink_outside(p):
    outside = p.parent.parent.parent / "elsewhere.jpg"
    Image.fromarray(np.zeros((24, 32, 3), np.uint8)).save(outside)
    os.remove(p)
    os.symlink(outside, p)


def no_au45(p):
    lines = p.read_text().splitlines()
    lines = [",".join(x for j, x in enumerate(ln.split(",")) if j != 12) for ln in lines]
    p.write_text("\n".join(lines) + "\n")


T = "transforms_train.json"
CASES = {
    # kind: (file to break, mutation, expected text in the report)
    "missing frame": ("ori_imgs/3.jpg", rm, "missing frame"),
    "missing parsing": ("parsing/4.png", rm, "missing frame"),
    "missing landmarks": ("ori_imgs/4.lms", rm, "missing frame"),
    "missing gt frame": ("gt_imgs/2.jpg", rm, "missing frame"),
    "unreadable image": ("ori_imgs/2.jpg", garbage, "unreadable"),
    "truncated image": ("gt_imgs/6.jpg", truncate, "unreadable"),
    "unreadable parsing": ("parsing/1.png", garbage, "unreadable"),
    "audio not 16 kHz mono": ("aud.wav", stereo_44k, "16 kHz mono, got 44100 Hz with 2 channel(s)"),
    "audio unreadable": ("aud.wav", garbage, "unreadable audio"),
    "feature length": ("aud_ds.npy", long_features, "feature length 21 frames ≠ frame count 11"),
    "json missing field": (T, lambda p: edit_json(p, lambda d: d.pop("focal_len")), "missing field 'focal_len'"),
    "json wrong type": (T, lambda p: edit_json(p, lambda d: d.update(cx="16")), "'cx' must be a finite number"),
    "json frames wrong type": (T, lambda p: edit_json(p, lambda d: d.update(frames={})),
                               "'frames' must be a non-empty list"),
    "json img_id wrong type": (T, lambda p: edit_json(p, lambda d: d["frames"][2].update(img_id=2.5)),
                               "frames[2]: img_id must be a non-negative integer"),
    "json missing matrix": (T, lambda p: edit_json(p, lambda d: d["frames"][1].pop("transform_matrix")),
                            "frames[1]: missing field 'transform_matrix'"),
    "json matrix shape": (T, lambda p: edit_json(p, lambda d: d["frames"][1].update(transform_matrix=[[1, 0], [0, 1]])),
                          "must be a 4×4 list of numbers"),
    "json matrix not rigid": (T, lambda p: edit_json(p, lambda d: d["frames"][0]["transform_matrix"][0].__setitem__(
        0, 2.0)), "not a rigid"),
    "json invalid": (T, lambda p: p.write_text('{"focal_len": 1,'), "invalid JSON"),
    "json duplicate img_id": ("transforms_val.json", lambda p: edit_json(p, lambda d: d["frames"][0].update(img_id=3)),
                              "duplicate img_id 3"),
    "img_id escapes (..)": (T, lambda p: edit_json(p, lambda d: d["frames"][0].update(img_id="../../etc/passwd")),
                            "would escape the dataset directory"),
    "img_id escapes (absolute)": (T, lambda p: edit_json(p, lambda d: d["frames"][0].update(img_id="/etc/passwd")),
                                  "would escape the dataset directory"),
    "symlink outside": ("ori_imgs/5.jpg", symlink_outside, "outside the dataset directory"),
    "parsing colours": ("parsing/5.png", bad_palette,
                        "4 pixels have colours outside the parsing palette (e.g. (12, 34, 56)×4"),
    "parsing jpeg noise": ("parsing/5.png", jpeg_parsing, "outside the parsing palette"),
    "NaN in expr": ("expr.npy", nan_array, "NaN or Inf"),
    "NaN in features": ("aud_ds.npy", nan_array, "NaN or Inf"),
    "expr wrong length": ("expr.npy", lambda p: np.save(p, np.zeros((9, 5), np.float32)), "[num_frames=11, K]"),
    "landmarks 67 rows": ("ori_imgs/7.lms", lms_67, "landmarks must be 68×2"),
    "landmarks 3 columns": ("ori_imgs/7.lms", lms_3cols, "landmarks must be 68×2"),
    "landmarks NaN": ("ori_imgs/8.lms", lambda p: p.write_text("nan 1\n" * 68), "NaN or Inf"),
    "au.csv without AU45_r": ("au.csv", no_au45, "missing column AU45_r"),
    "au.csv wrong rows": ("au.csv", lambda p: p.write_text("\n".join(p.read_text().splitlines()[:-1]) + "\n"),
                          "has 10 rows, the dataset has 11 frames"),
    "au.csv NaN": ("au.csv", lambda p: p.write_text(p.read_text().replace(" 0.98", " nan", 1)), "NaN or Inf"),
    "bc size": ("bc.jpg", lambda p: Image.fromarray(np.zeros((10, 10, 3), np.uint8)).save(p), "background size 10×10"),
    "torso without alpha": ("torso_imgs/3.png", lambda p: Image.fromarray(np.zeros((24, 32, 3), np.uint8)).save(p),
                            "alpha channel"),
    "frame size": ("ori_imgs/9.jpg", lambda p: Image.fromarray(np.zeros((20, 30, 3), np.uint8)).save(p),
                   "image size 30×20 differs"),
}


def run_cli(capsys, *args):
    code = main([*map(str, args), "--no-progress"])
    out = capsys.readouterr().out
    return code, out


def test_valid_dataset_exits_0(regular, capsys):
    code, out = run_cli(capsys, regular.root)
    assert code == 0, out
    assert "valid regular dataset, 11 frames (10 train / 1 val), 32×24" in out


@pytest.mark.parametrize("kind", list(CASES))
def test_problem_is_reported_with_its_file(kind, regular, capsys):
    rel, mutate, text = CASES[kind]
    mutate(regular.root / rel)
    code, out = run_cli(capsys, regular.root)
    assert code == 1, out
    lines = [ln for ln in out.splitlines() if ln.startswith(rel + ":") and text in ln]
    assert lines, f"expected a line '{rel}: …{text}…' in:\n{out}"
    assert "INVALID" in out.splitlines()[-1]
    # the loaders raise the same problem (quick level catches all but the pixel-level ones)
    pixel_level = ("truncated image", "parsing colours", "parsing jpeg noise", "torso without alpha")
    level = "full" if kind in pixel_level else "quick"
    with pytest.raises(DatasetError) as ei:
        load_dataset(regular.root, level=level)
    assert rel in str(ei.value) and text in str(ei.value)


def test_every_problem_is_listed_not_just_the_first(regular, capsys):
    os.remove(regular.root / "ori_imgs" / "1.jpg")
    garbage(regular.root / "ori_imgs" / "5.jpg")  # same directory as the missing frame: still checked
    lms_67(regular.root / "ori_imgs" / "6.lms")
    os.remove(regular.root / "parsing" / "2.png")
    nan_array(regular.root / "expr.npy")
    code, out = run_cli(capsys, regular.root)
    assert code == 1
    for rel in ("ori_imgs/1.jpg", "ori_imgs/5.jpg", "ori_imgs/6.lms", "parsing/2.png", "expr.npy"):
        assert any(ln.startswith(rel + ":") for ln in out.splitlines()), out


def test_missing_transforms_and_audio(tmp_path, capsys):
    spec = make_regular(tmp_path / "s", n=5, ds=False)
    os.remove(spec.root / "transforms_train.json")
    os.remove(spec.root / "aud.wav")
    code, out = run_cli(capsys, spec.root)
    assert code == 1
    assert "transforms_train.json: missing file" in out
    assert "aud.wav: missing file: a clip needs aud.wav" in out


def test_audio_length_mismatch(regular, capsys):
    sf.write(str(regular.root / "aud.wav"), np.zeros(16000 * 2, np.float32), 16000)  # 50 frames for 11
    code, out = run_cli(capsys, regular.root)
    assert code == 1 and "aud.wav: audio lasts 2.00 s = 50 frames at 25 fps, but the dataset has 11 frames" in out


def test_small_length_mismatch_is_a_warning(regular, capsys):
    np.save(regular.root / "aud_ds.npy", np.zeros((12, 16, 29), np.float32))
    code, out = run_cli(capsys, regular.root)
    assert code == 0, out
    assert "warning: aud_ds.npy: feature length 12 frames ≠ frame count 11: trimmed when read" in out
    code, _ = run_cli(capsys, regular.root, "--strict")
    assert code == 1


def test_emotional_root_valid_and_unknown_emotion(emotional, capsys):
    code, out = run_cli(capsys, emotional)
    assert code == 0, out
    assert "valid emotional dataset, 3 clips, 18 frames, subjects: M003, emotions: happy, neutral, sad" in out
    ej = emotional / "M003" / "happy" / "level_2" / "001" / "emotion.json"
    ej.write_text(json.dumps({"emotion": "joy", "intensity": 2}))
    code, out = run_cli(capsys, emotional)
    assert code == 1
    assert "M003/happy/level_2/001/emotion.json: unknown emotion 'joy'" in out


def test_emotional_clip_problem_names_the_clip_file(emotional, capsys):
    os.remove(emotional / "M003" / "sad" / "level_1" / "002" / "parsing" / "3.png")
    code, out = run_cli(capsys, emotional)
    assert code == 1 and "M003/sad/level_1/002/parsing/3.png: missing frame" in out


def test_index_entry_escaping_the_root(tmp_path, capsys):
    root = tmp_path / "root"
    make_regular(root / "a", n=5)
    (root / "clips.txt").write_text("a\n../outside\n")
    code, out = run_cli(capsys, root)
    assert code == 1 and "clips.txt: entry 1: clip directory '../outside' would escape the dataset directory" in out


def test_index_listing_a_clip_twice(tmp_path, capsys):
    """A clip listed twice — also spelled differently or through a link — would be trained on and scored twice:
    refused, naming the entries."""
    root = tmp_path / "root"
    make_regular(root / "a", n=5)
    make_regular(root / "b", n=5)
    (root / "alias").symlink_to(root / "b")
    (root / "clips.txt").write_text("a\nb\n./a\nalias\n")
    code, out = run_cli(capsys, root)
    assert code == 1
    assert "clips.txt: entry 2: clip directory './a' is listed twice (first as entry 0)" in out
    assert "clips.txt: entry 3: clip directory 'alias' is listed twice (first as entry 1)" in out


def test_empty_directory(tmp_path, capsys):
    code, out = run_cli(capsys, tmp_path)
    assert code == 1 and "no clips found" in out


def test_python_dash_m_entry_point(tmp_path, monkeypatch, capsys):
    """``python -m ua3dtalk.cli.validate DIR`` (run in-process: same ``__main__`` path, no interpreter start-up)."""
    spec = make_regular(tmp_path / "s", n=5)
    os.remove(spec.root / "parsing" / "0.png")
    monkeypatch.setattr(sys, "argv", ["validate", str(spec.root), "--quick", "--no-progress"])
    sys.modules.pop("ua3dtalk.cli.validate", None)
    with pytest.raises(SystemExit) as e:
        runpy.run_module("ua3dtalk.cli.validate", run_name="__main__")
    assert e.value.code == 1 and "parsing/0.png: missing frame" in capsys.readouterr().out


def test_emotional_helper_builds_a_valid_tree(tmp_path):
    dirs = make_emotional(tmp_path / "e", clips=(("contempt", 3),))
    assert (dirs[0] / "emotion.json").exists()
    assert load_dataset(tmp_path / "e")[0].emotion_name == "contempt"
