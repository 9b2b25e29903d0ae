"""A resumable, shardable training order (DESIGN §9.1): the batches of one epoch, fast-forwardable.

* :class:`EpochBatchSampler` — batches of the ``e``-th pass over a seeded index sampler, sharded over
  ranks, skipping the batches an interrupted epoch had done (plain Python);
* :func:`make_train_loader` — a DataModule's training loader for its current stage rebuilt over an
  :class:`EpochBatchSampler` (same seeded shuffling or curriculum sampler as ``dm.train_dataloader()``).
"""
from __future__ import annotations

import math
from typing import Any, Callable

__all__ = ["EpochBatchSampler", "make_train_loader"]


class EpochBatchSampler:
    """Batches of one epoch from a fresh-per-run index sampler, sharded over ranks, fast-forwardable.

    The order of epoch ``e`` is the ``e``-th pass over ``sampler`` (``sampler_factory()`` is built once;
    with a seeded generator the order depends only on the seed and the epoch). ``start_epoch`` passes
    are consumed at construction (indices only) and the first ``skip_batches`` batches of the first
    epoch are skipped, which reproduces an interrupted epoch exactly. Every rank draws the same
    order and takes its shard ``indices[rank::world]`` (padded by wrap-around to a multiple of the world
    size, as ``DistributedSampler``).
    """

    def __init__(self, sampler_factory: Callable[[], Any], batch_size: int, rank: int = 0, world: int = 1,
                 start_epoch: int = 0, skip_batches: int = 0):
        self.sampler = sampler_factory()
        self.batch_size, self.rank, self.world = int(batch_size), int(rank), max(1, int(world))
        self.epoch = 0
        for _ in range(int(start_epoch)):
            self._indices()
        self.skip = int(skip_batches)
        self.batches_done = 0

    def _indices(self) -> list[int]:
        idx = [int(i) for i in iter(self.sampler)]
        self.epoch += 1
        if self.world > 1 and idx:
            total = math.ceil(len(idx) / self.world) * self.world
            idx = (idx * math.ceil(total / len(idx)))[:total][self.rank::self.world]
        return idx

    def _num_indices(self) -> int:
        n = len(self.sampler)
        return math.ceil(n / self.world) if self.world > 1 else n

    def __len__(self) -> int:
        return math.ceil(self._num_indices() / self.batch_size)

    def __iter__(self):
        idx = self._indices()
        batches = [idx[i:i + self.batch_size] for i in range(0, len(idx), self.batch_size)]
        skip, self.skip = self.skip, 0
        if skip >= len(batches):  # the checkpoint was taken at the end of an epoch: start the next one
            idx = self._indices()
            batches = [idx[i:i + self.batch_size] for i in range(0, len(idx), self.batch_size)]
            skip = 0
        self.batches_done = skip
        for b in batches[skip:]:
            self.batches_done += 1
            yield b


def _resumable_loader_class():
    from torch.utils.data import DataLoader

    class ResumableDataLoader(DataLoader):
        """A DataLoader over an :class:`EpochBatchSampler`; ``state_dict`` makes Lightning treat it as
        resumable (the position itself is restored from the checkpoint's loop state)."""

        def state_dict(self) -> dict:
            bs = self.batch_sampler
            return {"epoch": int(getattr(bs, "epoch", 0)), "batches_done": int(getattr(bs, "batches_done", 0))}

        def load_state_dict(self, state: dict) -> None:  # position comes from the fit loop
            pass

    return ResumableDataLoader


def make_train_loader(dm, rank: int = 0, world: int = 1, start_epoch: int = 0, skip_batches: int = 0):
    """The DataModule's training loader for its current stage, as a resumable / sharded loader with the
    same order as ``dm.train_dataloader()`` (same seeded shuffling or curriculum sampler)."""
    import torch
    from torch.utils.data import RandomSampler

    ref = type(dm).train_dataloader(dm)  # the DataModule's own loader (the curriculum patches the instance)
    ds = ref.dataset

    def factory():
        if not dm.is_audio_stage:
            s = dm.curriculum_sampler()
            if s is not None:
                return s
        return RandomSampler(ds, generator=torch.Generator().manual_seed(int(dm.seed)))

    bsz = dm.audio_batch_size if dm.is_audio_stage else dm.batch_size
    bs = EpochBatchSampler(factory, bsz, rank, world, start_epoch, skip_batches)
    cls = _resumable_loader_class()
    return cls(ds, batch_sampler=bs, collate_fn=ref.collate_fn, num_workers=ref.num_workers,
               pin_memory=ref.pin_memory, persistent_workers=ref.num_workers > 0,
               generator=torch.Generator().manual_seed(int(dm.seed) + 7919 * (rank + 1)))
