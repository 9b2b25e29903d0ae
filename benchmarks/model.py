"""Model benchmark (issue 4): training-step time, inference frame rate, diagonal vs full_cov fusion.

Face stage with every module (audio, content, style, emotion views; stage-B ensemble of 10 members),
256² frames, 10k face Gaussians, 2 threads. Data are random tensors in the FrameBatch layout (the
timing does not depend on image content).

The training step is measured twice: the photometric step alone (the batch has no landmarks), and with
the session-5/6 geometric terms as the demo trains them: the landmark term on the rendered frame and on 32
frames of the replay bank, and the emotion-swap term on those frames (anchors, per-label anchors, emotion
prototypes and a full bank primed before timing).

The step target (issue 15: ≤ 0.35 s with every term on, where the code of 2026-11-24 took 0.461 s) depends on
the host: judge it with ``benchmarks/model_vs.py``, which runs this script for an earlier commit and this tree
side by side and prints the ratio (target ≤ 0.76× of ``d689937``).

Every row is measured for float32 and bfloat16 ensemble matmuls (`compute_dtype`; the experiments use
`auto` = bfloat16 on CPUs with fast bf16 matmuls) side by side in one run.

Run with the allocator ``ua3dtalk-train`` uses (``--allocator reuse``, the default; ``system`` for glibc's
own: ``ua3dtalk.utils.malloc``).

    python benchmarks/model.py [--gaussians 10000] [--size 256] [--steps 8] [--frames 40] [--allocator reuse]
"""
from __future__ import annotations

import argparse
import sys
import time

import torch


def make_batch(size: int, channels: int, expr_dim: int = 10, landmarks: bool = False):
    from ua3dtalk.data.batch import FrameBatch
    from ua3dtalk.data.synth.camera import as_torch, head_viewmat, intrinsics

    yy, xx = torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size), indexing="ij")
    face = ((xx / 0.5) ** 2 + (yy / 0.7) ** 2 < 1)[None, None]
    mouth = (((xx / 0.15) ** 2 + ((yy - 0.35) / 0.05) ** 2) < 1)[None, None]
    z = torch.zeros_like(face)
    kw = dict(image=torch.rand(1, 3, size, size), face_mask=face & ~mouth, mouth_mask=mouth, hair_mask=z, torso_mask=z,
              background=torch.ones(1, 3, size, size), viewmat=as_torch(head_viewmat())[None],
              K=as_torch(intrinsics(size))[None], audio=torch.randn(1, 16, channels),
              audio_neighbours=torch.randn(1, 8, 16, channels), blink=torch.zeros(1), emotion=torch.zeros(1).long(),
              intensity=torch.ones(1).long(), frame_index=torch.zeros(1).long(), clip_id=["bench"],
              expr=torch.zeros(1, expr_dim))
    if landmarks:  # the generic template seen by the batch's camera
        from ua3dtalk.models.landmarks import project
        from ua3dtalk.preprocess.template import TEMPLATE_3D

        kw["landmarks"] = project(torch.tensor(TEMPLATE_3D, dtype=torch.float32)[None], kw["viewmat"], kw["K"])
    b = FrameBatch(**kw)
    b.audio_context = torch.randn(1, 50, channels)
    return b


def build(n: int, fusion: str, channels: int = 80, compute_dtype: str = "float32", swap: float = 0.0):
    from omegaconf import open_dict

    from ua3dtalk.cli.train import build_model, compose

    overrides = [f"model.face.num_points={n}", f"model.deformation.fusion={fusion}",
                 "model.deformation.ensemble_switch=0", "model.static_warmup=0",
                 "model.face_density.start=1000000"]
    overrides += [f"model.emotion_swap_weight={swap}", f"model.deformation.compute_dtype={compute_dtype}",
                  f"model.mouth_deformation.compute_dtype={compute_dtype}"]
    cfg = compose(overrides)
    with open_dict(cfg):
        cfg.data_info.audio_channels = channels
    return build_model(cfg, "face")


class _Timer:
    def __init__(self):
        self.times = []

    def callback(self):
        import lightning as L

        t = self

        class CB(L.Callback):
            def on_train_batch_start(self, *a):
                t._t0 = time.perf_counter()

            def on_train_batch_end(self, *a):
                t.times.append(time.perf_counter() - t._t0)

        return CB()


def prime_geometric_terms(model, batch, frames: int = 64) -> None:
    """Make the landmark and emotion-swap terms active from the first timed step: anchors and per-label
    anchors from ``frames`` copies of the batch (two labels), random emotion prototypes, a full bank."""
    reps = lambda t: t.expand(frames, *t.shape[1:]).clone()  # noqa: E731
    lm, vm, K = reps(batch.landmarks), reps(batch.viewmat), reps(batch.K)
    model.landmark_anchors.accumulate(lm, vm, K, cells=torch.arange(frames) % 2)  # neutral, levels 1 and 2
    model.emotion_control.prototypes.normal_()
    model.emotion_control.counts.fill_(1)
    with torch.no_grad():
        cond = model.head.conditioning(batch)
    for _ in range(frames):
        model._bank_add(batch, cond)


def train_step_time(n: int, size: int, steps: int, fusion: str = "diagonal", compute_dtype: str = "float32",
                    landmarks: bool = False) -> float:
    import lightning as L

    model = build(n, fusion, compute_dtype=compute_dtype, swap=5.0 if landmarks else 0.0)
    batch = make_batch(size, 80, landmarks=landmarks)
    if landmarks:
        prime_geometric_terms(model, batch)
    timer = _Timer()
    dl = torch.utils.data.DataLoader([batch] * (steps + 2), batch_size=None)
    tr = L.Trainer(max_steps=(steps + 2) * 2, accelerator="cpu", logger=False, enable_checkpointing=False,
                   enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0,
                   callbacks=[timer.callback()])
    tr.fit(model, dl)
    ts = sorted(timer.times[2:])
    return ts[len(ts) // 2]


def inference_fps(n: int, size: int, frames: int, compute_dtype: str = "float32", fused: bool = True) -> float:
    """Frames/s of ``render_batch`` (one frame: conditioning, deformation with the inference cache,
    rasterization), from the median per-frame time (robust to a loaded machine). ``fused``: the C++
    statistics kernel (False: its torch reference)."""
    from ua3dtalk.models.deformation import fused_stats

    model = build(n, "diagonal", compute_dtype=compute_dtype)
    model.stage = "face"
    model.eval()
    batch = make_batch(size, 80)
    old, fused_stats.FUSED_STATS = fused_stats.FUSED_STATS, fused
    try:
        with torch.no_grad():
            for _ in range(3):
                model.render_batch(batch)
            ts = []
            for _ in range(frames):
                t0 = time.perf_counter()
                model.render_batch(batch)
                ts.append(time.perf_counter() - t0)
    finally:
        fused_stats.FUSED_STATS = old
    ts.sort()
    return 1.0 / ts[len(ts) // 2]


def fusion_ratio(n: int, repeats: int = 3):
    from ua3dtalk.models.deformation import UncertaintyFusion

    dims = {"audio": 102, "content": 128, "style": 128, "emotion": 192}
    res = {}
    for mode in ("diagonal", "full_cov"):
        f = UncertaintyFusion(dims, fusion=mode, ensemble_switch=0)
        views = {k: torch.randn(1, n, d) for k, d in dims.items()}
        ts = []
        for _ in range(repeats + 1):
            t0 = time.perf_counter()
            out = f(views, step=10)
            out.mu.sum().backward()
            ts.append(time.perf_counter() - t0)
        res[mode] = sorted(ts[1:])[len(ts[1:]) // 2]
    return res


def ssim_times(size: int, repeats: int = 10) -> tuple[float, float]:
    """Forward + backward of the training loss's SSIM at ``size``² (3 channels), seconds (median):
    torchmetrics' grouped 2-D convolution and the separable one of ``ua3dtalk.models.ssim``."""
    from torchmetrics.functional.image import structural_similarity_index_measure as reference

    from ua3dtalk.models.ssim import ssim

    g = torch.Generator().manual_seed(0)
    p0, t = torch.rand(1, 3, size, size, generator=g), torch.rand(1, 3, size, size, generator=g)
    out = []
    for fn in (lambda p: reference(p, t, data_range=1.0), lambda p: ssim(p, t, data_range=1.0)):
        ts = []
        for _ in range(repeats + 1):
            p = p0.clone().requires_grad_(True)
            t0 = time.perf_counter()
            fn(p).backward()
            ts.append(time.perf_counter() - t0)
        ts = sorted(ts[1:])
        out.append(ts[len(ts) // 2])
    return out[0], out[1]


def main(argv=None) -> int:
    from ua3dtalk.models.deformation.ensemble import resolve_compute_dtype
    from ua3dtalk.utils.malloc import MODES, use_cpu_allocator

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gaussians", type=int, default=10000)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--frames", type=int, default=40)
    ap.add_argument("--allocator", choices=MODES, default="reuse",
                    help="the process's cpu_allocator (default reuse, as ua3dtalk-train sets it; system = glibc's)")
    a = ap.parse_args(argv)
    use_cpu_allocator(a.allocator)
    torch.set_num_threads(2)
    auto = resolve_compute_dtype("auto", "cpu")
    t32 = train_step_time(a.gaussians, a.size, a.steps, compute_dtype="float32")
    tbf = train_step_time(a.gaussians, a.size, a.steps, compute_dtype="bfloat16")
    l32 = train_step_time(a.gaussians, a.size, a.steps, compute_dtype="float32", landmarks=True)
    lbf = train_step_time(a.gaussians, a.size, a.steps, compute_dtype="bfloat16", landmarks=True)
    f32 = inference_fps(a.gaussians, a.size, a.frames, "float32")
    f32_ref = inference_fps(a.gaussians, a.size, a.frames, "float32", fused=False)
    fbf = inference_fps(a.gaussians, a.size, a.frames, "bfloat16")
    fbf_ref = inference_fps(a.gaussians, a.size, a.frames, "bfloat16", fused=False)
    fr = fusion_ratio(a.gaussians)
    s_ref, s_sep = ssim_times(a.size)
    k = a.gaussians // 1000
    print(f"`compute_dtype=auto` resolves to {auto} here; cpu_allocator={a.allocator}\n")
    print("| measurement | float32 | bfloat16 matmuls | ratio | target |\n|---|---|---|---|---|")
    print(f"| training step, face stage, all modules, stage-B ensemble, {a.size}², {k}k | {t32:.3f} s | {tbf:.3f} s | "
          f"{t32 / tbf:.2f}× | |")
    print(f"| the same + landmark term (frame + 32 bank frames) + emotion swap | {l32:.3f} s | {lbf:.3f} s | "
          f"{l32 / lbf:.2f}× | ≤ 0.76× of d689937 (model_vs.py) |")
    print(f"| inference (deformation + render, no grad), {a.size}², {k}k, fused statistics kernel | "
          f"{f32:.1f} frames/s | {fbf:.1f} frames/s | {fbf / f32:.2f}× | ≥ 20 |")
    print(f"| inference as above, torch reference of the statistics | {f32_ref:.1f} frames/s | "
          f"{fbf_ref:.1f} frames/s | "
          f"kernel / reference: {f32 / f32_ref:.2f}× / {fbf / fbf_ref:.2f}× | |")
    print(f"| fusion fwd+bwd, {k}k Gaussians, 4 views: diagonal / full_cov | {fr['diagonal'] * 1e3:.1f} ms / "
          f"{fr['full_cov'] * 1e3:.1f} ms | | {fr['full_cov'] / fr['diagonal']:.1f}× | ≥ 10× |")
    print(f"| training SSIM fwd+bwd, {a.size}²: torchmetrics / separable (ua3dtalk.models.ssim) | "
          f"{s_ref * 1e3:.1f} ms / {s_sep * 1e3:.1f} ms | | {s_ref / s_sep:.1f}× | |")
    if sys.platform.startswith("linux"):
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux
        print(f"\npeak resident memory of this process (every row above): {peak:.0f} MB")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, "src")
    raise SystemExit(main())
