"""Rasterizer benchmark: `torch` vs `cpu` backends on a synthetic head, 2 threads.

Prints, for (256², 10k) and (512², 30k) Gaussians: forward and forward+backward seconds of the
full `rasterize` call (projection + compositing), the torch/cpu ratio, and the peak extra RSS of
each measurement (each runs in a fresh subprocess so peaks do not mix).

    python benchmarks/render.py [--repeats 5] [--configs 256:10000,512:30000] [--markdown]
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time


def build_scene(size: int, n: int):
    import torch

    from ua3dtalk.data.synth.camera import as_torch, head_viewmat, intrinsics
    from ua3dtalk.data.synth.head import NEUTRAL_EXPR, ProceduralHead

    g = ProceduralHead(seed=0, n_gaussians=n).deform(NEUTRAL_EXPR)
    vm, K = as_torch(head_viewmat(yaw=0.2, pitch=0.05)), as_torch(intrinsics(size))
    params = [g.means, g.quats, g.scales, g.opacities, g.colors]
    return [p.clone().requires_grad_(True) for p in params], vm, K, torch.full((3,), 1.0)


def measure_one(backend: str, size: int, n: int, repeats: int) -> dict:
    import torch

    from ua3dtalk.render import rasterize

    torch.set_num_threads(2)
    params, vm, K, bg = build_scene(size, n)

    def fwd():
        return rasterize(*params, vm, K, size, size, background=bg, backend=backend)

    def fwd_bwd():
        out = fwd()
        (out.image.sum() + out.depth.sum()).backward()
        for p in params:
            p.grad = None

    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    res = {}
    for name, fn, grad in (("fwd", fwd, False), ("fwd_bwd", fwd_bwd, True)):
        with torch.set_grad_enabled(grad):
            fn()  # warm-up (and kernel load)
            ts = []
            for _ in range(repeats):
                t0 = time.perf_counter()
                fn()
                ts.append(time.perf_counter() - t0)
        res[name] = sorted(ts)[len(ts) // 2]
    with torch.no_grad():
        out = fwd()
        res["backend"] = out.backend
        res["visible"] = int((out.radii > 0).sum())
    res["peak_mb"] = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024
    return res


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--configs", default="256:10000,512:30000")
    ap.add_argument("--one", nargs=3, metavar=("BACKEND", "SIZE", "N"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.one:
        b, s, n = args.one
        print(json.dumps(measure_one(b, int(s), int(n), args.repeats)))
        return 0
    rows = []
    for cfg in args.configs.split(","):
        size, n = (int(v) for v in cfg.split(":"))
        r = {}
        for backend in ("torch", "cpu"):
            reps = max(1, args.repeats // 2) if backend == "torch" else args.repeats
            cmd = [sys.executable, __file__, "--repeats", str(reps), "--one", backend, str(size), str(n)]
            out = subprocess.run(cmd,
                                 capture_output=True, text=True, check=True)
            r[backend] = json.loads(out.stdout.strip().splitlines()[-1])
        rows.append((size, n, r))
    hdr = ("| scene | backend | forward s | fwd FPS | fwd+bwd s | peak extra RSS MB |\n"
           "|---|---|---|---|---|---|")
    print(hdr)
    for size, n, r in rows:
        for b in ("torch", "cpu"):
            m = r[b]
            print(f"| {size}² / {n // 1000}k | {m['backend']} | {m['fwd']:.4f} | {1 / m['fwd']:.1f} | "
                  f"{m['fwd_bwd']:.4f} | {m['peak_mb']:.0f} |")
    print("\n| scene | torch/cpu forward | torch/cpu fwd+bwd |\n|---|---|---|")
    for size, n, r in rows:
        print(f"| {size}² / {n // 1000}k | {r['torch']['fwd'] / r['cpu']['fwd']:.1f}× | "
              f"{r['torch']['fwd_bwd'] / r['cpu']['fwd_bwd']:.1f}× |")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, "src")
    raise SystemExit(main())
