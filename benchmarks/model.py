"""Model benchmark (issue 4): training-step time, inference frame rate, diagonal vs full_cov fusion.

Face stage with every module (audio, content, style, emotion views; stage-B ensemble of 10 members),
256² frames, 10k face Gaussians, 2 threads. Data are random tensors in the FrameBatch layout (the
timing does not depend on image content).

    python benchmarks/model.py [--gaussians 10000] [--size 256] [--steps 8]
"""
from __future__ import annotations

import argparse
import sys
import time

import torch


def make_batch(size: int, channels: int, expr_dim: int = 10):
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
    b = FrameBatch(**kw)
    b.audio_context = torch.randn(1, 50, channels)
    return b


def build(n: int, fusion: str, channels: int = 80, compute_dtype: str = "float32"):
    from omegaconf import open_dict

    from ua3dtalk.cli.train import build_model, compose

    overrides = [f"model.face.num_points={n}", f"model.deformation.fusion={fusion}",
                 "model.deformation.ensemble_switch=0", "model.static_warmup=0",
                 "model.face_density.start=1000000"]
    overrides += [f"model.deformation.compute_dtype={compute_dtype}",
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


def train_step_time(n: int, size: int, steps: int, fusion: str = "diagonal", compute_dtype: str = "float32") -> float:
    import lightning as L

    model = build(n, fusion, compute_dtype=compute_dtype)
    batch = make_batch(size, 80)
    timer = _Timer()
    dl = torch.utils.data.DataLoader([batch] * (steps + 2), batch_size=None)
    tr = L.Trainer(max_steps=(steps + 2) * 2, accelerator="cpu", logger=False, enable_checkpointing=False,
                   enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0,
                   callbacks=[timer.callback()])
    tr.fit(model, dl)
    ts = sorted(timer.times[2:])
    return ts[len(ts) // 2]


def inference_fps(n: int, size: int, frames: int, compute_dtype: str = "float32") -> float:
    model = build(n, "diagonal", compute_dtype=compute_dtype)
    model.stage = "face"
    model.eval()
    batch = make_batch(size, 80)
    with torch.no_grad():
        model.render_batch(batch)
        t0 = time.perf_counter()
        for _ in range(frames):
            model.render_batch(batch)
    return frames / (time.perf_counter() - t0)


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


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gaussians", type=int, default=10000)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--no-bf16", action="store_true", help="skip the bfloat16-ensemble rows")
    a = ap.parse_args(argv)
    torch.set_num_threads(2)
    t_train = train_step_time(a.gaussians, a.size, a.steps)
    fps = inference_fps(a.gaussians, a.size, 20)
    if not a.no_bf16:
        t_train_bf = train_step_time(a.gaussians, a.size, a.steps, compute_dtype="bfloat16")
        fps_bf = inference_fps(a.gaussians, a.size, 20, compute_dtype="bfloat16")
    fr = fusion_ratio(a.gaussians)
    k = a.gaussians // 1000
    print("| measurement | value | target |\n|---|---|---|")
    print(f"| training step, face stage, all modules, stage-B ensemble, {a.size}², {k}k | "
          f"{t_train:.3f} s | ≤ 0.35 s |")
    print(f"| inference (deformation + render, no grad), {a.size}², {k}k | {fps:.1f} frames/s | ≥ 20 |")
    if not a.no_bf16:
        print(f"| training step as above, ensembles in bfloat16 (`compute_dtype=bfloat16`) | {t_train_bf:.3f} s "
              "| ≤ 0.35 s |")
        print(f"| inference as above, ensembles in bfloat16 | {fps_bf:.1f} frames/s | ≥ 20 |")
    print(f"| fusion fwd+bwd, {k}k Gaussians, 4 views: diagonal / full_cov | "
          f"{fr['diagonal'] * 1e3:.1f} ms / {fr['full_cov'] * 1e3:.1f} ms = "
          f"{fr['full_cov'] / fr['diagonal']:.1f}× | ≥ 10× |")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, "src")
    raise SystemExit(main())
