"""SyncNet: official state-dict compatibility, loading errors, the MFCC front end, the offset / Sync-C /
Sync-D computation (with a probe network whose answer is known) and the face crop."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ua3dtalk.metrics.mfcc import num_mfcc_frames, syncnet_mfcc
from ua3dtalk.metrics.syncnet import (
    PAD_VALUE,
    SyncNet,
    SyncNetConfig,
    SyncNetWeightsError,
    load_syncnet,
    save_syncnet,
)
from ua3dtalk.metrics.syncnet_scoring import crop_for_sync, sync_scores

# --------------------------------------------------------------------------------------------------
# the public syncnet_v2.model: every parameter / buffer name and shape (joonson/syncnet_python, S())
# --------------------------------------------------------------------------------------------------


def _official_shapes() -> dict[str, tuple]:
    shapes: dict[str, tuple] = {}

    def conv(prefix, i, shape):
        shapes[f"{prefix}.{i}.weight"] = shape
        shapes[f"{prefix}.{i}.bias"] = (shape[0],)

    def bn(prefix, i, c):
        for n in ("weight", "bias", "running_mean", "running_var"):
            shapes[f"{prefix}.{i}.{n}"] = (c,)
        shapes[f"{prefix}.{i}.num_batches_tracked"] = ()

    aud = [(0, (64, 1, 3, 3)), (4, (192, 64, 3, 3)), (8, (384, 192, 3, 3)), (11, (256, 384, 3, 3)),
           (14, (256, 256, 3, 3)), (18, (512, 256, 5, 4))]
    lip = [(0, (96, 3, 5, 7, 7)), (4, (256, 96, 1, 5, 5)), (8, (256, 256, 1, 3, 3)), (11, (256, 256, 1, 3, 3)),
           (14, (256, 256, 1, 3, 3)), (18, (512, 256, 1, 6, 6))]
    for prefix, layers in (("netcnnaud", aud), ("netcnnlip", lip)):
        for i, shape in layers:
            conv(prefix, i, shape)
            bn(prefix, i + 1, shape[0])
    for prefix in ("netfcaud", "netfclip"):
        conv(prefix, 0, (512, 512))
        bn(prefix, 1, 512)
        conv(prefix, 3, (1024, 512))
    return shapes


def _randomised(model: SyncNet, seed: int = 0) -> SyncNet:
    """Random parameters *and* BatchNorm statistics, so a round trip that loses any tensor is caught."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for k, t in model.state_dict().items():
            if t.is_floating_point():
                t.copy_(torch.rand(t.shape, generator=g) + 0.5 if "running_var" in k
                        else torch.randn(t.shape, generator=g) * 0.05)
    return model.eval()


def test_default_config_has_the_official_names_and_shapes():
    sd = SyncNet().state_dict()
    expected = _official_shapes()
    assert {k: tuple(v.shape) for k, v in sd.items()} == expected
    assert SyncNetConfig() == SyncNetConfig.official()


def test_default_network_embeds_official_inputs():
    m = _randomised(SyncNet())
    with torch.no_grad():
        a = m.forward_aud(torch.randn(2, 1, 13, 20))
        v = m.forward_lip(torch.rand(2, 3, 5, 224, 224) * 255)
    assert a.shape == v.shape == (2, 1024)
    with pytest.raises(ValueError, match=r"\[B,3,5,224,224\]"):
        m.forward_lip(torch.rand(2, 3, 5, 112, 112))
    with pytest.raises(ValueError, match=r"\[B,1,13,20\]"):
        m.forward_aud(torch.rand(2, 1, 13, 24))


@pytest.mark.parametrize("legacy", [False, True])
def test_plain_state_dict_round_trip(tmp_path, legacy):
    """A plain state dict with the official names loads (also the pre-zip torch format without
    num_batches_tracked, as the 2017 file was written)."""
    m = _randomised(SyncNet(), seed=1)
    sd = m.state_dict()
    if legacy:
        sd = {k: v for k, v in sd.items() if not k.endswith("num_batches_tracked")}
    path = tmp_path / "syncnet_v2.model"
    torch.save(sd, path, _use_new_zipfile_serialization=not legacy)
    m2 = load_syncnet(path)
    assert not m2.training and m2.config == SyncNetConfig()
    assert m2.source["format"] == "state_dict" and m2.source["path"] == str(path)
    for k, v in sd.items():
        assert torch.equal(m2.state_dict()[k], v), k
    x_a, x_v = torch.randn(3, 1, 13, 20), torch.rand(3, 3, 5, 224, 224) * 255
    with torch.no_grad():
        assert torch.equal(m2.forward_aud(x_a), m.forward_aud(x_a))
        assert torch.equal(m2.forward_lip(x_v), m.forward_lip(x_v))


def test_mismatched_state_dict_lists_the_keys(tmp_path):
    sd = SyncNet(SyncNetConfig.small()).state_dict()  # small shapes, official names
    sd["netfcaud.3.weightz"] = sd.pop("netfcaud.3.weight")
    path = tmp_path / "bad.model"
    torch.save(sd, path)
    with pytest.raises(SyncNetWeightsError) as e:
        load_syncnet(path)  # official config expected
    msg = str(e.value)
    assert str(path) in msg
    assert "missing keys" in msg and "netfcaud.3.weight" in msg
    assert "unexpected keys" in msg and "netfcaud.3.weightz" in msg
    assert "shape mismatches" in msg and "netcnnaud.0.weight [16, 1, 3, 3] (expected [64, 1, 3, 3])" in msg
    # the right config loads the same file once the key is fixed
    sd["netfcaud.3.weight"] = sd.pop("netfcaud.3.weightz")
    torch.save(sd, path)
    assert load_syncnet(path, SyncNetConfig.small()).config == SyncNetConfig.small()


def test_missing_and_corrupt_files(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nope\.model.*syncnet_v2\.model"):
        load_syncnet(tmp_path / "nope.model")
    bad = tmp_path / "garbage.model"
    bad.write_bytes(b"\x00\x01not a torch file" * 10)
    with pytest.raises(SyncNetWeightsError, match="garbage.model"):
        load_syncnet(bad)
    notdict = tmp_path / "list.model"
    torch.save([torch.zeros(2)], notdict)
    with pytest.raises(SyncNetWeightsError, match=r"list\.model.*state dict"):
        load_syncnet(notdict)
    # a truncated safetensors file of ours
    good = save_syncnet(SyncNet(SyncNetConfig.small()), tmp_path / "s.safetensors")
    trunc = tmp_path / "trunc.safetensors"
    trunc.write_bytes(good.read_bytes()[:4000])
    with pytest.raises(SyncNetWeightsError, match="trunc.safetensors"):
        load_syncnet(trunc)


def test_own_format_round_trip(tmp_path):
    cfg = SyncNetConfig(width=0.125, embed_dim=32, lip_size=96)
    m = _randomised(SyncNet(cfg), seed=2)
    path = save_syncnet(m, tmp_path / "ev" / "syncnet.safetensors", meta={"trained_on": "x"})
    assert sorted(p.name for p in path.parent.iterdir()) == ["syncnet.safetensors"]  # no temp file left
    m2 = load_syncnet(path)
    assert m2.config == cfg and m2.source["format"] == "ua3dtalk-syncnet"
    assert m2.source["meta"] == {"trained_on": "x"}
    assert m2.netcnnlip[18].weight.shape[-1] == cfg.lip_final_kernel == 2
    x_a, x_v = torch.randn(2, 1, 13, 20), torch.rand(2, 3, 5, 96, 96) * 255
    with torch.no_grad():
        assert torch.equal(m2.forward_aud(x_a), m.forward_aud(x_a))
        assert torch.equal(m2.forward_lip(x_v), m.forward_lip(x_v))
    with pytest.raises(SyncNetWeightsError, match="was asked for"):
        load_syncnet(path, SyncNetConfig.small())


def test_config_validation():
    with pytest.raises(ValueError, match="lip_size"):
        SyncNetConfig(lip_size=32)
    with pytest.raises(ValueError, match="width"):
        SyncNetConfig(width=0)
    with pytest.raises(ValueError, match="unknown SyncNetConfig"):
        SyncNetConfig.from_dict({"width": 1.0, "depth": 3})


# --------------------------------------------------------------------------------------------------
# MFCC front end
# --------------------------------------------------------------------------------------------------


def _reference_mfcc(x: np.ndarray, sr: int = 16000) -> np.ndarray:
    """The python_speech_features defaults written out from their definition (int16-scale input):
    pre-emphasis 0.97, 25 ms rectangular frames every 10 ms (zero-padded end), |rfft 512|²/512,
    26 mel filters 0–8 kHz, log, orthonormal DCT-II → 13, lifter 22, c0 = log frame energy. → [T,13]"""
    from scipy.fftpack import dct

    x = np.append(x[0], x[1:] - 0.97 * x[:-1])
    flen, step, nfft = 400, 160, 512
    n = 1 if len(x) <= flen else 1 + math.ceil((len(x) - flen) / step)
    x = np.concatenate([x, np.zeros((n - 1) * step + flen - len(x))])
    frames = np.stack([x[i * step:i * step + flen] for i in range(n)])
    pspec = np.abs(np.fft.rfft(frames, nfft)) ** 2 / nfft
    energy = pspec.sum(1)
    energy[energy == 0] = np.finfo(float).eps
    hz2mel = lambda f: 2595 * np.log10(1 + f / 700.0)  # noqa: E731
    mel2hz = lambda m: 700 * (10 ** (m / 2595.0) - 1)  # noqa: E731
    b = np.floor((nfft + 1) * mel2hz(np.linspace(hz2mel(0), hz2mel(sr / 2), 28)) / sr)
    fb = np.zeros((26, nfft // 2 + 1))
    for j in range(26):
        for i in range(int(b[j]), int(b[j + 1])):
            fb[j, i] = (i - b[j]) / (b[j + 1] - b[j])
        for i in range(int(b[j + 1]), int(b[j + 2])):
            fb[j, i] = (b[j + 2] - i) / (b[j + 2] - b[j + 1])
    feat = pspec @ fb.T
    feat[feat == 0] = np.finfo(float).eps
    c = dct(np.log(feat), type=2, axis=1, norm="ortho")[:, :13]
    c = c * (1 + 11 * np.sin(np.pi * np.arange(13) / 22))
    c[:, 0] = np.log(energy)
    return c


def _speechy(seconds: float, seed: int = 0) -> np.ndarray:
    """Float waveform in [-1,1] on the int16 grid (what a 16-bit aud.wav decodes to)."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * 16000)) / 16000
    env = 0.5 + 0.5 * np.sin(2 * np.pi * 3 * t)
    x = 0.3 * env * np.sin(2 * np.pi * (150 + 50 * t) * t) + 0.02 * rng.standard_normal(t.size)
    return (np.round(np.clip(x, -1, 1) * 32767) / 32768).astype(np.float32)


def test_mfcc_matches_python_speech_features_and_the_definition():
    import python_speech_features as psf

    x = _speechy(1.37)
    m = syncnet_mfcc(x)
    assert m.shape == (13, num_mfcc_frames(x.size)) and m.dtype == np.float32
    ints = np.round(x * 32768).astype(np.int16)
    ref_psf = psf.mfcc(ints, 16000).T  # what SyncNetInstance computes from the int16 wav
    np.testing.assert_allclose(m, ref_psf, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(m, _reference_mfcc(ints.astype(np.float64)).T, rtol=1e-5, atol=1e-4)
    np.testing.assert_array_equal(syncnet_mfcc(ints), m)  # int16 input is taken as is
    assert float(m[0].mean()) > 10  # energy on the int16 scale (log of ~1e6..1e9), not of [-1,1] samples


def test_mfcc_is_100_frames_per_second_and_resamples():
    assert syncnet_mfcc(_speechy(3.0)).shape[1] - syncnet_mfcc(_speechy(2.0)).shape[1] == 100
    assert syncnet_mfcc(_speechy(2.0)).shape[1] == 1 + math.ceil((32000 - 400) / 160)
    x8 = _speechy(2.0)[::2]
    assert abs(syncnet_mfcc(x8, sr=8000).shape[1] - 199) <= 1
    with pytest.raises(ValueError, match="mono"):
        syncnet_mfcc(np.zeros((2, 1600)))


# --------------------------------------------------------------------------------------------------
# offsets, Sync-C, Sync-D: a probe network with a known answer
# --------------------------------------------------------------------------------------------------


class _Probe(torch.nn.Module):
    """Embeds a window as the z-scored per-frame brightness (lip) or per-frame mean log energy
    (audio, MFCC c0 in groups of 4): equal up to noise when the audio loudness follows the brightness."""

    class config:  # noqa: N801 - mimics SyncNet.config
        lip_size = 8

    @staticmethod
    def _z(e):
        return (e - e.mean(1, keepdim=True)) / (e.std(1, keepdim=True) + 1e-6)

    def forward_lip(self, x):  # [B,3,5,8,8]
        assert tuple(x.shape[1:]) == (3, 5, 8, 8)
        return self._z(x.mean(dim=(1, 3, 4)))

    def forward_aud(self, x):  # [B,1,13,20]
        assert tuple(x.shape[1:]) == (1, 13, 20)
        return self._z(x[:, 0, 0, :].reshape(-1, 5, 4).mean(-1))


def _probe_clip(n: int, delay: int, seed: int = 0, pad: int = 20):
    """Frames whose brightness is u[i] and audio whose log-loudness is u[i − delay] (delayed audio)."""
    rng = np.random.default_rng(seed)
    u = rng.uniform(0, 3, n + 2 * pad)
    frames = torch.tensor(u[pad:pad + n] / 3, dtype=torch.float32)[:, None, None, None].expand(n, 3, 16, 16)
    amp = np.exp(u[pad - delay:pad - delay + n])
    audio = (0.01 * rng.standard_normal((n, 640)) * amp[:, None]).reshape(-1).astype(np.float32)
    return frames.contiguous(), audio


@pytest.mark.parametrize("delay", [0, 1, -2, 4, -7, 12])
def test_offset_sign_and_scores_with_a_probe(delay):
    frames, audio = _probe_clip(80, delay)
    r = sync_scores(_Probe(), frames, audio, vshift=15)
    assert r.offset == -delay  # audio delayed by k frames → offset −k (reference convention)
    assert r.dists.shape == (31,) and r.num_windows == 75
    assert r.offsets[np.argmin(r.dists)] == r.offset
    assert r.dist == pytest.approx(float(r.dists.min()))
    assert r.conf == pytest.approx(float(np.median(r.dists) - r.dists.min()), rel=1e-5)
    assert r.conf > 1.0 and r.dist < 0.5 * float(np.median(r.dists))


def test_probe_without_sync_has_low_confidence():
    frames, _ = _probe_clip(80, 0, seed=0)
    _, other = _probe_clip(80, 0, seed=5)  # unrelated loudness track
    r_sync = sync_scores(_Probe(), frames, _probe_clip(80, 0, seed=0)[1])
    r_other = sync_scores(_Probe(), frames, other)
    assert r_sync.conf > 3 * r_other.conf and r_sync.dist < r_other.dist


def test_sync_scores_input_errors():
    frames, audio = _probe_clip(80, 0)
    with pytest.raises(ValueError, match=r"\[N,3,H,W\]"):
        sync_scores(_Probe(), frames[:, 0], audio)
    with pytest.raises(ValueError, match="at least 6 frames"):
        sync_scores(_Probe(), frames[:5], audio[: 5 * 640])
    with pytest.warns(UserWarning, match="lengths"):
        sync_scores(_Probe(), frames, audio[: 60 * 640])


# --------------------------------------------------------------------------------------------------
# face crop
# --------------------------------------------------------------------------------------------------


def _box_landmarks(x0, y0, x1, y1, n=68):
    t = np.linspace(0, 1, n)
    lm = np.stack([x0 + (x1 - x0) * t, y0 + (y1 - y0) * ((t * 7) % 1)], 1)
    lm[0], lm[-1] = (x0, y0), (x1, y1)
    return lm.astype(np.float32)


def test_crop_for_sync_is_the_reference_box():
    g = torch.Generator().manual_seed(0)
    frames = torch.rand(3, 3, 100, 120, generator=g)
    lm = np.stack([_box_landmarks(40, 30, 80, 60)] * 3)  # s = 20, centre (60, 45)
    crop = crop_for_sync(frames, lm, size=56)  # rows 45−20 .. 45+20·1.8, cols 60 ± 20·1.4 → 56 × 56
    torch.testing.assert_close(crop, frames[:, :, 25:81, 32:88])
    out = crop_for_sync(frames, lm, size=224)
    assert out.shape == (3, 3, 224, 224)


def test_crop_for_sync_pads_grey_and_smooths_the_box():
    frames = torch.zeros(15, 3, 64, 64)
    lm = np.stack([_box_landmarks(0, 2, 30, 32)] * 15)
    lm[7] += 9.0  # one jittered detection: removed by the temporal median
    crop = crop_for_sync(frames, lm, size=48)
    assert torch.allclose(crop[:, :, :, 0], torch.full_like(crop[:, :, :, 0], PAD_VALUE))  # left of image
    assert float(crop[:, :, 24, 24].max()) == 0.0  # the frame itself
    torch.testing.assert_close(crop[7], crop[6])
    raw = crop_for_sync(frames, lm, size=48, smooth=0)
    assert not torch.equal(raw[7], raw[6])
    with pytest.raises(ValueError, match=r"\[N,68,2\]"):
        crop_for_sync(frames, lm[:3])


# --------------------------------------------------------------------------------------------------
# training inputs (the learning itself is tested in test_syncnet_train.py)
# --------------------------------------------------------------------------------------------------


def test_clips_from_dataset_aligns_audio_and_frames(synth_emotional_small):
    from ua3dtalk.data.audio import load_wav
    from ua3dtalk.data.loading import load_clip
    from ua3dtalk.metrics.syncnet_training import clips_from_dataset

    clips = clips_from_dataset(synth_emotional_small)
    assert len(clips) == 12
    for c in clips[:2]:
        assert c.landmarks.shape == (30, 68, 2) and len(c.audio) == 30 * 640
    root = synth_emotional_small / "angry" / "level_2" / "001"
    info = load_clip(root)
    (val,) = clips_from_dataset(info, split="val")
    first = int(info.img_ids[info.splits["val"][0]])
    assert val.num_frames == len(info.splits["val"]) and first > 0
    np.testing.assert_array_equal(val.audio, load_wav(root / "aud.wav")[first * 640:(first + val.num_frames) * 640])
    np.testing.assert_array_equal(val.landmarks[0], info.landmarks(int(info.splits["val"][0])))
    torch.testing.assert_close(val.frames(0), clips_from_dataset(info)[0].frames(first))


def test_train_syncnet_runs_on_tuples_and_writes_the_evaluator(tmp_path):
    from ua3dtalk.metrics.syncnet_training import train_syncnet

    g = torch.Generator().manual_seed(0)
    clips = [(torch.rand(24, 3, 40, 40, generator=g), _speechy(24 / 25, seed=i),
              np.stack([_box_landmarks(8, 8, 32, 30)] * 24)) for i in range(2)]
    cfg = SyncNetConfig(width=0.125, embed_dim=16, lip_size=64)
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny ops: one thread is faster than two contended ones
    try:
        m = train_syncnet(clips, cfg, steps=3, batch_size=4, negatives=2, loss="contrastive",
                          out=tmp_path / "s.safetensors", progress=False)
    finally:
        torch.set_num_threads(n)
    assert not m.training and m.training_info["steps"] == 3 and m.training_info["clips"] == ["clip0", "clip1"]
    m2 = load_syncnet(tmp_path / "s.safetensors")
    assert m2.config == cfg and m2.source["meta"]["training"]["loss"] == "contrastive"
    with pytest.raises(ValueError, match="loss"):
        train_syncnet(clips, cfg, steps=1, batch_size=4, loss="bce", progress=False)
    with pytest.raises(ValueError, match="long enough"):
        train_syncnet([(c[0][:6], c[1][: 6 * 640], c[2][:6]) for c in clips], cfg, steps=1, batch_size=4,
                      progress=False)
    with pytest.raises(TypeError, match="clip 0"):
        train_syncnet([object()], cfg, steps=1, batch_size=4, progress=False)
