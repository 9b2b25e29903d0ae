"""``torch`` backend: tile-binned compositing in plain PyTorch (runs on any device).

Same contract and semantics as :func:`.dense.composite_dense`. Gaussians are binned to 16×16
tiles with their opacity-aware extents (exact w.r.t. the 1/255 threshold), each tile's list keeps
the global front-to-back order, and tiles are composited in chunks whose padded size is bounded by
``budget`` pixel–Gaussian pairs. Under autograd each chunk is gradient-checkpointed, so peak memory
stays bounded by one chunk instead of growing with the scene.
"""
from __future__ import annotations

import torch
from torch.utils.checkpoint import checkpoint

from .dense import composite_lists, depth_order
from .projection import num_tiles, tile_ranges


def bin_gaussians(means2d, extents, depths, visible, width, height, tile_size=16):
    """Tile binning.

    Returns ``(tile_ids [P], gauss_ids [P], counts [T])``: P (tile, Gaussian) pairs sorted by tile,
    and within a tile front to back (ties by index); ``counts`` is the list length of each of the
    T = tiles_x·tiles_y tiles (row-major).
    """
    ntx, nty = num_tiles(width, height, tile_size)
    tx0, tx1, ty0, ty1 = tile_ranges(means2d, extents, visible, width, height, tile_size)
    order = depth_order(depths, visible)
    wx = (tx1 - tx0 + 1)[order]
    cnt = wx * (ty1 - ty0 + 1)[order]
    gid = order.repeat_interleave(cnt)
    total = int(cnt.sum())
    starts = torch.cumsum(cnt, 0) - cnt
    local = torch.arange(total, device=means2d.device) - starts.repeat_interleave(cnt)
    w = wx.repeat_interleave(cnt)
    tile = (ty0[gid] + local // w) * ntx + tx0[gid] + local % w
    perm = torch.sort(tile, stable=True).indices
    tile, gid = tile[perm], gid[perm]
    counts = torch.bincount(tile, minlength=ntx * nty)
    return tile, gid, counts


def composite_torch(means2d, conics, features, opacities, depths, extents, visible, width, height, tile_size=16,
                    budget=1 << 22):
    dev, dt = means2d.device, means2d.dtype
    C = features.shape[-1]
    ntx, nty = num_tiles(width, height, tile_size)
    n_tiles, tp = ntx * nty, tile_size * tile_size
    tile, gid, counts = bin_gaussians(means2d, extents, depths, visible, width, height, tile_size)

    # Exact zeros that keep every input in the graph (empty slices), so that gradients are zeros, not
    # None, even when no Gaussian is visible.
    zero = means2d[:0].sum() + conics[:0].sum() + features[:0].sum() + opacities[:0].sum()
    out_tiles = features.new_zeros(n_tiles, tp, C) + zero
    T_tiles = means2d.new_ones(n_tiles, tp) + zero
    if gid.numel():
        offsets = torch.cumsum(counts, 0) - counts
        pos = torch.arange(gid.numel(), device=dev) - offsets[tile]
        nonempty = torch.nonzero(counts, as_tuple=False).squeeze(-1)
        nonempty = nonempty[torch.sort(counts[nonempty], stable=True).indices]  # similar lengths together
        lmax = int(counts.max())
        slot = torch.full((n_tiles, lmax), -1, dtype=torch.long, device=dev)
        slot[tile, pos] = gid
        ly, lx = torch.meshgrid(torch.arange(tile_size, device=dev), torch.arange(tile_size, device=dev),
                                indexing="ij")
        ly, lx = ly.reshape(-1).to(dt), lx.reshape(-1).to(dt)
        ncounts = counts[nonempty].tolist()
        s = 0
        while s < len(ncounts):
            e = s + 1
            while e < len(ncounts) and (e - s + 1) * tp * ncounts[e] <= budget:
                e += 1
            tiles = nonempty[s:e]
            L = ncounts[e - 1]
            idx = slot[tiles, :L]
            valid = idx >= 0
            idx = idx.clamp_min(0)
            tx = (tiles % ntx).to(dt)[:, None] * tile_size
            ty = (tiles // ntx).to(dt)[:, None] * tile_size
            pix = torch.stack([tx + lx + 0.5, ty + ly + 0.5], dim=-1)  # [B,tp,2]
            args = (pix, means2d[idx], conics[idx], features[idx], opacities[idx], valid)
            if torch.is_grad_enabled() and any(a.requires_grad for a in args[1:5]):
                out, T = checkpoint(composite_lists, *args, use_reentrant=False)
            else:
                out, T = composite_lists(*args)
            out_tiles = out_tiles.index_copy(0, tiles, out)
            T_tiles = T_tiles.index_copy(0, tiles, T)
            s = e

    def to_image(t):
        t = t.reshape(nty, ntx, tile_size, tile_size, -1).permute(0, 2, 1, 3, 4)
        return t.reshape(nty * tile_size, ntx * tile_size, -1)[:height, :width]

    return to_image(out_tiles), to_image(T_tiles)[..., 0]
