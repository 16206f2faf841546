"""Dialogue pairs (:mod:`ether_prep.align.pairs`)."""

from __future__ import annotations

import numpy as np
import pytest

from ether_prep.align.pairs import pair_dialogue


def test_pair_dialogue_groups_turns_and_respects_the_gap() -> None:
    ids = [f"s/u{i:05d}" for i in range(7)]
    starts = np.array([0.0, 2.0, 4.0, 6.0, 8.0, 30.0, 40.0])
    ends = starts + 1.5
    roles = ["client", "client", "counsellor", "counsellor", "client", "counsellor", "client"]
    pairs = pair_dialogue(ids, starts, ends, roles, max_gap=10.0)
    assert len(pairs) == 1  # the reply at 30 s comes 20.5 s after the client's turn
    p = pairs[0]
    assert p.client_utterances == tuple(ids[:2]) and p.counsellor_utterances == tuple(ids[2:4])
    assert p.start == 0.0 and p.end == 7.5 and p.gap == pytest.approx(0.5)
    assert len(pair_dialogue(ids, starts, ends, roles, max_gap=30.0)) == 2
