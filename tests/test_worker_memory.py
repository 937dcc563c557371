"""Who owns a model a Client returns, against a real chief: a handed-back model's memory takes
the next one (no fresh memory per round), and a model that is kept is never written into."""

from __future__ import annotations

import numpy as np

import fedsock


def test_handed_back_models_are_read_into_the_same_memory_and_kept_ones_stay_intact(chiefs):
    chief = chiefs("--rounds", "4", "--min-workers", "1", "--round-timeout", "30")
    shape = (256, 64)
    with fedsock.Client(chief.address, token=chief.token, name="mem") as c:
        first = c.join([np.zeros(shape, np.float32)])
        kept = c.sync([first[0] + 1], num_examples=1)  # not handed back: the caller keeps it
        snapshot = kept[0].copy()
        second = c.sync([kept[0] + 1], num_examples=1, reuse=first)
        assert np.shares_memory(second[0], first[0])  # read into the handed-back memory
        third = c.sync([second[0] + 1], num_examples=1, reuse=second)
        assert np.shares_memory(third[0], second[0])
        np.testing.assert_array_equal(kept[0], snapshot)  # never handed back, never overwritten
        assert not np.shares_memory(third[0], kept[0])
        np.testing.assert_array_equal(third[0], np.full(shape, 3, np.float32))
        # a list that shares memory with the weights being sent is not reused
        final = c.sync([third[0]], num_examples=1, reuse=third)
        assert c.finished and not np.shares_memory(final[0], third[0])
        np.testing.assert_array_equal(final[0], np.full(shape, 3, np.float32))
    assert chief.wait(60) == 0
