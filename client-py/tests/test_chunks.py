"""ActionChunkQueue: alignment to control steps, blends, expiry, underruns (fake clock)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from inferential.chunks import ActionChunkQueue


class FakeClock:
    def __init__(self, now_ns: int = 1_000_000_000) -> None:
        self.now_ns = now_ns

    def __call__(self) -> int:
        return self.now_ns


def chunk(start: float, rows: int) -> np.ndarray:
    return np.arange(start, start + rows, dtype=np.float64).reshape(rows, 1)


def test_rows_align_to_steps_and_past_rows_are_dropped() -> None:
    q = ActionChunkQueue()
    assert q.pop() is None  # step 0: nothing yet
    assert q.add(chunk(10, 4), start_step=0) == 3  # row 0 is for step 0, already spent
    assert q.stats.late == 1
    assert [float(q.pop()[0]) for _ in range(3)] == [11.0, 12.0, 13.0]
    assert q.pop() is None
    assert (q.stats.executed, q.stats.underruns) == (3, 2)


@pytest.mark.parametrize(
    ("blend", "expected"),
    [
        ("latest", [0.0, 10.0, 10.0, 10.0]),
        ("average", [0.0, 5.0, 5.0, 10.0]),
        ("exponential", [0.0, 7.0, 7.0, 10.0]),
        (lambda old, new: np.maximum(old, new) + 1, [0.0, 11.0, 11.0, 10.0]),
    ],
)
def test_overlapping_chunks_blend(blend, expected) -> None:
    q = ActionChunkQueue(blend)
    q.add(np.zeros((3, 2)), start_step=0)  # steps 0..2
    q.add(np.full((3, 2), 10.0), start_step=1)  # steps 1..3 overlap 1..2
    assert q.stats.merged == 2
    got = [q.pop() for _ in range(4)]
    assert [float(a[0]) for a in got] == pytest.approx(expected)
    assert all(a.shape == (2,) for a in got)


def test_average_counts_every_row_proposed_for_a_step() -> None:
    q = ActionChunkQueue("average")
    for value in (0.0, 3.0, 6.0):
        q.add(np.full((1, 1), value), start_step=0)
    assert float(q.pop()[0]) == pytest.approx(3.0)


def test_expired_actions_are_held_not_executed() -> None:
    clock = FakeClock()
    q = ActionChunkQueue(clock=clock)
    q.add(chunk(0, 4), start_step=0, valid_until_ns=clock.now_ns + 10)
    assert q.actions_remaining() == 4
    assert q.pop() is not None
    clock.now_ns += 11
    assert q.actions_remaining() == 0
    assert q.pop() is None and q.pop() is None
    assert (q.stats.executed, q.stats.held, q.stats.underruns) == (1, 2, 0)


def test_a_newer_chunk_vouches_for_the_actions_it_merges_into() -> None:
    clock = FakeClock()
    q = ActionChunkQueue("average", clock=clock)
    q.add(chunk(0, 3), start_step=0, valid_until_ns=clock.now_ns + 5)
    q.add(chunk(0, 3), start_step=1, valid_until_ns=clock.now_ns + 100)
    clock.now_ns += 50
    assert q.pop() is None  # step 0 only had the expired chunk
    assert q.pop() is not None and q.pop() is not None
    assert (q.stats.held, q.stats.executed) == (1, 2)


def test_actions_remaining_counts_consecutive_steps_only() -> None:
    q = ActionChunkQueue()
    q.add(chunk(0, 2), start_step=0)
    q.add(chunk(0, 2), start_step=5)
    assert q.actions_remaining() == 2
    assert len(q) == 4


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="blend"):
        ActionChunkQueue("median")
    with pytest.raises(ValueError, match="new_weight"):
        ActionChunkQueue("exponential", new_weight=0.0)
    with pytest.raises(ValueError, match="dimension"):
        ActionChunkQueue().add(np.float32(1.0), start_step=0)


_ops = st.lists(
    st.one_of(
        st.tuples(st.just("add"), st.integers(-3, 12), st.integers(1, 6), st.one_of(st.none(), st.integers(0, 40))),
        st.tuples(st.just("pop")),
        st.tuples(st.just("tick"), st.integers(1, 10)),
    ),
    max_size=60,
)


@settings(max_examples=300, deadline=None)
@given(_ops, st.sampled_from(["latest", "average", "exponential"]))
def test_properties_no_expired_no_repeat_exact_underruns(ops, blend) -> None:
    clock = FakeClock(0)
    q = ActionChunkQueue(blend, clock=clock)
    # The model of the queue: for each step, the validity its action would have.
    valid: dict[int, object] = {}
    executed_steps: list[int] = []
    underruns = holds = 0
    for op in ops:
        if op[0] == "add":
            _, offset, rows, ttl = op
            start = q.next_step + offset
            until = None if ttl is None else clock.now_ns + ttl
            q.add(np.full((rows, 1), float(start)), start_step=start, valid_until_ns=until)
            for step in range(max(start, q.next_step), start + rows):
                valid[step] = until
        elif op[0] == "tick":
            clock.now_ns += op[1]
        else:
            step = q.next_step
            action = q.pop()
            if step not in valid:
                assert action is None
                underruns += 1
            elif valid[step] is not None and clock.now_ns > valid[step]:  # type: ignore[operator]
                assert action is None, "an expired action was executed"
                holds += 1
            else:
                assert action is not None
                executed_steps.append(step)
            valid.pop(step, None)
    assert len(executed_steps) == len(set(executed_steps)), "a step was executed twice"
    assert executed_steps == sorted(executed_steps)
    assert (q.stats.underruns, q.stats.held, q.stats.executed) == (underruns, holds, len(executed_steps))
