"""A project-trained SyncNet on the synthetic dataset: detects audio shifts and separates in-sync from
mismatched audio (issue 5). The network is trained once per module (≈ 1 min on one loaded CPU core)
on the 12 clips of ``synth_emotional_small`` (identity 0) and evaluated on a held-out clip of the same
identity with other speech (the `tiny` regular subject, 75 frames)."""
from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from ua3dtalk.metrics.syncnet import SAMPLES_PER_FRAME, SyncNetConfig, load_syncnet
from ua3dtalk.metrics.syncnet_scoring import crop_for_sync, sync_scores
from ua3dtalk.metrics.syncnet_training import clips_from_dataset, train_syncnet

pytestmark = pytest.mark.slow

STEPS, BATCH = 150, 32


class _one_thread:
    def __enter__(self):
        self.n = torch.get_num_threads()
        torch.set_num_threads(1)  # much faster than contended intra-op threads on a shared 2-core box

    def __exit__(self, *exc):
        torch.set_num_threads(self.n)


@pytest.fixture(scope="module")
def trained(synth_emotional_small, tmp_path_factory):
    from ua3dtalk.data.synth import generate_subject

    tmp = tmp_path_factory.mktemp("syncnet")
    with _one_thread():
        held_out = generate_subject(tmp / "data", "tiny", seed=0, backend="cpu", progress=False)
        train = clips_from_dataset(synth_emotional_small)
        t0 = time.time()
        model = train_syncnet(train, SyncNetConfig.small(), steps=STEPS, batch_size=BATCH, negatives=4,
                              out=tmp / "syncnet.safetensors", seed=0, progress=False)
        seconds = time.time() - t0
    (clip,) = clips_from_dataset(held_out)
    crops = crop_for_sync(clip.load_frames(), clip.landmarks, size=model.config.lip_size)
    other = np.concatenate([c.audio for c in train[:3]])[: len(clip.audio)]  # other clips' speech
    return dict(model=model, crops=crops, audio=clip.audio, other=other, train=train, seconds=seconds,
                path=tmp / "syncnet.safetensors")


def _shift(audio: np.ndarray, k: int) -> np.ndarray:
    """Delay the audio by k frames (k < 0: advance), keeping the length; the gap is filled with the
    signal's own other end (a circular shift) so no window sees digital silence."""
    return np.roll(audio, k * SAMPLES_PER_FRAME)


def test_training_summary(trained):
    info = trained["model"].training_info
    print(f"\nSyncNet small: {STEPS} steps × {BATCH} in {trained['seconds']:.1f} s, "
          f"final loss {info['final_loss']:.3f}, in-batch accuracy {info['final_acc']:.2f}")
    assert info["final_acc"] > 3 / (BATCH * 5)  # far above picking one of B·(1+K) candidates at random


@pytest.mark.parametrize("k", [-6, -3, 0, 3, 6])
def test_offset_of_shifted_audio_is_found(trained, k):
    with _one_thread():
        r = sync_scores(trained["model"], trained["crops"], _shift(trained["audio"], k))
    print(f"\nk={k:+d}: offset {r.offset:+d}, Sync-C {r.conf:.3f}, Sync-D {r.dist:.3f}")
    assert abs(r.offset - (-k)) <= 1  # audio delayed by k frames → offset −k


def test_sync_c_of_in_sync_gt_is_clearly_higher(trained):
    m, crops, audio = trained["model"], trained["crops"], trained["audio"]
    rng = np.random.default_rng(0)
    n = len(audio) // SAMPLES_PER_FRAME
    shuffled = audio[: n * SAMPLES_PER_FRAME].reshape(n, -1)[rng.permutation(n)].reshape(-1)
    with _one_thread():
        r_sync = sync_scores(m, crops, audio)
        r_shuf = sync_scores(m, crops[:n], shuffled)
        r_other = sync_scores(m, crops, trained["other"])
    print(f"\nin sync: Sync-C {r_sync.conf:.3f} Sync-D {r_sync.dist:.3f} offset {r_sync.offset:+d}; "
          f"shuffled audio: Sync-C {r_shuf.conf:.3f} Sync-D {r_shuf.dist:.3f}; "
          f"other clips' audio: Sync-C {r_other.conf:.3f} Sync-D {r_other.dist:.3f}")
    # with the emotional mouth units (lip corners, stretch, press) moving the lips independently of the speech,
    # another clip's audio finds a spurious minimum at some offset (Sync-C ≈ 3 vs ≈ 5.8 in sync, 2026-12-03);
    # Sync-D keeps the wide margin (≈ 5.0 in sync vs ≈ 9.5). The trained network differs slightly between
    # machines (BLAS kernels): 5.51 vs 3.47 on 2026-12-04, so the confidence margin asked for is 1.25× + 0.5 —
    # an untrained or broken SyncNet gives the same confidence for matched and mismatched audio
    for bad in (r_shuf, r_other):
        assert r_sync.conf > 1.25 * bad.conf + 0.5
        assert r_sync.dist < 0.7 * bad.dist


def test_saved_evaluator_gives_the_same_scores(trained):
    m2 = load_syncnet(trained["path"])
    assert m2.source["meta"]["training"]["steps"] == STEPS
    with _one_thread():
        a = sync_scores(trained["model"], trained["crops"], trained["audio"])
        b = sync_scores(m2, trained["crops"], trained["audio"])
    assert a.offset == b.offset
    np.testing.assert_allclose(a.dists, b.dists, rtol=1e-5)
