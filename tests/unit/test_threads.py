"""The training thread count follows measured step times, so a busy machine trains on one thread."""

from __future__ import annotations

import torch
from shelfsight.train.threads import PERIOD, PROBE, ThreadTuner


def _run(tuner: ThreadTuner, seconds_at: dict[int, float], steps: int) -> list[int]:
    used = []
    for step in range(steps):
        tuner.before(step)
        used.append(torch.get_num_threads())
        tuner.after(step, seconds_at[torch.get_num_threads()])
    return used


def test_the_faster_count_wins_and_is_checked_again():
    before = torch.get_num_threads()
    try:
        tuner = ThreadTuner((2, 1), 2)
        used = _run(tuner, {2: 14.5, 1: 1.75}, PERIOD)  # a loaded machine: one thread is faster
        assert used[: 2 * PROBE] == [2] * PROBE + [1] * PROBE and set(used[2 * PROBE :]) == {1}
        used = _run(tuner, {2: 0.4, 1: 0.7}, PERIOD)  # quiet again: the next check goes back to two
        assert tuner.chosen == 2 and used[-1] == 2
    finally:
        torch.set_num_threads(before)


def test_one_core_has_nothing_to_choose():
    tuner = ThreadTuner((1,), 1)
    assert _run(tuner, {1: 1.0}, 10) == [1] * 10 and tuner.chosen == 1
