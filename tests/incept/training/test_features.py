"""The feature pass's batching (the cache itself is exercised by the trainer tests)."""

from __future__ import annotations

import pytest


@pytest.mark.parametrize("count", [1, 2, 31, 32, 33, 64, 75, 95, 400, 1001])
def test_pass_batches_are_even_and_pad_less_than_one_row_per_batch(count):
    from incept.training.features import FEATURE_BATCH, pass_batch_size

    batch = pass_batch_size(count)
    batches = -(-count // batch)
    assert 1 <= batch <= FEATURE_BATCH
    assert batches == -(-count // FEATURE_BATCH)  # no more batches than full ones would take
    assert batches * batch - count < batches  # padding: under one row per batch
