"""Landmark anchors and the landmark term of the face deformation (``ua3dtalk.models.landmarks``).

Checked: the on-line triangulation recovers known 3-D points from their projections through varied
cameras (and stays solvable, at the template's depth, when every frame has the same camera); frames
with a non-finite landmark are skipped; the loss is 0 at the truth and gradient descent on offsets
through it moves the projected anchors onto the target landmarks; bad arguments are refused.
"""
from __future__ import annotations

import math

import pytest
import torch

from ua3dtalk.models.landmarks import DEFAULT_LANDMARKS, LandmarkAnchors, landmark_loss, project
from ua3dtalk.render.projection import quat_to_rotmat


def cameras(n: int, jitter: float = 0.08, seed: int = 0):
    """``n`` cameras looking at the head from 0.55 m with random small rotations → viewmat, K."""
    g = torch.Generator().manual_seed(seed)
    vms, Ks = [], []
    for _ in range(n):
        q = torch.cat([torch.ones(1), torch.randn(3, generator=g) * jitter / 2])
        vm = torch.eye(4)
        vm[:3, :3] = quat_to_rotmat((q / q.norm())[None])[0]
        vm[:3, 3] = torch.tensor([0.0, 0.0, 0.55]) + 0.02 * jitter * torch.randn(3, generator=g)
        vms.append(vm)
        Ks.append(torch.tensor([[150.0, 0, 64], [0, 150.0, 64], [0, 0, 1]]))
    return torch.stack(vms), torch.stack(Ks)


def full_landmarks(points: torch.Tensor, anchors: LandmarkAnchors, vm, K) -> torch.Tensor:
    """Projections of ``points`` [L,3] at the anchors' indices, NaN elsewhere → [B,68,2]."""
    lm = torch.full((vm.shape[0], 68, 2), float("nan"))
    lm[:, anchors.indices] = project(points[None].expand(vm.shape[0], -1, -1), vm, K)
    return lm


def test_triangulation_recovers_points_seen_from_varied_cameras():
    a = LandmarkAnchors(prior=0.0)
    truth = a.template + 0.01 * torch.randn(a.template.shape, generator=torch.Generator().manual_seed(1))
    vm, K = cameras(300, jitter=0.15)
    a.accumulate(full_landmarks(truth, a, vm[:150], K[:150]), vm[:150], K[:150])
    a.accumulate(full_landmarks(truth, a, vm[150:], K[150:]), vm[150:], K[150:])  # sums over calls
    assert int(a.frames) == 300 and a.ready
    err = (a.anchors() - truth).norm(dim=-1)
    assert float(err.max()) < 1e-3, float(err.max())  # < 1 mm; the template is ~17 mm off
    assert float((a.template - truth).norm(dim=-1).mean()) > 5e-3


def test_one_camera_leaves_depth_to_the_template_and_still_reprojects():
    """Every frame from the same camera: depth is unobservable; the prior keeps the system solvable,
    puts the anchor on its viewing ray at about the template's depth, and the reprojection is exact."""
    a = LandmarkAnchors(prior=1.0)
    truth = a.template.clone()
    truth[:, 2] += 0.02  # 2 cm deeper than the template
    vm, K = cameras(1, jitter=0.1)
    vm, K = vm.expand(50, -1, -1), K.expand(50, -1, -1)
    lm = full_landmarks(truth, a, vm, K)
    a.accumulate(lm, vm, K)
    x = a.anchors()
    assert torch.isfinite(x).all()
    reproj = project(x[None], vm[:1], K[:1]) - lm[:1, a.indices]
    assert float(reproj.abs().max()) < 0.05  # pixels
    cam_depth = lambda p: (p @ vm[0, :3, :3].T + vm[0, :3, 3])[:, 2]  # noqa: E731
    assert float((cam_depth(x) - cam_depth(a.template)).abs().max()) < 0.01


def test_frames_with_a_non_finite_landmark_are_skipped():
    a = LandmarkAnchors(min_frames=3)
    vm, K = cameras(4)
    lm = full_landmarks(a.template, a, vm, K)
    lm[1, DEFAULT_LANDMARKS[3], 0] = float("nan")
    a.accumulate(lm, vm, K)
    assert int(a.frames) == 3 and a.ready
    assert torch.isfinite(a.ata).all() and torch.isfinite(a.atb).all()
    with pytest.raises(RuntimeError, match="0 frames accumulated, 3 needed"):
        LandmarkAnchors(min_frames=3).anchors()


def test_loss_is_zero_at_the_truth_and_descends_to_the_target_landmarks():
    a = LandmarkAnchors(prior=0.0)
    vm, K = cameras(40, jitter=0.15)
    a.accumulate(full_landmarks(a.template, a, vm, K), vm, K)
    x = a.anchors()
    lm = full_landmarks(a.template, a, vm[:1], K[:1])
    zero = landmark_loss(x, torch.zeros(1, len(x), 3), lm, a.indices, vm[:1], K[:1], 128, 128)
    assert float(zero) < 1e-4
    # the frame's lips open by 2 cm: the loss sees it and its gradient moves the offsets there
    moved = a.template.clone()
    moved[a.indices >= 56, 1] += 0.02
    target = full_landmarks(moved, a, vm[:1], K[:1])
    off = torch.zeros(1, len(x), 3, requires_grad=True)
    opt = torch.optim.Adam([off], lr=1e-3)
    first = None
    for _ in range(300):
        loss = landmark_loss(x, off, target, a.indices, vm[:1], K[:1], 128, 128)
        first = float(loss.detach()) if first is None else first
        opt.zero_grad()
        loss.backward()
        opt.step()
    px = (project(x[None] + off.detach(), vm[:1], K[:1]) - target[:, a.indices]).norm(dim=-1)
    assert first > 0.003 and float(px.max()) < 0.3, (first, float(px.max()))
    assert math.isclose(float(off.detach()[0, a.indices < 48].abs().max()), 0.0, abs_tol=2e-3)


def test_non_finite_target_landmarks_are_ignored():
    a = LandmarkAnchors(prior=0.0)
    vm, K = cameras(20)
    a.accumulate(full_landmarks(a.template, a, vm, K), vm, K)
    x = a.anchors()
    lm = full_landmarks(a.template, a, vm[:1], K[:1])
    lm[0, a.indices[:5]] = float("nan")
    off = torch.zeros(1, len(x), 3, requires_grad=True)
    loss = landmark_loss(x, off, lm, a.indices, vm[:1], K[:1], 128, 128)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(off.grad).all()


@pytest.mark.parametrize("kwargs, match", [
    ({"indices": [70]}, "distinct landmark numbers"),
    ({"indices": [3, 3]}, "distinct landmark numbers"),
    ({"indices": []}, "distinct landmark numbers"),
    ({"prior": -1.0}, "prior must be ≥ 0"),
    ({"min_frames": 0}, "min_frames ≥ 1"),
])
def test_bad_arguments_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        LandmarkAnchors(**kwargs)


def test_cell_offsets_recover_each_labels_mean_expression():
    """Two label cells whose frames show the same points, cell 1's shifted by a known expression δ (a brow
    raise and a lip-corner pull): cell_offsets()[1] − cell_offsets()[0] recovers δ in the directions the
    cameras observe (< 1 mm; δ is 3–6 mm); a cell without enough frames is not ready and gets 0."""
    a = LandmarkAnchors(prior=0.0, n_cells=3, cell_prior=0.0)
    truth = a.template.clone()
    delta = torch.zeros_like(truth)
    idx = a.indices.tolist()
    for lmk, d in ((19, (0, -0.006, 0)), (24, (0, -0.006, 0)), (48, (-0.003, -0.003, 0)), (54, (0.003, -0.003, 0))):
        delta[idx.index(lmk)] = torch.tensor(d)
    vm, K = cameras(400, jitter=0.2)
    cells = torch.tensor([0, 1] * 200)
    lm = torch.cat([full_landmarks(truth + delta * c, a, vm[j:j + 1], K[j:j + 1])
                    for j, c in enumerate(cells.tolist())])
    a.accumulate(lm, vm, K, cells=cells)
    a.accumulate(lm[:5], vm[:5], K[:5], cells=torch.full((5,), 2))  # 5 frames < min_frames
    off, ready = a.cell_offsets()
    assert ready.tolist() == [True, True, False] and a.cell_frames.tolist() == [200, 200, 5]
    err = (off[1] - off[0] - delta).norm(dim=-1)
    assert float(err.max()) < 1e-3, float(err.max())
    assert float(off[2].abs().max()) == 0.0
    # the global anchors sit between the two cells: the offsets have opposite signs
    assert float((off[0] + off[1]).norm(dim=-1).max()) < 1e-3


def test_cell_prior_shrinks_unobserved_depth_offsets_to_zero():
    """A cell seen from one camera only: its depth is unobserved; the cell prior keeps the offset in the
    image plane (the reprojection of global + offset matches the cell's landmarks) with no depth shift."""
    a = LandmarkAnchors(prior=1.0, n_cells=2, cell_prior=10.0)
    vm, K = cameras(200, jitter=0.15)
    a.accumulate(full_landmarks(a.template, a, vm, K), vm, K, cells=torch.zeros(200, dtype=torch.long))
    shifted = a.template + torch.tensor([0.004, 0.0, 0.0])
    one_vm, one_K = vm[:1].expand(60, -1, -1), K[:1].expand(60, -1, -1)
    a.accumulate(full_landmarks(shifted, a, one_vm, one_K), one_vm, one_K, cells=torch.ones(60, dtype=torch.long))
    off, ready = a.cell_offsets()
    assert bool(ready.all())
    cam_z = one_vm[0, 2, :3]  # the camera's viewing direction in the head frame
    assert float((off[1] @ cam_z).abs().max()) < 5e-4  # no shift along the unobserved direction
    assert float(off[1][:, 0].mean()) > 0.002  # the observed shift is (mostly) kept


def test_cells_are_checked():
    vm, K = cameras(2)
    a = LandmarkAnchors(n_cells=2)
    lm = full_landmarks(a.template, a, vm, K)
    with pytest.raises(ValueError, match="integer tensor"):
        a.accumulate(lm, vm, K, cells=torch.zeros(2))
    with pytest.raises(ValueError, match="< n_cells=2"):
        a.accumulate(lm, vm, K, cells=torch.tensor([0, 2]))
    with pytest.raises(ValueError, match="n_cells=0"):
        LandmarkAnchors().accumulate(lm, vm, K, cells=torch.tensor([0, 1]))
    with pytest.raises(RuntimeError, match="n_cells=0"):
        LandmarkAnchors().cell_offsets()
    with pytest.raises(ValueError, match="n_cells and cell_prior"):
        LandmarkAnchors(n_cells=-1)
    a.accumulate(lm, vm, K, cells=torch.tensor([-1, 1]))  # -1: a frame without a label counts globally only
    assert a.cell_frames.tolist() == [0, 1] and int(a.frames) == 2
