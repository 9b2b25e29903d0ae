"""Interrupted work (issue 8 items 3 and 5): SIGKILL at chosen and at random points, disk full.

* Deterministic crash points (:mod:`robustness_killer`, a process that SIGKILLs itself inside a
  write): a checkpoint half written, a feature cache half written, a feature cache whose array was
  replaced but whose record was not, a synthetic dataset after 10 frames, the preprocessing decode
  step after 12 frames. After each: the previous file is intact (or nothing appears under the final
  name), nothing corrupt is readable, and rerunning produces exactly the uninterrupted result and
  removes the crashed writer's temporary files.
* Disk full (``OSError(ENOSPC)`` raised in the middle of a write): the previous checkpoint / cache
  stays intact, no temporary file remains, and the error names the file.
* The kill-and-resume loop (``slow``): ``ua3dtalk-train`` (two stages, a checkpoint every step) is
  SIGKILLed repeatedly — once while a checkpoint is being written, then at random times — and
  resumed with ``resume=true`` each time. After every kill every ``*.ckpt`` loads with
  ``weights_only=True`` and no stage's checkpoint went backwards; every resume starts from the last
  checkpoint; the final weights and metrics equal an uninterrupted run's bit for bit, and no byte of
  temporary files is left.
"""
from __future__ import annotations

import contextlib
import errno
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from robustness_helpers import HERE, REPO, temp_leftovers, train_overrides, tree

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::DeprecationWarning")


def _env() -> dict:
    e = dict(os.environ)
    e.update({"WANDB_MODE": "offline", "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1",
              "PYTHONPATH": os.pathsep.join([str(HERE), e.get("PYTHONPATH", "")])})
    return e


def _files(d: Path) -> dict[str, bytes]:
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(Path(d).rglob("*")) if p.is_file()}


# --------------------------------------------------------------------------------------------------
# deterministic crash points
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def video(tmp_path_factory) -> Path:
    from ua3dtalk.utils.io import write_video

    d = tmp_path_factory.mktemp("kvideo")
    import soundfile as sf

    t = np.arange(int(1.6 * 16000)) / 16000
    sf.write(str(d / "a.wav"), (0.2 * np.sin(2 * np.pi * 180 * t)).astype(np.float32), 16000)
    g = np.random.default_rng(0)
    frames = [(g.random((64, 64, 3)) * 40 + 60 + 3 * i).astype(np.uint8) for i in range(40)]
    write_video(d / "clip.mp4", frames, audio_path=d / "a.wav")
    return d / "clip.mp4"


def test_sigkill_inside_writes_loses_nothing(regular, tmp_path, video):
    from ua3dtalk.callbacks.checkpoint import AtomicCheckpointIO, read_checkpoint
    from ua3dtalk.data.audio import extract_features
    from ua3dtalk.data.extractors import MelExtractor
    from ua3dtalk.data.synth import generate_subject

    # ---- set up one directory per scenario, with the state an earlier successful run left
    d = {k: tmp_path / k for k in ("checkpoint", "features-npy", "features-record", "synth", "preprocess")}
    for p in d.values():
        p.mkdir()
    good = {"state_dict": {"w": torch.ones(256, 256)}, "ua3dtalk": {"version": 1}, "global_step": 1}
    AtomicCheckpointIO().save_checkpoint(good, d["checkpoint"] / "last.ckpt")
    ckpt_before = (d["checkpoint"] / "last.ckpt").read_bytes()
    for k in ("features-npy", "features-record"):
        shutil.copytree(regular, d[k] / "clip")
        d[k] = d[k] / "clip"
    feat_before = {k: (d[k] / "aud_mel.npy").read_bytes() for k in ("features-npy", "features-record")}
    shutil.copy(video, d["preprocess"] / "clip.mp4")

    # ---- every scenario in its own process, all at once; each SIGKILLs itself inside the write
    procs = {k: subprocess.Popen([sys.executable, str(HERE / "robustness_killer.py"), k, str(p)], env=_env(),
                                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for k, p in d.items()}
    for k, p in procs.items():
        out = p.communicate(timeout=600)[0]
        assert p.returncode == -signal.SIGKILL, f"{k}: exit {p.returncode}, not killed:\n{out[-3000:]}"

    # ---- checkpoint: the old file is intact and loads; the half-written temporary is not under the name
    assert (d["checkpoint"] / "last.ckpt").read_bytes() == ckpt_before
    assert read_checkpoint(d["checkpoint"] / "last.ckpt")["global_step"] == 1
    assert len(temp_leftovers(d["checkpoint"])) == 1  # the killed writer's temporary (cannot delete itself)
    AtomicCheckpointIO().save_checkpoint({**good, "global_step": 2}, d["checkpoint"] / "last.ckpt")
    assert temp_leftovers(d["checkpoint"]) == [], "the next save did not remove the dead writer's temporary"
    assert read_checkpoint(d["checkpoint"] / "last.ckpt")["global_step"] == 2

    # ---- feature cache killed inside np.save: the old cache is intact; rerun → the uninterrupted result
    assert (d["features-npy"] / "aud_mel.npy").read_bytes() == feat_before["features-npy"]
    extract_features(d["features-npy"], MelExtractor(), force=True)
    assert (d["features-npy"] / "aud_mel.npy").read_bytes() == feat_before["features-npy"]
    assert temp_leftovers(d["features-npy"]) == []

    # ---- killed between the array and its record: the stale pair is detected and recomputed
    assert (d["features-record"] / "aud_mel.npy").read_bytes() != feat_before["features-record"]
    extract_features(d["features-record"], MelExtractor())
    assert (d["features-record"] / "aud_mel.npy").read_bytes() == feat_before["features-record"], \
        "an array computed with other parameters was reused under the old record"

    # ---- synthetic dataset: no partial subject directory; rerun → identical to an uninterrupted one
    assert not (d["synth"] / "synth0").exists(), "a partial dataset appeared under the final name"
    generate_subject(d["synth"], "tiny", seed=0, backend="cpu", progress=False)
    assert temp_leftovers(d["synth"]) == [] and sorted(os.listdir(d["synth"])) == ["synth0"]
    ref = generate_subject(tmp_path / "synth_ref", "tiny", seed=0, backend="cpu", progress=False)
    assert _files(d["synth"] / "synth0") == _files(ref)

    # ---- preprocessing decode step: resumed by rerunning; same frames and audio as an uninterrupted run
    from ua3dtalk.cli.preprocess import main as pre

    args = ["--steps", "decode", "--size", "64", "--no-progress", "--threads", "1"]
    ds = d["preprocess"] / "ds"
    assert pre([str(d["preprocess"] / "clip.mp4"), "--out", str(ds), *args]) == 0
    assert pre([str(video), "--out", str(tmp_path / "pre_ref"), *args]) == 0
    a, b = _files(ds), _files(tmp_path / "pre_ref")
    assert {k: v for k, v in a.items() if k.startswith(("ori_imgs", "aud.wav"))} == \
           {k: v for k, v in b.items() if k.startswith(("ori_imgs", "aud.wav"))}
    assert temp_leftovers(ds) == []


# --------------------------------------------------------------------------------------------------
# disk full
# --------------------------------------------------------------------------------------------------


def _enospc_after(n_bytes: int):
    """A ``write`` replacement for file objects: the first ``n_bytes`` go through, then ENOSPC."""
    state = {"left": n_bytes}

    class Full:
        def __init__(self, f):
            self.f = f

        def write(self, data):
            if len(data) > state["left"]:
                self.f.write(bytes(data[: state["left"]]))
                state["left"] = 0
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            state["left"] -= len(data)
            return self.f.write(data)

        def __getattr__(self, k):
            return getattr(self.f, k)

    return Full


def test_disk_full_during_a_checkpoint_write_keeps_the_previous_one(tmp_path, monkeypatch):
    from ua3dtalk.callbacks import checkpoint as ck_mod
    from ua3dtalk.callbacks.checkpoint import AtomicCheckpointIO, read_checkpoint

    path = tmp_path / "ck" / "last.ckpt"
    io = AtomicCheckpointIO()
    io.save_checkpoint({"state_dict": {"w": torch.ones(64, 64)}, "ua3dtalk": {"version": 1}, "global_step": 5}, path)
    before = path.read_bytes()
    wrap = _enospc_after(4096)
    real_save = torch.save
    monkeypatch.setattr(ck_mod.torch, "save", lambda obj, f, *a, **kw: real_save(obj, wrap(f), *a, **kw))
    with pytest.raises(OSError) as ei:
        io.save_checkpoint({"state_dict": {"w": torch.zeros(64, 64)}, "global_step": 6}, path)
    assert ei.value.errno == errno.ENOSPC and str(path) in str(ei.value)
    assert "previous checkpoint is kept" in str(ei.value)
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert read_checkpoint(path)["global_step"] == 5
    assert sorted(os.listdir(path.parent)) == ["last.ckpt"], "a temporary file was left behind"


def test_disk_full_during_a_feature_cache_write_keeps_the_previous_cache(regular, monkeypatch):
    import ua3dtalk.utils.io as uio
    from ua3dtalk.data.audio import extract_features
    from ua3dtalk.data.extractors import MelExtractor

    before = tree(regular)
    old = (regular / "aud_mel.npy").read_bytes()

    def full_save(file, arr, *a, **kw):
        with open(file, "wb") as f:
            f.write(b"\x93NUMPY" + b"\0" * 100)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(file))

    from ua3dtalk.data.formats import DatasetError

    monkeypatch.setattr(uio.np, "save", full_save)
    with pytest.raises(DatasetError) as ei:  # one error naming the cache and the cause (exit 2 in the CLIs)
        extract_features(regular, MelExtractor(), force=True)
    assert "aud_mel.npy" in str(ei.value) and os.strerror(errno.ENOSPC) in str(ei.value)
    monkeypatch.undo()
    assert (regular / "aud_mel.npy").read_bytes() == old and tree(regular) == before


def test_disk_full_while_generating_a_dataset_leaves_nothing(tmp_path, monkeypatch):
    import ua3dtalk.data.synth.generate as gen

    real = gen._write_bytes  # every file of a clip goes through it
    calls = [0]

    def full(path, data):
        calls[0] += 1
        if calls[0] > 12:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        real(path, data)

    monkeypatch.setattr(gen, "_write_bytes", full)
    with pytest.raises(OSError):
        gen.generate_subject(tmp_path / "out", "tiny", seed=0, backend="cpu", progress=False)
    assert tree(tmp_path / "out") == {} and os.listdir(tmp_path / "out") == []


# --------------------------------------------------------------------------------------------------
# long inputs stay memory-bounded
# --------------------------------------------------------------------------------------------------


def test_frames_are_decoded_lazily_with_a_bounded_cache(regular, monkeypatch):
    import ua3dtalk.data.formats as fm
    from ua3dtalk.data.datamodule import TalkingHeadDataModule

    decoded = [0]
    real = fm.read_image_array

    def counting(*a, **kw):
        decoded[0] += 1
        return real(*a, **kw)

    monkeypatch.setattr(fm, "read_image_array", counting)
    dm = TalkingHeadDataModule(root=str(regular), feature="mel", batch_size=1, num_workers=0)
    dm.prepare_data()
    dm.setup("fit")
    ds = dm.frame_dataset("train")
    ds.cache_size = 4
    assert decoded[0] <= 1, f"{decoded[0]} images decoded before any frame was asked for"  # bc.jpg at most
    for i in range(len(ds)):
        ds[i]
    assert len(ds.cache) <= 4, f"the frame cache grew to {len(ds.cache)} entries (limit 4)"
    assert decoded[0] >= len(ds)


def test_video_frames_are_streamed(tmp_path):
    """``preprocess.video.iter_frames`` holds one frame at a time: decoding a 400-frame video keeps the
    Python-side peak allocation below a few frames' worth."""
    import tracemalloc

    from ua3dtalk.preprocess import video as V
    from ua3dtalk.utils.io import write_video

    frames = (np.full((96, 96, 3), i % 250, np.uint8) for i in range(400))
    path = tmp_path / "long.mp4"
    write_video(path, frames)
    info = V.probe(path)
    frame_bytes = 96 * 96 * 3
    tracemalloc.start()
    n = 0
    for f in V.iter_frames(info):
        assert f.shape == (96, 96, 3)
        n += 1
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert n == 400
    assert peak < 40 * frame_bytes, f"peak {peak / 1e6:.1f} MB for 400 frames of {frame_bytes / 1e3:.0f} kB"


def test_score_reads_videos_in_bounded_memory(tmp_path):
    """``ua3dtalk-score`` decodes through :class:`~ua3dtalk.cli.score.VideoPair` (two lockstep
    :class:`~ua3dtalk.cli.score.VideoReader` s): the peak traced memory of reading a 400-frame pair is a
    few chunks, not the decoded video (a 5-minute 512² pair decoded whole is ~12 GB), and every frame
    arrives, in order."""
    import tracemalloc

    from ua3dtalk.cli.score import VideoPair
    from ua3dtalk.utils.io import write_video

    path = tmp_path / "long.mp4"
    write_video(path, (np.full((96, 96, 3), i % 250, np.uint8) for i in range(400)))
    frame_bytes, chunk = 96 * 96 * 3, 16
    levels = []
    tracemalloc.start()
    try:
        with VideoPair(path, path) as videos:  # the CLI's reading path, both videos
            for p, g in videos.chunks(chunk):
                assert p.shape[1:] == (96, 96, 3) and len(p) == len(g) <= chunk
                levels.extend(int(v) for v in p[:, 48, 48, 0])
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert len(levels) == 400
    assert np.abs(np.asarray(levels) - np.arange(400) % 250).max() <= 3  # decoded in order
    whole = 400 * frame_bytes
    assert peak < 8 * chunk * frame_bytes < whole / 3, \
        f"peak {peak / 1e6:.2f} MB reading 2 × 400 frames (one video: {whole / 1e6:.1f} MB)"


def test_infer_streams_frames_into_the_encoder(trained_ckpt, tmp_path, monkeypatch):
    """``ua3dtalk-infer`` hands the encoder a generator (memory does not grow with the audio length)."""
    import soundfile as sf

    import ua3dtalk.utils.io as uio
    from ua3dtalk.cli import infer as inf

    seen = {}
    real = uio.write_video

    def spy(path, frames, *a, **kw):
        seen["lazy"] = not isinstance(frames, (list, tuple))
        return real(path, frames, *a, **kw)

    monkeypatch.setattr(uio, "write_video", spy)
    wav = tmp_path / "s.wav"
    sf.write(str(wav), np.zeros(6400, np.float32), 16000)
    res = inf.infer(trained_ckpt, wav, tmp_path / "o.mp4")
    assert seen["lazy"] and res["frames"] == 10 and (tmp_path / "o.mp4").stat().st_size > 0


# --------------------------------------------------------------------------------------------------
# the kill-and-resume loop
# --------------------------------------------------------------------------------------------------

LOOP_ARGS = ("stages=[prior,face]", "stage_steps.prior=4", "stage_steps.face=8", "checkpoint_every=1", "val_every=4")
MAX_KILLS = 6
LOOP_BUDGET_S = 150.0


def _ckpts(run_dir: Path) -> dict[str, Path]:
    return {p.parent.name: p for p in sorted((run_dir / "checkpoints").glob("*/last.ckpt"))}


def _check_checkpoints(run_dir: Path, seen: dict) -> None:
    """Every checkpoint loads with weights_only=True and no stage's checkpoint went backwards."""
    from ua3dtalk.callbacks.checkpoint import read_checkpoint

    for stage, p in _ckpts(run_dir).items():
        ck = read_checkpoint(p)  # raises CheckpointError if corrupt / non-finite
        step = int(ck["global_step"])
        assert step >= seen.get(stage, 0), f"{stage}: checkpoint went back from step {seen[stage]} to {step}"
        seen[stage] = step
    for p in (run_dir / "checkpoints").glob("*/done.json"):
        json.loads(p.read_text())
    if (run_dir / "metrics.json").exists():
        json.loads((run_dir / "metrics.json").read_text())


def _train_cmd(data, run_dir, *extra):
    return [sys.executable, "-m", "ua3dtalk.cli.train", *train_overrides(data, run_dir, *LOOP_ARGS, *extra)]


def _wait(cond, proc, timeout=300.0, poll=0.005) -> bool:
    """Poll ``cond()`` until true (→ True) or the process exits (→ False)."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if cond():
            return True
        if proc.poll() is not None:
            return False
        time.sleep(poll)
    raise TimeoutError("the training process made no progress")


@pytest.mark.slow
def test_kill_and_resume_loop_equals_an_uninterrupted_run(synth_emotional_small, tmp_path):
    from ua3dtalk.callbacks.checkpoint import read_checkpoint
    from ua3dtalk.callbacks.checkpoint import checkpoint_position

    seed = int(os.environ.get("UA3DTALK_KILL_SEED", random.SystemRandom().randrange(1 << 30)))
    rng = random.Random(seed)
    ref_dir, run_dir = tmp_path / "reference", tmp_path / "killed"
    ref_log = open(tmp_path / "reference.log", "w")
    ref = subprocess.Popen(_train_cmd(synth_emotional_small, ref_dir), env=_env(), stdout=ref_log,
                           stderr=subprocess.STDOUT, cwd=REPO)
    t_loop = time.monotonic()
    seen: dict = {}
    kills, mid_write, log = [], 0, []
    trial = 0
    while True:
        extra = ["resume=true"] if trial else []
        expect = {s: checkpoint_position(read_checkpoint(p)) for s, p in _ckpts(run_dir).items()}
        t0 = time.time()
        logf = tmp_path / f"trial{trial}.log"
        p = subprocess.Popen(_train_cmd(synth_emotional_small, run_dir, *extra), env=_env(), cwd=REPO,
                             stdout=open(logf, "w"), stderr=subprocess.STDOUT, start_new_session=True)
        alive = True
        if len(kills) < MAX_KILLS and time.monotonic() - t_loop < LOOP_BUDGET_S:
            if trial == 0:  # the first kill lands while a checkpoint is being written
                alive = _wait(lambda: any(temp_leftovers(run_dir / "checkpoints"))
                              if (run_dir / "checkpoints").exists() else False, p)
                mode = "while writing a checkpoint"
            else:  # random: after this process saved 1–3 checkpoints, plus a random fraction of a step
                k, saves = rng.randint(1, 3), set()

                def progressed():
                    for c in _ckpts(run_dir).values():
                        with contextlib.suppress(FileNotFoundError):
                            mt = c.stat().st_mtime_ns
                            if mt > t0 * 1e9:
                                saves.add((c, mt))
                    return len(saves) >= k

                alive = _wait(progressed, p)
                time.sleep(rng.uniform(0.0, 0.4))
                mode = "random"
            if alive and p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
                kills.append(mode)
                if mode.startswith("while") and temp_leftovers(run_dir / "checkpoints"):
                    mid_write += 1
        rc = p.wait(timeout=600)
        out = logf.read_text()
        log.append(f"trial {trial}: rc {rc}")
        # every resume starts from the last checkpoint of the interrupted stage
        for stage, pos in expect.items():
            m = re.search(rf"stage {stage}: resuming from .*?\(epoch (\d+), batch (\d+)\)", out)
            if m is not None:
                assert (int(m.group(1)), int(m.group(2))) == pos, f"{stage} resumed at {m.groups()}, ckpt at {pos}"
        _check_checkpoints(run_dir, seen)
        if rc == 0:
            break
        assert rc == -signal.SIGKILL, f"trial {trial} failed (rc {rc}):\n{out[-4000:]}"
        trial += 1
    assert ref.wait(timeout=900) == 0, (tmp_path / "reference.log").read_text()[-4000:]
    summary = {"seed": seed, "kills": len(kills), "kills_while_writing_a_checkpoint": mid_write,
               "trials": trial + 1, "seconds": round(time.monotonic() - t_loop, 1)}
    print("kill-and-resume:", json.dumps(summary))
    assert len(kills) >= 3, f"too few kills landed ({summary}); the loop is not testing anything"
    assert mid_write >= 1, f"no kill landed inside a checkpoint write ({summary})"

    # nothing lost, nothing left over
    assert temp_leftovers(run_dir) == [], f"temporary files left: {temp_leftovers(run_dir)} ({summary})"
    # same weights (bit for bit) and the same metrics as the uninterrupted run
    for stage, p in _ckpts(ref_dir).items():
        a = read_checkpoint(p)
        b = read_checkpoint(_ckpts(run_dir)[stage])
        assert a["global_step"] == b["global_step"]
        diff = [k for k in a["state_dict"] if not torch.equal(a["state_dict"][k], b["state_dict"][k])]
        assert diff == [], f"{stage}: weights differ after {summary}: {diff[:8]}"
    ma, mb = (_comparable(json.loads((d / "metrics.json").read_text())) for d in (ref_dir, run_dir))
    assert ma == mb, f"metrics differ after {summary}"


def _comparable(metrics: dict) -> dict:
    """metrics.json without what legitimately differs between two runs: paths and timings."""
    def clean(x):
        if isinstance(x, dict):
            # best_checkpoint: Lightning's ModelCheckpoint state is saved with last.ckpt at the end of a batch; a
            # kill between a validation and the next checkpoint loses that validation for best.ckpt (a known gap:
            # the weights and the stage's best values are still compared)
            return {k: clean(v) for k, v in x.items() if k not in ("run_dir", "checkpoint", "path", "best_checkpoint")
                    and "seconds" not in k}
        return x
    return clean(metrics)


def test_resume_keeps_the_training_log(synth_emotional_small, tmp_path):
    """Simulated interruption (``interrupt_at``) and resume: the CSV log of the interrupted stage keeps
    the rows written before the interruption."""
    import csv

    from ua3dtalk.cli.train import main

    from robustness_helpers import call_main

    def logged_steps() -> set:
        with open(run_dir / "logs" / "face" / "metrics.csv") as f:
            return {row["step"] for row in csv.DictReader(f)}

    run_dir = tmp_path / "run"
    base = train_overrides(synth_emotional_small, run_dir, "stages=[face]", "stage_steps.face=4", "checkpoint_every=1")
    r = call_main(main, base + ["interrupt_at={stage: face, step: 2}"])
    torch.set_grad_enabled(True)
    assert r.code == 75, r.text[-2000:]
    before = logged_steps()
    assert before, "nothing was logged before the interruption"
    r = call_main(main, base + ["resume=true"])
    torch.set_grad_enabled(True)
    assert r.code == 0, r.text[-2000:]
    lost = before - logged_steps()
    assert not lost, f"rows of steps {sorted(lost)} logged before the interruption are gone after the resume"


def test_resume_keeps_the_best_validation_of_the_interrupted_stage(synth_emotional_small, tmp_path):
    from ua3dtalk.cli.train import main

    from robustness_helpers import call_main

    def run(run_dir, *extra):
        r = call_main(main, train_overrides(synth_emotional_small, run_dir, "stages=[face]", "stage_steps.face=6",
                                            "checkpoint_every=1", "val_every=2",
                                            "+callbacks.score._target_=robustness_faults.EarlyBestScore", *extra))
        torch.set_grad_enabled(True)
        return r

    assert run(tmp_path / "a").code == 0
    assert run(tmp_path / "b", "interrupt_at={stage: face, step: 5}").code == 75
    assert run(tmp_path / "b", "resume=true").code == 0
    best = [json.loads((tmp_path / d / "metrics.json").read_text())["stages"]["face"]["best"]["val/early_score"]
            for d in ("a", "b")]
    assert best[0] == best[1], f"best val/early_score: uninterrupted {best[0]}, interrupted and resumed {best[1]}"


def test_stale_temporaries_of_dead_writers_are_swept_from_a_tree(tmp_path):
    """A writer killed while writing a file that is never written again (a finished stage's record) left
    its temporary behind; ``ua3dtalk-train`` sweeps the run directory with this on every start."""
    import os
    import subprocess

    from ua3dtalk.utils import io

    d = tmp_path / "run" / "checkpoints" / "prior"
    d.mkdir(parents=True)
    p = subprocess.Popen(["true"])
    p.wait()
    stale = d / f".done.json.tmp-{io._HOST}-{p.pid}-abc.json"  # its writer is gone
    live = d / f".done.json.tmp-{io._HOST}-{os.getpid()}-abc.json"  # a writer still running
    final = d / "done.json"
    for f in (stale, live, final):
        f.write_text("{}")
    assert io.remove_stale_temporaries_under(tmp_path / "run") == [stale]
    assert not stale.exists() and live.exists() and final.exists()


@pytest.mark.slow
def test_resume_at_24_steps_is_bit_for_bit_and_the_log_exact(synth_emotional_small, tmp_path):
    """Issue 18: the tiny smoke setting, face stage 24 steps, a checkpoint every step, validation every 8;
    interrupted after step 4 and resumed: every tensor of the final checkpoint equals the uninterrupted run's,
    and the stage's metrics.csv holds each logged step exactly once with the same values."""
    import csv

    from ua3dtalk.callbacks.checkpoint import read_checkpoint
    from ua3dtalk.cli.train import main

    from robustness_helpers import call_main

    def run(run_dir, *extra):
        r = call_main(main, train_overrides(synth_emotional_small, run_dir, "stages=[face]", "stage_steps.face=24",
                                            "checkpoint_every=1", "val_every=8", *extra))
        torch.set_grad_enabled(True)
        return r

    def rows(run_dir):
        with open(run_dir / "logs" / "face" / "metrics.csv") as f:
            out = [{k: v for k, v in r.items() if v not in ("", None)} for r in csv.DictReader(f)]
        return sorted(out, key=lambda r: (int(float(r["step"])), sorted(r)))

    a, b = tmp_path / "a", tmp_path / "b"
    assert run(a).code == 0
    assert run(b, "interrupt_at={stage: face, step: 4}").code == 75
    assert run(b, "resume=true").code == 0
    sa = read_checkpoint(a / "checkpoints" / "face" / "last.ckpt")["state_dict"]
    sb = read_checkpoint(b / "checkpoints" / "face" / "last.ckpt")["state_dict"]
    assert sa.keys() == sb.keys()
    differ = [k for k in sa if not torch.equal(sa[k], sb[k])]
    assert not differ, f"{len(differ)} of {len(sa)} tensors differ after the resume, e.g. {differ[:5]}"
    ra, rb = rows(a), rows(b)
    steps_b = [(r["step"], tuple(sorted(r))) for r in rb]
    assert len(steps_b) == len(set(steps_b)), "a step is logged twice after the resume"
    assert ra == rb
