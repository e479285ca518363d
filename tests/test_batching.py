"""Bucketing and padding shared by capture and generation."""

from __future__ import annotations

import torch

from persona_probe.batching import pad_batch, plan_batches


def test_pad_right_and_left():
    ids, mask = pad_batch([[5, 6, 7], [8]], pad=0)
    assert ids.tolist() == [[5, 6, 7], [8, 0, 0]] and mask.tolist() == [[1, 1, 1], [1, 0, 0]]
    ids, mask = pad_batch([[5, 6, 7], [8]], pad=0, side="left")
    assert ids.tolist() == [[5, 6, 7], [0, 0, 8]] and mask.tolist() == [[1, 1, 1], [0, 0, 1]]
    assert ids.dtype == mask.dtype == torch.long


def test_plan_batches_longest_first_and_capped():
    lengths = [3, 10, 7, 10, 2, 5]
    batches = plan_batches(lengths, batch_size=2, max_batch_tokens=15)
    assert sorted(i for b in batches for i in b) == list(range(6))
    assert batches[0] == [1]  # 10 + 10 > 15 padded tokens
    for b in batches:
        assert len(b) <= 2 and max(lengths[i] for i in b) * len(b) <= 15 or len(b) == 1
    widths = [max(lengths[i] for i in b) for b in batches]
    assert widths == sorted(widths, reverse=True)
