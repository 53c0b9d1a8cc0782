"""The loader's plan as pure functions (no torch): an epoch's order is a permutation fixed
by its inputs, ranks' shares cover the positions left once, with as many each, and a
prefix consumed in lock-step leaves exactly the rest to any other number of ranks."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from datarepo.torch.plan import chunks_of, epoch_order, rows_at, share

counts = st.integers(0, 3000)


@settings(max_examples=60, deadline=None)
@given(counts, st.integers(0, 2**32), st.integers(0, 50), st.integers(1, 300), st.integers(1, 20))
def test_an_epoch_order_is_a_permutation_fixed_by_its_inputs(count: int, seed: int, epoch: int, block: int, window: int) -> None:
    order = epoch_order(count, seed, epoch, True, block, window)
    assert sorted(order.tolist()) == list(range(count))
    assert np.array_equal(order, epoch_order(count, seed, epoch, True, block, window))
    at = 0  # the order cuts into runs, each all the rows of at most `window` blocks
    while at < count:
        blocks: set[int] = set()
        size = 0
        while True:
            blocks |= set((order[at : at + max(size, 1)] // block).tolist())
            grown = sum(min(block, count - b * block) for b in blocks)
            if grown == size:
                break
            size = grown
        assert len(blocks) <= window
        at += size

def test_epochs_and_seeds_give_other_orders() -> None:
    base = epoch_order(10_000, 0, 0)
    assert not np.array_equal(base, epoch_order(10_000, 0, 1))
    assert not np.array_equal(base, epoch_order(10_000, 1, 0))
    assert np.array_equal(epoch_order(10_000, 0, 0, shuffle=False), np.arange(10_000))
    # a batch of 256 draws from many of the 10 blocks of 1,024, not from one
    assert len(set((base[:256] // 1024).tolist())) == 10


@settings(max_examples=100, deadline=None)
@given(counts, st.integers(0, 3000), st.integers(1, 8), st.booleans())
def test_shares_cover_what_is_left_once_with_as_many_each(count: int, start: int, world: int, pad: bool) -> None:
    start = min(start, count)
    shares = [share(count, start, r, world, pad) for r in range(world)]
    assert len({s.length for s in shares}) == 1
    positions = sorted(p for s in shares for p in s.positions().tolist())
    left = list(range(start, count))
    if pad:
        assert positions[: len(left)] == left and len(positions) - len(left) < world
    else:
        assert positions == left[: len(left) - len(left) % world]
    for s in shares:
        assert [s.local(p) for p in s.positions().tolist()] == list(range(s.length))


@settings(max_examples=100, deadline=None)
@given(st.integers(1, 3000), st.integers(1, 8), st.integers(1, 8), st.integers(0, 400))
def test_a_prefix_consumed_in_step_leaves_the_rest_to_any_world(count: int, old: int, new: int, steps: int) -> None:
    before = [share(count, 0, r, old, pad=False) for r in range(old)]
    taken = min(steps, before[0].length)
    seen = [p for s in before for p in s.positions(0, taken).tolist()]
    resumed = before[0].consumed(taken)
    assert sorted(seen) == list(range(resumed))  # what the ranks took is a prefix
    after = [share(count, resumed, r, new, pad=True) for r in range(new)]
    rest = {p for s in after for p in s.positions().tolist() if p < count}
    assert rest == set(range(resumed, count))


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 2000), st.integers(1, 300), st.integers(1, 6))
def test_workers_take_every_chunk_once_in_turn(length: int, chunk: int, workers: int) -> None:
    taken = [c for w in range(workers) for c in chunks_of(length, chunk, w, workers)]
    assert sorted(taken) == list(range(-(-length // chunk)))
    assert all(c % workers == w for w in range(workers) for c in chunks_of(length, chunk, w, workers))


def test_padding_repeats_the_order_from_its_start() -> None:
    order = epoch_order(10, 3, 0)
    assert rows_at(order, np.array([9, 10, 11])).tolist() == [order[9], order[0], order[1]]
