"""Length bucketing and padding shared by capture, generation and the benchmarks."""

from __future__ import annotations

from typing import Literal

import torch


def plan_batches(lengths: list[int], batch_size: int, max_batch_tokens: int) -> list[list[int]]:
    """Bucket by length: longest first (a memory error shows up at once), each batch capped by
    chat count and padded-token count."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    batches, cur = [], []
    for i in order:
        width = max([lengths[j] for j in cur] + [lengths[i]])
        if cur and (len(cur) >= batch_size or width * (len(cur) + 1) > max_batch_tokens):
            batches.append(cur)
            cur = []
        cur.append(i)
    if cur:
        batches.append(cur)
    return batches


def pad_batch(seqs: list[list[int]], pad: int, side: Literal["right", "left"] = "right",
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """Token id lists -> (input_ids, attention_mask). Right padding keeps positions natural for
    reading activations; left padding lines prompts up for generation."""
    width = max(map(len, seqs))
    ids = torch.full((len(seqs), width), pad, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for r, s in enumerate(seqs):
        span = slice(0, len(s)) if side == "right" else slice(width - len(s), width)
        ids[r, span] = torch.tensor(s, dtype=torch.long)
        mask[r, span] = 1
    return ids, mask
