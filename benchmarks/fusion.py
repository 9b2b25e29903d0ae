"""Fusion benchmark: `diagonal` vs `full_cov` uncertainty fusion (DESIGN §4 ★), 2 threads.

Default setting: 10k Gaussians, 4 views, code size D=48, ensemble T=10, float32, CPU. Three levels:

* ``fusion``     — the fusion function alone on given per-view statistics:
                   ``diagonal_fusion(mus, vars)`` vs ``full_cov_fusion(mus, covs)`` (covs [V,N,D,D]);
* ``fusion+cov`` — from the ensemble members' means and aleatoric variances: the diagonal variance vs
                   the full covariance (``ensemble_covariance``) followed by the fusion, vs the same fusion
                   without any D×D matrix (``full_cov_lowrank``: ``full_cov_fusion_factors``, the Woodbury
                   identity twice: T×T inverses per view and one VT×VT inverse — what the module uses);
* ``module``     — the whole ``UncertaintyFusion`` in stage B with the DESIGN view sizes
                   (audio 102, content 128, style 128, emotion 192), ensembles included.

For each: the best-of-``repeats`` seconds of the forward pass (no grad) and of forward+backward (the
minimum is robust to other processes on a shared machine, which only ever add time), the
full_cov/diagonal ratio, and the peak extra RSS (every measurement runs in a fresh subprocess so peaks
do not mix).

    python benchmarks/fusion.py [--n 10000] [--views 4] [--dim 48] [--members 10] [--threads 2]
                                [--repeats 5] [--levels fusion,fusion+cov,module]
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

LEVELS = ("fusion", "fusion+cov", "module")
MODES = ("diagonal", "full_cov")
LEVEL_MODES = {"fusion": MODES, "fusion+cov": MODES + ("full_cov_lowrank",), "module": MODES}


def _best(ts):
    return min(ts)


def bench_fusion(mode: str, level: str, n: int = 10000, views: int = 4, dim: int = 48, members: int = 10,
                 threads: int = 2, repeats: int = 5, seed: int = 0) -> dict:
    """Time one (mode, level) combination in this process; returns ``{"fwd", "fwd_bwd", "peak_mb"}``
    (seconds, best of ``repeats`` after one warm-up; peak extra RSS in MB)."""
    import torch

    from ua3dtalk.models.deformation import (
        UncertaintyFusion,
        ViewEstimate,
        diagonal_fusion,
        ensemble_covariance,
        full_cov_fusion,
        full_cov_fusion_factors,
    )

    torch.set_num_threads(threads)
    g = torch.Generator().manual_seed(seed)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

    if level == "module":
        sizes = [102, 128, 128, 192, 128, 128, 128, 128][:views]
        names = ["audio", "content", "style", "emotion", "v4", "v5", "v6", "v7"][:views]
        fu = UncertaintyFusion(dict(zip(names, sizes)), out_dim=dim, members=members, fusion=mode).train()
        # (full_cov: the module's own path, full_cov_fusion_factors)
        inputs = {k: torch.randn(1, n, s, generator=g).requires_grad_(True) for k, s in zip(names, sizes)}

        def run(grad: bool):
            out = fu(inputs, step=None)  # step=None → stage B (all members)
            if grad:
                (out.mu.sum() + out.var.sum()).backward()
                fu.zero_grad(set_to_none=True)
                for t in inputs.values():
                    t.grad = None
    elif level == "fusion":
        mus = torch.randn(views, n, dim, generator=g).requires_grad_(True)
        var = (torch.rand(views, n, dim, generator=g) + 0.1).requires_grad_(True)
        if mode == "full_cov":
            a = torch.randn(views, n, dim, members, generator=g) / members ** 0.5
            cov = (a @ a.transpose(-1, -2) + torch.diag_embed(var.detach())).requires_grad_(True)
            leaves = [mus, cov]
        else:
            leaves = [mus, var]

        def run(grad: bool):
            if mode == "full_cov":
                mu_f, cov_f, _ = full_cov_fusion(mus, cov)
                v_f = cov_f.diagonal(dim1=-2, dim2=-1)
            else:
                mu_f, v_f, _ = diagonal_fusion(mus, var)
            if grad:
                (mu_f.sum() + v_f.sum()).backward()
                for t in leaves:
                    t.grad = None
    elif level == "fusion+cov":
        mem = torch.randn(views, members, n, dim, generator=g).requires_grad_(True)
        alea = (torch.rand(views, n, dim, generator=g) + 0.1).requires_grad_(True)
        floor = 1e-4

        def run(grad: bool):
            mu = mem.mean(1)
            ep = (mem - mu.unsqueeze(1)).square().mean(1)
            var = alea + ep + floor
            if mode == "full_cov_lowrank":
                w = ((mem - mu.unsqueeze(1)) / members ** 0.5).movedim(1, -1)  # [V, N, D, T]
                mu_f, v_f, _, _ = full_cov_fusion_factors(mu, var - ep, w)
            elif mode == "full_cov":
                covs = torch.stack([
                    ensemble_covariance(ViewEstimate(mu=mu[v], var=var[v], aleatoric=alea[v], epistemic=ep[v],
                                                     members_mu=mem[v]))
                    for v in range(views)])
                mu_f, cov_f, _ = full_cov_fusion(mu, covs)
                v_f = cov_f.diagonal(dim1=-2, dim2=-1)
            else:
                mu_f, v_f, _ = diagonal_fusion(mu, var)
            if grad:
                (mu_f.sum() + v_f.sum()).backward()
                mem.grad = alea.grad = None
    else:
        raise ValueError(f"unknown level {level!r}; expected one of {LEVELS}")

    res = {}
    for key, grad in (("fwd", False), ("fwd_bwd", True)):
        with torch.set_grad_enabled(grad):
            run(grad)  # warm-up
            ts = []
            for _ in range(repeats):
                t0 = time.perf_counter()
                run(grad)
                ts.append(time.perf_counter() - t0)
        res[key] = _best(ts)
    res["peak_mb"] = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024
    return res


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=10000, help="Gaussians")
    ap.add_argument("--views", type=int, default=4)
    ap.add_argument("--dim", type=int, default=48)
    ap.add_argument("--members", type=int, default=10)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--levels", default=",".join(LEVELS))
    ap.add_argument("--one", nargs=2, metavar=("MODE", "LEVEL"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    common = dict(n=args.n, views=args.views, dim=args.dim, members=args.members, threads=args.threads,
                  repeats=args.repeats)
    if args.one:
        print(json.dumps(bench_fusion(args.one[0], args.one[1], **common)))
        return 0
    levels = [lv for lv in args.levels.split(",") if lv]
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
    res: dict = {}
    for level in levels:
        for mode in LEVEL_MODES[level]:
            cmd = [sys.executable, os.path.abspath(__file__), "--one", mode, level]
            for k in ("n", "views", "dim", "members", "threads", "repeats"):
                cmd += [f"--{k}", str(getattr(args, k))]
            out = subprocess.run(cmd, capture_output=True, text=True, env=env)
            if out.returncode != 0:
                raise SystemExit(f"benchmark {mode}/{level} failed:\n{out.stderr}")
            res[(level, mode)] = json.loads(out.stdout.strip().splitlines()[-1])
    print(f"fusion benchmark: N={args.n} Gaussians, V={args.views} views, D={args.dim}, T={args.members}, "
          f"{args.threads} threads, float32, best of {args.repeats}\n")
    print("| level | fusion | forward s | fwd+bwd s | peak extra RSS MB |\n|---|---|---|---|---|")
    for level in levels:
        for mode in LEVEL_MODES[level]:
            r = res[(level, mode)]
            print(f"| {level} | {mode} | {r['fwd']:.4f} | {r['fwd_bwd']:.4f} | {r['peak_mb']:.0f} |")
    print("\n| level | full_cov/diagonal forward | full_cov/diagonal fwd+bwd |\n|---|---|---|")
    for level in levels:
        d, f = res[(level, "diagonal")], res[(level, "full_cov")]
        print(f"| {level} | {f['fwd'] / d['fwd']:.1f}× | {f['fwd_bwd'] / d['fwd_bwd']:.1f}× |")
    if "fusion+cov" in levels:
        f, lr = res[("fusion+cov", "full_cov")], res[("fusion+cov", "full_cov_lowrank")]
        print("\n| fusion+cov | dense / Woodbury forward | dense / Woodbury fwd+bwd |\n|---|---|---|")
        print(f"| full_cov | {f['fwd'] / lr['fwd']:.1f}× | {f['fwd_bwd'] / lr['fwd_bwd']:.1f}× |")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src"))
    raise SystemExit(main())
