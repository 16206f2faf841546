"""Time windows: how a ``windowed`` stage cuts one long recording into tasks, and how its join checks them.

A stage that can compute a recording in windows (face: analysed frames; transcribe: audio samples) plans them
in the driver from ``resources.window_s``: a recording at least two windows long (:func:`window_length`) is
cut at unit edges ``0 = e0 < e1 < ... < en = n`` (:func:`edges_at_times`, :func:`even_cuts`), window k covering
units ``e[k]:e[k+1]`` (:func:`plan_windows`). Each window task records its span in its scratch group's attrs
(:func:`span_attrs`, keys ``first``/``stop``); the join checks that the spans tile the recording, no unit lost
or doubled (:func:`check_tiling`), and the stage's output attrs ``windows`` say how it was computed
(:func:`joined_attrs`, :func:`whole_attrs`). Plain numbers only: no store, no models.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .errors import StageError

__all__ = ["Window", "check_tiling", "edges_at_times", "even_cuts", "joined_attrs", "plan_windows",
           "span_attrs", "spans", "whole_attrs", "window_length"]


@dataclass(frozen=True)
class Window:
    """Window ``index`` of ``count`` of one recording, ``start``..``end`` seconds, and what the stage needs to
    compute exactly that window (``data``: its own; it travels with the task to whichever worker runs it)."""

    index: int
    count: int
    start: float
    end: float
    data: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)


def window_length(duration: float | None, window_s: float | None) -> float | None:
    """``window_s`` when a recording of ``duration`` seconds is at least two windows long, else None (computed
    whole: no ``window_s``, no known duration, or too short for two windows)."""
    if window_s is None or duration is None or duration < 2 * window_s:
        return None
    return window_s


def edges_at_times(times: np.ndarray, window_s: float, multiple: int = 1) -> list[int]:
    """Unit edges ``[0, ..., n]`` for units at ``times`` (sorted seconds, n of them): a cut at the first unit
    at or after each multiple of ``window_s`` (before the last unit's time), moved down to a multiple of
    ``multiple`` (whole batches per window); cuts that coincide or fall on 0 or n are dropped."""
    n = len(times)
    if n == 0:
        return [0]
    cuts = np.searchsorted(times, np.arange(window_s, times[-1], window_s)) // multiple * multiple
    return [0, *sorted({int(c) for c in cuts if 0 < c < n}), n]


def even_cuts(n: int, count: int) -> list[int]:
    """The ``count - 1`` inner places that cut ``n`` units into ``count`` windows of even length."""
    step = n / count
    return [round(k * step) for k in range(1, count)]


def plan_windows(edges: Sequence[int], time_of: Callable[[int], float], end: float,
                 data: Sequence[Mapping[str, Any]] | None = None) -> list[Window]:
    """One :class:`Window` per pair of consecutive ``edges``: window k starts at ``time_of(edges[k])`` and ends
    where the next starts (the last at ``end``); its data holds its span (``first``, ``stop``) and ``data[k]``."""
    count = len(edges) - 1
    ends = [*(time_of(e) for e in edges[1:-1]), end]
    return [Window(k, count, time_of(a), ends[k], {**(data[k] if data else {}), "first": a, "stop": b})
            for k, (a, b) in enumerate(itertools.pairwise(edges))]


def span_attrs(window: Window) -> dict[str, int]:
    """What a window's scratch group records of its span, for :func:`spans` in the join."""
    return {"first": int(window.data["first"]), "stop": int(window.data["stop"])}


def spans(groups: Sequence[Any]) -> list[tuple[int, int]]:
    """The span (first, stop) each window's group recorded (:func:`span_attrs`), in window order."""
    return [(int(g.attrs["first"]), int(g.attrs["stop"])) for g in groups]


def check_tiling(found: Sequence[tuple[int, int]], where: str, unit: str, total: int | None = None) -> None:
    """Raise a :class:`StageError` unless the spans ``found`` follow each other from unit 0 without gap or
    overlap (and end at ``total`` when given): a window computed for another plan would lose or double units.

    ``where`` starts the message (the recording, the stage); ``unit`` names one unit ("analysed frame").
    """
    expected = 0
    for k, (first, stop) in enumerate(found):
        if first != expected:
            raise StageError(f"{where}: window {k + 1} starts at {unit} {first}, not {expected}: {unit}s would "
                             f"be lost or doubled; run again")
        if stop < first:
            raise StageError(f"{where}: window {k + 1} ends at {unit} {stop}, before it starts ({first}); run again")
        expected = stop
    if total is not None and expected != total:
        raise StageError(f"{where}: the windows end at {unit} {expected}, the recording has {total}: {unit}s "
                         f"would be lost or doubled; run again")


def joined_attrs(groups: Sequence[Any], **details: Any) -> dict[str, Any]:
    """The stage's ``windows`` attrs after a join of ``groups``: their count, ``details`` (the stage's own:
    first frames, cuts, ...) and the worker that computed each (recorded by the worker in its group)."""
    return {"count": len(groups), "used": True, **details, "workers": [g.attrs.get("worker") for g in groups]}


def whole_attrs(count: int, why: str) -> dict[str, Any]:
    """The stage's ``windows`` attrs of a recording long enough for ``count`` windows computed whole instead."""
    return {"count": count, "used": False, "why": why}
