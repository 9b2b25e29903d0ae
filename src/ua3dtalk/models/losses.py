"""The losses of the render stages (DESIGN §4), a mixin of :class:`~ua3dtalk.models.module.UA3DTalk`.

Per frame (:meth:`RenderLosses._frame_loss`): L1 + ``ssim_weight``·(1 − SSIM) between the render composited
over the frame's background and the target (the frame where the branch's mask is set, the background
elsewhere); after ``static_warmup`` steps small L1 regularisers on the offsets and an alpha-vs-mask L1; the
mouth-hole and mouth-cover terms; optionally the lip-box L1 (``face``/``fuse``), the landmark term, LPIPS
(``fuse``) and the views' likelihood term. The weights are attributes of the LightningModule (see its
docstring).
"""
from __future__ import annotations

from typing import Optional

import torch
from .landmarks import landmark_loss
from .ssim import ssim as ssim_fn  # torchmetrics' SSIM, with a separable window (faster)


class RenderLosses:
    """Loss terms of the ``mouth``, ``face`` and ``fuse`` stages (mixin of the LightningModule: it renders
    with :class:`~ua3dtalk.models.talking_head.TalkingHead` and reads the loss weights of the module)."""

    def _frame_loss(self, batch, cond, i: int, step: int, anchors: Optional[torch.Tensor], renders: list,
                    W: int, H: int) -> tuple[torch.Tensor, dict]:
        """The loss of frame ``i`` of a render-stage batch and its terms (for the logs); the frame's renders
        are appended to ``renders`` as ``(branch, BranchRender)``."""
        img, bg, m = self._targets(batch, i)
        vm, K = batch.viewmat[i], batch.K[i]
        face_r = None  # this frame's face-branch render (landmark term)
        if self.stage == "mouth":
            if i == 0:
                self._init_points_from_frame(batch, "mouth")
                self._init_mouth_color(batch)
            r = self.head.render_mouth(cond, i, vm, K, W, H, step=step)
            mask = m("mouth_mask")
            target = img * mask + bg * (1 - mask)
            pred = r.image + (1 - r.alpha) * bg
            # only the inside-mouth region and the region outside the head count for the mouth branch
            head = torch.clamp(m("face_mask") + m("hair_mask"), 0, 1) * (1 - mask)
            w = 1 - head
            err = (pred - target).abs()
            if self.mouth_photo == "region":  # the inner mouth and the outside of the head, each by its own size
                out = w * (1 - mask)
                photo = {"l1": (err * mask).sum() / (mask.sum() * 3).clamp_min(1)
                         + (err * out).sum() / (out.sum() * 3).clamp_min(1)}
            else:
                photo = {"l1": (err * w).sum() / (w.sum() * 3).clamp_min(1)}
            photo["ssim"] = self._photometric(pred * w + target * (1 - w), target)["ssim"]
            # mouth alpha outside the inner mouth: penalised fully over the background, lightly behind
            # the head (hidden by the face there, but a mouth branch spread behind the whole face
            # shows through wherever the face is not fully opaque)
            alpha_l = (r.alpha * ((1 - torch.clamp(mask + head, 0, 1)) + 0.1 * head)).mean()
            hole = torch.zeros((), device=self.device)
            cover = self._cover(r.alpha, mask)
            reg = self._reg(r.deltas)
            renders.append(("mouth", r))
        elif self.stage == "face":
            if i == 0:
                self._init_points_from_frame(batch, "face")
            deform = step >= self.static_warmup
            r = self.head.render_face(cond, i, vm, K, W, H, deform=deform, step=step - self.static_warmup,
                                 anchors=anchors if deform else None)
            mask = torch.clamp(m("face_mask") + m("hair_mask"), 0, 1)
            if self.face_random_background:  # a see-through face shows the random colour: it is penalised
                bg = self._random_color(img).expand_as(bg)
            target = img * mask + bg * (1 - mask)
            pred = r.image + (1 - r.alpha) * bg
            photo = self._photometric(pred, target)
            alpha_l = (r.alpha - mask).abs().mean() if deform else torch.zeros((), device=self.device)
            hole = self._hole(r.alpha, m("mouth_mask")) if deform else torch.zeros((), device=self.device)
            cover = torch.zeros((), device=self.device)
            reg = self._reg(r.deltas)
            renders.append(("face", r))
            face_r = r
        else:  # fuse
            pred, alpha, rf, rm = self.head.render_frame(
                cond, i, vm, K, W, H, bg, step=step, anchors=anchors,
                mouth_color_mask=m("mouth_mask") if self.fuse_mouth_grad == "inner" else None)
            mask = torch.clamp(m("face_mask") + m("hair_mask") + m("mouth_mask"), 0, 1)
            target = img * mask + bg * (1 - mask)
            photo = self._photometric(pred, target)
            alpha_l = (alpha - mask).abs().mean()
            hole = self._hole(rf.alpha, m("mouth_mask"))
            cover = self._cover(alpha, m("mouth_mask"))
            reg = self._reg(rf.deltas) + self._reg(rm.deltas)
            if self.lpips_weight > 0:
                lm = None if batch.landmarks is None else batch.landmarks[i]
                photo["lpips"] = self._perceptual(pred, target, lm, m("mouth_mask"), mask, step)
            renders += [("face", rf), ("mouth", rm)]
            face_r = rf
        loss = (photo["l1"] + self.ssim_weight * photo["ssim"] + self.alpha_weight * alpha_l
                + self.hole_weight * hole + self.cover_weight * cover + self.reg_weight * reg)
        if self.lip_weight > 0 and self.stage != "mouth":
            lm = None if batch.landmarks is None else batch.landmarks[i]
            photo["lip"] = self._lip(pred, target, lm, m("mouth_mask"))
            loss = loss + self.lip_weight * photo["lip"]
        if face_r is not None and face_r.anchor_xyz is not None:
            photo["landmark"] = landmark_loss(anchors, face_r.anchor_xyz, batch.landmarks[i:i + 1],
                                              self.landmark_anchors.indices, vm[None], K[None], W, H)
            loss = loss + self.landmark_weight * photo["landmark"]
        if "lpips" in photo:
            loss = loss + self.lpips_weight * photo["lpips"]
        if self.uncertainty_weight > 0:
            nll = self._uncertainty_nll(renders)
            if nll is not None:
                photo["uncertainty_nll"] = nll
                loss = loss + self.uncertainty_weight * nll
        return loss, {**photo, "alpha": alpha_l, "hole": hole, "cover": cover, "reg": reg}

    def _targets(self, batch, i):
        img = batch.image[i].permute(1, 2, 0)
        bg = batch.background[i].permute(1, 2, 0)
        m = lambda name: getattr(batch, name)[i, 0][..., None].to(img.dtype)  # noqa: E731
        return img, bg, m

    def _photometric(self, pred: torch.Tensor, target: torch.Tensor) -> dict:
        """pred/target [H,W,3] → l1, ssim terms."""
        l1 = (pred - target).abs().mean()
        p, t = pred.permute(2, 0, 1)[None], target.permute(2, 0, 1)[None]
        ssim = ssim_fn(p, t, data_range=1.0)
        return {"l1": l1, "ssim": 1 - ssim}

    def _reg(self, deltas) -> torch.Tensor:
        if deltas is None:
            return torch.zeros((), device=self.device)
        terms = [d.abs().mean() for d in (deltas.xyz, deltas.rot, deltas.scale) if d is not None]
        return sum(terms) if terms else torch.zeros((), device=self.device)

    def _lpips(self):
        if not self._lpips_net:
            from ua3dtalk.metrics.image import LPIPSMetric

            self._lpips_net.append(LPIPSMetric(random_backbone=self.lpips_random_backbone))
        return self._lpips_net[0]

    def _perceptual(self, pred: torch.Tensor, target: torch.Tensor, landmarks: Optional[torch.Tensor],
                    inner: torch.Tensor, head: torch.Tensor, step: int) -> torch.Tensor:
        """LPIPS of the lip box plus ``lpips_patches`` random head patches: pred/target [H,W,3],
        landmarks [68,2] pixels or None, inner/head masks [H,W,1] → scalar (mean over the crops)."""
        from ua3dtalk.metrics.image import crop_boxes

        H, W = pred.shape[:2]
        boxes = []
        lip = self._lip_box(landmarks, inner, pred.dtype)
        if lip is not None:
            boxes.append(lip)
        ps = min(self.lpips_patch_size, H, W)
        if self.lpips_patches > 0 and ps >= 32:
            g = torch.Generator().manual_seed(int(step) * 7919 + len(boxes))
            ys, xs = torch.nonzero(head[..., 0] > 0, as_tuple=True)
            for _ in range(self.lpips_patches):
                if len(ys):  # a patch centred on a random head pixel, shifted inside the frame
                    k = int(torch.randint(len(ys), (1,), generator=g))
                    cy, cx = int(ys[k]), int(xs[k])
                else:
                    cy, cx = H // 2, W // 2
                y0, x0 = min(max(cy - ps // 2, 0), H - ps), min(max(cx - ps // 2, 0), W - ps)
                boxes.append(torch.tensor([x0, y0, x0 + ps, y0 + ps], dtype=pred.dtype, device=pred.device))
        if not boxes:
            return pred.new_zeros(())
        b = torch.stack(boxes)
        size = max(32, self.lpips_patch_size)
        p_crops = crop_boxes(pred.permute(2, 0, 1)[None].expand(len(boxes), -1, -1, -1), b, size)
        t_crops = crop_boxes(target.permute(2, 0, 1)[None].expand(len(boxes), -1, -1, -1), b, size)
        net = self._lpips().to(pred.device)  # its `model` is the lpips.LPIPS network (differentiable)
        return net.model(p_crops.clamp(0, 1), t_crops.detach().clamp(0, 1), normalize=True).mean()

    @staticmethod
    def _lip_box(landmarks: Optional[torch.Tensor], inner: torch.Tensor, dtype) -> Optional[torch.Tensor]:
        """The square lip box ``[x0, y0, x1, y1]`` (pixels, may extend past the frame): around the mouth landmarks
        48–67 of ``landmarks`` [68,2] when they are finite, else around the inside-mouth mask ``inner`` [H,W,1],
        with a 40 % margin and a half-side of at least 4 px; None when neither is available (no landmarks and
        a closed mouth)."""
        if landmarks is not None and bool(torch.isfinite(landmarks[48:68]).all()):
            pts = landmarks[48:68].to(dtype)
            lo, hi = pts.min(0).values, pts.max(0).values
        elif bool(inner.any()):
            ys, xs = torch.nonzero(inner[..., 0], as_tuple=True)
            lo = torch.stack([xs.min(), ys.min()]).to(dtype)
            hi = torch.stack([xs.max(), ys.max()]).to(dtype) + 1
        else:
            return None
        c, half = (lo + hi) / 2, ((hi - lo).max() / 2 * 1.4).clamp_min(4.0)  # square box, 40 % margin
        return torch.stack([c[0] - half, c[1] - half, c[0] + half, c[1] + half])

    def _lip(self, pred: torch.Tensor, target: torch.Tensor, landmarks: Optional[torch.Tensor],
             inner: torch.Tensor) -> torch.Tensor:
        """Mean L1 of pred/target [H,W,3] over the pixels of the lip box (:meth:`_lip_box`), normalised by the
        box's pixel count inside the frame — the lips and inner mouth are ≈ 4 % of a demo frame, so the image-wide
        L1 gives them ≈ 4 % of its gradient; 0 when there is no box."""
        box = self._lip_box(landmarks, inner, pred.dtype)
        if box is None:
            return pred.new_zeros(())
        H, W = pred.shape[:2]
        x0, y0 = int(box[0].floor().clamp(0, W)), int(box[1].floor().clamp(0, H))
        x1, y1 = int(box[2].ceil().clamp(0, W)), int(box[3].ceil().clamp(0, H))
        if x1 <= x0 or y1 <= y0:
            return pred.new_zeros(())
        return (pred[y0:y1, x0:x1] - target[y0:y1, x0:x1]).abs().mean()

    @staticmethod
    def _hole(face_alpha: torch.Tensor, inner: torch.Tensor) -> torch.Tensor:
        """Mean face alpha [H,W,1] over the inside-mouth pixels ``inner`` [H,W,1] (0 when there are none)."""
        return (face_alpha * inner).sum() / inner.sum().clamp_min(1.0)

    @staticmethod
    def _cover(alpha: torch.Tensor, inner: torch.Tensor) -> torch.Tensor:
        """Mean transparency ``1 − alpha`` [H,W,1] over the inside-mouth pixels ``inner`` (0 when none)."""
        return ((1 - alpha) * inner).sum() / inner.sum().clamp_min(1.0)

    def _uncertainty_nll(self, renders) -> Optional[torch.Tensor]:
        """The views' likelihood term of this frame's renders (the last one or two of ``renders``)."""
        terms = []
        for name, r in renders[-2:] if self.stage == "fuse" else renders[-1:]:
            net = self.deformation if name == "face" else self.mouth_deformation
            if r.fusion is not None:
                t = net.fusion.uncertainty_nll(r.fusion, self.uncertainty_beta)
                if t is not None:
                    terms.append(t)
        return torch.stack(terms).sum() if terms else None

    @staticmethod
    def _random_color(like: torch.Tensor) -> torch.Tensor:
        """A uniform random RGB colour [3] (``face_random_background``)."""
        return torch.rand(3, device=like.device, dtype=like.dtype)

    def _init_points_from_frame(self, batch, branch: str) -> None:
        """``init_from_frame``: put the ``branch`` Gaussians on the pixels of the batch's first frame that the branch
        renders (face ∪ hair for the face, the inner mouth for the mouth; :mod:`ua3dtalk.models.frame_init`), once;
        a mouth waits for a frame with at least 16 inner-mouth pixels; ``init_mouth_back`` of its Gaussians form the
        cavity behind the frame's lips (:func:`~ua3dtalk.models.frame_init.mouth_points`)."""
        if not self.init_from_frame or bool(getattr(self, f"{branch}_points_initialised")):
            return
        from .frame_init import frame_points, mouth_points

        if branch == "face":
            mask = (batch.face_mask[0, 0] | batch.hair_mask[0, 0]) & ~batch.mouth_mask[0, 0]
        else:
            mask = batch.mouth_mask[0, 0]
        if int(mask.sum()) < 16:
            return
        g = getattr(self, branch)
        gen = torch.Generator().manual_seed(int(self.global_step) * 2 + (branch == "mouth"))
        img = batch.image[0].permute(1, 2, 0)
        if branch == "mouth":
            lips = None if batch.landmarks is None else batch.landmarks[0, 48:60]
            points, rgb, scales = mouth_points(mask, img, batch.viewmat[0], batch.K[0], g.bounds, len(g),
                                               self.init_mouth_back, lips=lips, generator=gen)
        else:
            points, rgb, scales = frame_points(mask, img, batch.viewmat[0], batch.K[0], g.bounds, len(g),
                                               generator=gen)
        g.reinitialise(points, rgb, scales, opacity=self.init_from_frame_opacity)
        getattr(self, f"{branch}_points_initialised").fill_(True)
        if branch == "mouth":
            self.mouth_color_initialised.fill_(True)  # the colours are the pixels': no mean colour over them

    def _init_mouth_color(self, batch) -> None:
        """``init_mouth_color``: the mouth Gaussians take the mean colour of the batch's inner-mouth pixels
        (the first time a batch has some)."""
        if not self.init_mouth_color or bool(self.mouth_color_initialised):
            return
        m = batch.mouth_mask.to(batch.image.dtype)  # [B,1,H,W]
        if float(m.sum()) < 1:
            return
        rgb = (batch.image * m).sum((0, 2, 3)) / m.sum()
        self.mouth.set_colors(rgb)
        self.mouth_color_initialised.fill_(True)
