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
