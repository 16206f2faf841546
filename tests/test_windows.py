"""ether_prep.windows on plain numbers: which recordings are cut, where, and what a join accepts."""

from __future__ import annotations

import numpy as np
import pytest

from ether_prep.errors import StageError
from ether_prep.windows import (
    Window,
    check_tiling,
    edges_at_times,
    even_cuts,
    joined_attrs,
    plan_windows,
    span_attrs,
    spans,
    whole_attrs,
    window_length,
)


@pytest.mark.parametrize(("duration", "window_s", "expected"), [
    (None, 10.0, None),  # no probe: whole
    (30.0, None, None),  # no window_s: whole
    (19.99, 10.0, None),  # under two windows: whole
    (20.0, 10.0, 10.0),  # exactly two windows
    (3600.0, 600.0, 600.0),
    (0.0, 1.0, None),
])
def test_window_length(duration: float | None, window_s: float | None, expected: float | None) -> None:
    assert window_length(duration, window_s) == expected


# 25 fps frame times; cuts at the first frame at or after each multiple of window_s, down to whole batches.
_FPS25 = np.arange(250) / 25.0  # 10 s


@pytest.mark.parametrize(("times", "window_s", "multiple", "edges"), [
    (_FPS25, 5.0, 1, [0, 125, 250]),
    (_FPS25, 4.0, 1, [0, 100, 200, 250]),
    (_FPS25, 4.0, 8, [0, 96, 200, 250]),  # 100 -> 96, 200 stays (a multiple of 8)
    (_FPS25, 3.0, 1, [0, 75, 150, 225, 250]),
    (_FPS25, 20.0, 1, [0, 250]),  # no cut before the last frame's time
    (_FPS25, 0.04, 100, [0, 100, 200, 250]),  # cuts merged into whole batches, 0 dropped
    (np.array([0.0, 1.0, 1.0, 1.0, 5.0]), 1.0, 1, [0, 1, 4, 5]),  # at or after 1 s; 2, 3 and 4 s: the frame at 5 s
    (np.array([0.0, 0.5, 9.0, 9.5]), 2.0, 1, [0, 2, 4]),  # a gap: the cuts at 2, 4, 6, 8 s fall on one frame
    (np.array([0.0]), 1.0, 1, [0, 1]),
    (np.array([]), 1.0, 1, [0]),  # nothing to cut
])
def test_edges_at_times(times: np.ndarray, window_s: float, multiple: int, edges: list[int]) -> None:
    assert edges_at_times(times, window_s, multiple) == edges


@pytest.mark.parametrize(("n", "count", "cuts"), [
    (100, 2, [50]),
    (100, 3, [33, 67]),
    (10, 4, [2, 5, 8]),  # round half to even, as Python's round
    (7, 1, []),
    (16000 * 25, 2, [200000]),
])
def test_even_cuts(n: int, count: int, cuts: list[int]) -> None:
    assert even_cuts(n, count) == cuts


def test_plan_windows_spans_times_and_data() -> None:
    rate = 16000
    windows = plan_windows([0, 16000, 40000, 48000], lambda i: i / rate, 3.0,
                           [{"pause_s": 0.5}, {"pause_s": 0.2}, {"pause_s": None}])
    assert [(w.index, w.count, w.start, w.end) for w in windows] == [
        (0, 3, 0.0, 1.0), (1, 3, 1.0, 2.5), (2, 3, 2.5, 3.0)]
    assert [w.data for w in windows] == [{"pause_s": 0.5, "first": 0, "stop": 16000},
                                         {"pause_s": 0.2, "first": 16000, "stop": 40000},
                                         {"pause_s": None, "first": 40000, "stop": 48000}]
    assert [span_attrs(w) for w in windows] == [{"first": 0, "stop": 16000}, {"first": 16000, "stop": 40000},
                                                {"first": 40000, "stop": 48000}]
    # The last window ends at the recording's end, not at its last unit's time.
    times = np.array([0.0, 0.5, 1.0, 1.5])
    (a, b) = plan_windows([0, 2, 4], lambda i: float(times[i]), 1.96)
    assert (a.start, a.end, b.start, b.end) == (0.0, 1.0, 1.0, 1.96) and a.data == {"first": 0, "stop": 2}
    assert plan_windows([0, 5], lambda i: float(i), 5.0) == [Window(0, 1, 0.0, 5.0)]


@pytest.mark.parametrize(("found", "total", "problem"), [
    ([(0, 10), (10, 25), (25, 30)], 30, None),
    ([(0, 10), (10, 25), (25, 30)], None, None),
    ([(0, 0), (0, 5)], 5, None),  # an empty window is no gap
    ([], 0, None),
    ([(0, 10), (12, 30)], 30, "window 2 starts at sample 12, not 10: samples would be lost"),  # a gap
    ([(0, 10), (8, 30)], 30, "window 2 starts at sample 8, not 10"),  # an overlap
    ([(1, 10)], 10, "window 1 starts at sample 1, not 0"),
    ([(0, 10), (10, 5), (5, 30)], 30, "window 2 ends at sample 5, before it starts (10)"),
    ([(0, 10), (10, 25)], 30, "the windows end at sample 25, the recording has 30"),  # the end lost
    ([(0, 10), (10, 35)], 30, "the windows end at sample 35, the recording has 30"),
])
def test_check_tiling(found: list[tuple[int, int]], total: int | None, problem: str | None) -> None:
    if problem is None:
        check_tiling(found, "rec.wav: transcribe", "sample", total)
        return
    with pytest.raises(StageError) as info:
        check_tiling(found, "rec.wav: transcribe", "sample", total)
    message = str(info.value)
    assert message.startswith("rec.wav: transcribe: ") and problem in message and message.endswith("; run again")


class _Group:
    """What a join reads of a window's scratch group: its attrs."""

    def __init__(self, **attrs: object) -> None:
        self.attrs = attrs


def test_spans_and_windows_attrs() -> None:
    groups = [_Group(first=0, stop=7, worker={"pid": 1}), _Group(first=7, stop=12)]
    assert spans(groups) == [(0, 7), (7, 12)]
    attrs = joined_attrs(groups, first_frames=[0, 7])
    assert attrs == {"count": 2, "used": True, "first_frames": [0, 7], "workers": [{"pid": 1}, None]}
    assert list(attrs) == ["count", "used", "first_frames", "workers"]  # the order stored before
    assert whole_attrs(3, "no plan") == {"count": 3, "used": False, "why": "no plan"}
