"""The landmark term's replay bank and the emotion-swap term (★, not in the paper; see ``landmark_frames``,
``landmark_bank`` and ``emotion_swap_weight`` of :class:`~ua3dtalk.models.module.UA3DTalk`), a mixin of the
LightningModule. The bank holds the conditioning, landmarks and cameras of training frames seen so far; each
render step evaluates the deformation at the landmark anchors of a few of them (no rendering)."""
from __future__ import annotations

from typing import Optional

import torch

from .landmarks import landmark_loss, project
from .talking_head import Conditioning


class LandmarkBank:
    """Replay bank of training frames for the landmark and emotion-swap terms (mixin of the LightningModule;
    state ``_bank``, ``_bank_n``, ``_bank_seen``, saved in the checkpoint by the module's hooks)."""

    def _landmark_anchors(self, batch) -> Optional[torch.Tensor]:
        """The anchors ``[L,3]`` to supervise the face deformation with, or None (term off, mouth stage, no
        landmarks in the batch, too few frames yet). Each successful render step adds its frames to them."""
        lm = getattr(batch, "landmarks", None)
        if self.landmark_anchors is None or lm is None:
            return None
        if self.stage == "mouth" or not self.landmark_anchors.ready:
            return None
        return self.landmark_anchors.anchors()

    def _bank_add(self, batch, cond: Conditioning) -> None:
        """Store the conditioning, landmarks and cameras of the batch's frames in the replay bank
        (reservoir sampling once it holds ``landmark_bank`` frames)."""
        rows = {"audio": cond.audio, "eye": cond.face_eye(), "content": cond.content, "style": cond.style,
                "emotion": cond.emotion, "landmarks": batch.landmarks, "viewmat": batch.viewmat, "K": batch.K,
                "cell": self._cells(batch)}
        rows = {k: v.detach() for k, v in rows.items() if v is not None}
        for j in range(batch.landmarks.shape[0]):
            self._bank_seen += 1
            n = self._bank_n
            if n < self.landmark_bank:
                if not self._bank or n == len(self._bank["K"]):  # grow by doubling, up to the capacity
                    size = min(self.landmark_bank, max(64, 2 * n))
                    for k, v in rows.items():
                        new = v.new_empty((size, *v.shape[1:]))
                        if n:
                            new[:n] = self._bank[k][:n]
                        self._bank[k] = new
                slot = n
                self._bank_n += 1
            else:
                slot = int(torch.randint(self._bank_seen, (1,)))
                if slot >= self.landmark_bank:
                    continue
            for k, v in rows.items():
                self._bank[k][slot] = v[j]

    def _cells(self, batch) -> Optional[torch.Tensor]:
        """Each frame's label cell ``emotion · n_levels + intensity − 1`` ``[B]`` (-1 where unknown), or None
        when the emotion-swap term is off or the batch has no labels."""
        if self.emotion_swap_weight <= 0 or getattr(batch, "emotion", None) is None \
                or getattr(batch, "intensity", None) is None:
            return None
        n_emo, n_lvl = len(self.emotion_control.emotions), self.emotion_control.n_levels
        e, k = batch.emotion.long(), batch.intensity.long()
        ok = (e >= 0) & (e < n_emo) & (k >= 1) & (k <= n_lvl)
        return torch.where(ok, e * n_lvl + k - 1, torch.full_like(e, -1))

    def _swap_plan(self, cells: torch.Tensor, anchors: Optional[torch.Tensor] = None):
        """For bank frames of label cells ``cells`` ``[B]``: which rows get a swapped label, the target cell of
        each and the target-minus-own anchor offsets → (rows ``[S]``, embeddings ``[S,dim]``, offsets
        ``[S,L,3]``), or None when fewer than two cells are ready (triangulated and with a prototype).
        ``anchors``: the global anchors if already solved."""
        offsets, ready = self.landmark_anchors.cell_offsets(base=anchors)
        ready = ready & (self.emotion_control.counts.view(-1) > 0).to(ready.device)
        n_ready = int(ready.sum())
        if n_ready < 2:
            return None
        own_ok = (cells >= 0) & ready[cells.clamp_min(0)]
        rows = own_ok.nonzero()[:, 0]
        if len(rows) == 0:
            return None
        own = cells[rows]
        choices = ready.nonzero()[:, 0]  # [R]
        # a uniformly drawn ready cell other than the row's own: draw among R−1 and skip the own cell
        r = torch.randint(n_ready - 1, (len(rows),), device=cells.device)
        own_pos = torch.searchsorted(choices, own)
        target = choices[r + (r >= own_pos).long()]
        protos = self.emotion_control.prototypes.view(-1, self.emotion_control.dim)
        return rows, protos[target], offsets[target] - offsets[own]

    def _bank_landmark(self, anchors: torch.Tensor, step: int, width: int, height: int):
        """The landmark term on ``landmark_frames`` frames drawn from the replay bank, and the emotion-swap
        term on those of them whose label is known → (landmark, swap); each None when it has no frames."""
        n = self._bank_n
        if n == 0:
            return None, None
        pick = torch.randperm(n, device=self._bank["K"].device)[:self.landmark_frames]
        get = lambda k: self._bank[k][pick] if k in self._bank else None  # noqa: E731
        plan = self._swap_plan(get("cell"), anchors) if self.emotion_swap_weight > 0 and "cell" in self._bank else None
        rows = torch.arange(len(pick), device=pick.device)
        emo = get("emotion")
        if plan is not None:  # one forward over the frames and their label-swapped copies
            rows = torch.cat([rows, plan[0]])
            emo = torch.cat([emo, plan[1].to(emo)])
        has_emotion = "emotion" in self.deformation.views
        f_emo = self.emotion_field(anchors, emo) if has_emotion else None
        # a swapped copy differs from its frame in the emotion only: with the emotion view, the other views are
        # evaluated once per bank frame and gathered (frame_rows; the same values and gradients)
        gather = plan is not None and has_emotion

        def frame(k: str) -> Optional[torch.Tensor]:  # a frame input: per bank frame, or per output row
            t = get(k)
            return t if gather or t is None else t[rows]

        d = self.deformation(anchors, audio=frame("audio"), blink=frame("eye"), content=frame("content"),
                             style=frame("style"), emotion=f_emo, step=self.deformation.schedule_step(step),
                             update_stats=False,
                             frame_rows=rows if gather else None)
        xyz, B = d.deltas.xyz, len(pick)
        lm = landmark_loss(anchors, xyz[:B], get("landmarks"), self.landmark_anchors.indices, get("viewmat"),
                           get("K"), width, height)
        if plan is None:
            return lm, None
        sel = plan[0]
        vm, K = get("viewmat")[sel], get("K")[sel]
        pred = project(anchors[None] + xyz[B:], vm, K)
        target = project(anchors[None] + xyz[:B][sel].detach() + plan[2].to(xyz), vm, K)
        return lm, (pred - target).abs().mean() / float(max(width, height))
