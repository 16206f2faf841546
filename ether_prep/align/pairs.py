"""Dialogue pairs: a client turn and the counsellor's reply, the unit incongruence labels attach to.

Pairing (:func:`pair_dialogue`)
-------------------------------
Utterances are walked in time order and grouped into turns (consecutive utterances of one role). Each
client turn followed directly by a counsellor turn that starts within ``max_gap`` seconds of the client
turn's end forms one pair: the client's utterances and the counsellor's reply.

"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np

from ..records import DialoguePair

__all__ = ["pair_dialogue", "pairs_table"]


def pair_dialogue(ids: Sequence[str], starts: np.ndarray, ends: np.ndarray, roles: Sequence[str],
                  max_gap: float = 10.0) -> list[DialoguePair]:
    """Client turns and the counsellor replies that follow them (see the module docstring)."""
    order = np.argsort(np.asarray(starts, dtype=np.float64), kind="stable")
    turns: list[tuple[str, list[int]]] = []
    for i in order:
        role = roles[i]
        if turns and turns[-1][0] == role:
            turns[-1][1].append(int(i))
        else:
            turns.append((role, [int(i)]))
    pairs: list[DialoguePair] = []
    for (r1, client), (r2, reply) in itertools.pairwise(turns):
        if r1 != "client" or r2 != "counsellor":
            continue
        client_end = float(max(ends[i] for i in client))
        gap = float(starts[reply[0]]) - client_end
        if gap > max_gap:
            continue
        pairs.append(DialoguePair(client_utterances=tuple(ids[i] for i in client),
                                  counsellor_utterances=tuple(ids[i] for i in reply),
                                  start=float(starts[client[0]]), end=float(max(ends[i] for i in reply)),
                                  gap=gap))
    return pairs


def pairs_table(session_id: str, pairs: Sequence[DialoguePair], ids: Sequence[str], texts: Sequence[str],
                mismatch: np.ndarray, flags: Sequence[Sequence[str]]) -> dict[str, np.ndarray]:
    """The ``pairs`` table: one row per pair, with the texts, the client's highest mismatch and its flags."""
    index = {u: k for k, u in enumerate(ids)}
    client = [[index[u] for u in pr.client_utterances] for pr in pairs]
    reply = [[index[u] for u in pr.counsellor_utterances] for pr in pairs]

    def nanmax(values: list[float]) -> float:  # NaN when no utterance had a face to judge
        finite = [v for v in values if np.isfinite(v)]
        return float(max(finite)) if finite else float("nan")

    return {
        "id": np.array([f"{session_id}/p{k:05d}" for k in range(len(pairs))], dtype=str),
        "client_utterance": np.array([pr.client_utterances[0] for pr in pairs], dtype=str),
        "counsellor_utterance": np.array([pr.counsellor_utterances[0] for pr in pairs], dtype=str),
        "client_utterances": np.array([";".join(pr.client_utterances) for pr in pairs], dtype=str),
        "counsellor_utterances": np.array([";".join(pr.counsellor_utterances) for pr in pairs], dtype=str),
        "start": np.array([pr.start for pr in pairs], dtype=np.float64),
        "end": np.array([pr.end for pr in pairs], dtype=np.float64),
        "gap": np.array([pr.gap for pr in pairs], dtype=np.float64),
        "client_text": np.array([" ".join(texts[i] for i in rows) for rows in client], dtype=str),
        "counsellor_text": np.array([" ".join(texts[i] for i in rows) for rows in reply], dtype=str),
        "client_mismatch": np.array([nanmax([mismatch[i] for i in rows]) for rows in client], dtype=np.float64),
        "client_flags": np.array([";".join(sorted({f for i in rows for f in flags[i]})) for rows in client],
                                 dtype=str),
    }
