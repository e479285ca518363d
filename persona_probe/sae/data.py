"""Training rows for an SAE: a held-out split by chat, and a batch order that is a pure function
of (seed, step), so a killed run resumes on exactly the batches it would have seen.

Rows are split by *item* (chat), not by token, so held-out metrics never see a token from a chat
the SAE trained on. Each epoch visits shards in a seeded random order, gathers a window of
shards (``window_rows`` rows, the only data in memory), and shuffles rows within it. Batch ``s``
is rows ``[s·B, (s+1)·B)`` of the concatenated epochs, so resuming at step ``s`` recomputes only
cheap index arithmetic before reading its first window.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from persona_probe.errors import StoreError
from persona_probe.store import ActivationStore


def heldout_items(item_ids: list[str], fraction: float, seed: int) -> np.ndarray:
    """Boolean mask over items: True for the held-out ones (a hash of seed and id, so the split
    does not move when items are added to or removed from a store)."""
    if not 0.0 <= fraction < 1.0:
        raise StoreError(f"holdout_fraction must be in [0, 1), not {fraction}")
    scores = np.array([int.from_bytes(hashlib.sha256(f"{seed}:{i}".encode()).digest()[:8], "big")
                       / 2.0**64 for i in item_ids])
    return scores < fraction


@dataclass
class RowSplit:
    """Global row numbers of a store, split into train and held-out, sorted."""

    train: np.ndarray
    heldout: np.ndarray
    heldout_items: list[int]

    @classmethod
    def of(cls, store: ActivationStore, fraction: float, seed: int,
           roles: list[str] | None = None) -> RowSplit:
        """``roles`` keeps only rows of those chat roles (system, user, assistant, template)."""
        from persona_probe.chat import ROLE_CODES

        index = store.index()
        item_of_row = index["item"].numpy()
        held = heldout_items(store.item_ids, fraction, seed)
        row_held = held[item_of_row]
        keep = np.ones_like(row_held)
        if roles is not None:
            unknown = sorted(set(roles) - set(ROLE_CODES))
            if unknown:
                raise StoreError(f"unknown roles {unknown}; choose from {', '.join(ROLE_CODES)}")
            keep = np.isin(index["role"].numpy(), [ROLE_CODES[r] for r in roles])
        split = cls(np.nonzero(~row_held & keep)[0], np.nonzero(row_held & keep)[0],
                    sorted(np.nonzero(held)[0].tolist()))
        if split.train.size == 0:
            raise StoreError(f"{store.root}: no rows left to train on after holding out "
                             f"{fraction:.0%} of {len(store.item_ids)} chats; capture more chats "
                             "or lower holdout_fraction")
        return split


class BatchPlan:
    """Deterministic, resumable, shuffle-windowed batches of one hook's rows."""

    def __init__(self, store: ActivationStore, hook: str, rows: np.ndarray, batch_size: int,
                 seed: int, window_rows: int = 131072):
        if batch_size < 1 or window_rows < batch_size:
            raise StoreError(f"need batch_size ≥ 1 and window_rows ≥ batch_size (got "
                             f"{batch_size}, {window_rows})")
        store._hook_dir(hook)
        self.store, self.hook, self.batch_size = store, hook, batch_size
        self.seed, self.window_rows = seed, window_rows
        shard_of = np.searchsorted(store.offsets, rows, side="right") - 1
        # rows of each shard, as offsets inside that shard
        self.by_shard = {int(k): rows[shard_of == k] - store.offsets[k]
                         for k in np.unique(shard_of)}
        self.n_rows = int(rows.size)

    def _windows(self, epoch: int) -> list[list[int]]:
        rng = np.random.default_rng([self.seed, epoch])
        order = [k for k in rng.permutation(sorted(self.by_shard)).tolist()]
        windows, cur, size = [], [], 0
        for k in order:
            cur.append(k)
            size += self.by_shard[k].size
            if size >= self.window_rows:
                windows.append(cur)
                cur, size = [], 0
        if cur:
            windows.append(cur)
        return windows

    def _window_data(self, epoch: int, w: int, shards: list[int]) -> torch.Tensor:
        data = torch.cat([self.store.shard(self.hook, k)[torch.from_numpy(self.by_shard[k])]
                          for k in shards])
        perm = np.random.default_rng([self.seed, epoch, w]).permutation(data.shape[0])
        return data[torch.from_numpy(perm)]

    def batches(self, start_step: int = 0) -> Iterator[torch.Tensor]:
        """Batches from ``start_step`` on, forever (epochs repeat with new orders)."""
        pos = start_step * self.batch_size
        epoch, skip = divmod(pos, self.n_rows)
        carry: torch.Tensor | None = None
        while True:
            for w, shards in enumerate(self._windows(epoch)):
                size = sum(self.by_shard[k].size for k in shards)
                if skip >= size:  # a window wholly before the resume point is never read
                    skip -= size
                    continue
                data = self._window_data(epoch, w, shards)[skip:]
                skip = 0
                if carry is not None:
                    data = torch.cat([carry, data])
                n_full = data.shape[0] // self.batch_size
                for b in range(n_full):
                    yield data[b * self.batch_size:(b + 1) * self.batch_size]
                carry = data[n_full * self.batch_size:]
            epoch += 1
