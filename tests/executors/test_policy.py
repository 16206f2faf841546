"""The Ray executor's pool policy (``ether_prep.executors.policy.decide``), table-driven and without Ray: each row
describes the pools and the cluster and names the actors to stop and the stages to start."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from ether_prep.executors import policy
from ether_prep.executors.policy import ActorState, ActorView, Decision, PoolView, Resources, decide, fits, short

GPU = Resources(cpu=0.25, gpu=1.0)  # a GPU stage's worker, as the default pipeline asks for one
CPU = Resources(cpu=1.0)
_STATES = {"i": ActorState.IDLE, "b": ActorState.BUSY, "s": ActorState.STARTING}


def pool(stage: str, need: Resources = GPU, queued: int = 0, actors: str = "", idle_s: float = 0.0,
         per_task_s: float = 30.0, **kw: object) -> PoolView:
    """A pool whose ``actors`` are spelled one letter each (``i`` idle, ``b`` busy, ``s`` starting), keyed
    ``stage:position``; idle ones have been idle ``idle_s``."""
    views = tuple(ActorView(f"{stage}:{i}", _STATES[c], idle_s if c == "i" else 0.0) for i, c in enumerate(actors))
    return PoolView(stage, need, queued=queued, actors=views, per_task_s=per_task_s, **kw)  # type: ignore[arg-type]


@dataclass(frozen=True)
class Case:
    pools: tuple[PoolView, ...]
    totals: Resources
    stops: tuple[str, ...] = ()  # actor keys
    starts: tuple[str, ...] = ()  # stages, in order
    start_s: float = 2.0


CASES = {
    # one GPU, two GPU stages with work: the earliest stage gets it, the other waits for a free GPU
    "one GPU, two GPU stages": Case((pool("face", queued=3), pool("transcribe", queued=3)), Resources(8, 1),
                                    starts=("face",)),
    "two GPUs, two GPU stages": Case((pool("face", queued=1), pool("transcribe", queued=1)), Resources(8, 2),
                                     starts=("face", "transcribe")),
    # a stage with a queue and no actor goes before a pool that would grow, even a later stage
    "first actor before more": Case((pool("transcribe", queued=10, actors="b"), pool("diarize", queued=1)),
                                    Resources(8, 2), starts=("diarize",)),
    # finished: its actors without a task (idle, starting) stop at once, a busy one finishes its task
    "finished stage stops its spare actors": Case(
        (pool("face", actors="isb", finished=True), pool("transcribe", queued=2)), Resources(8, 3),
        stops=("face:0", "face:1"), starts=("transcribe", "transcribe")),
    "finished stage with tasks queued keeps them": Case(
        (pool("face", queued=1, actors="s", finished=True),), Resources(8, 2)),
    # full cluster: an idle actor with nothing queued makes way for a stage's first actor
    "idle actor makes way for a first": Case((pool("face", actors="i"), pool("transcribe", queued=1)),
                                             Resources(8, 1), stops=("face:0",), starts=("transcribe",)),
    # between two tasks, one of several actors of a stage with a queue makes way for another stage's first ...
    "one of several makes way between tasks": Case(
        (pool("face", queued=3, actors="ib", per_task_s=0.0), pool("transcribe", queued=1)), Resources(8, 2),
        stops=("face:0",), starts=("transcribe",)),
    # ... but a stage's only actor never does, while it has a queue
    "an only actor keeps its stage going": Case((pool("face", queued=3, actors="i"), pool("transcribe", queued=1)),
                                                Resources(8, 1)),
    # growing a pool stops only actors idle (nothing queued) longer than a replacement takes (start + model load)
    "more: a recently idle actor stays": Case(
        (pool("transcribe", queued=10, actors="b"), pool("diarize", actors="i", idle_s=4.0, setup_s=3.0)),
        Resources(8, 2)),
    "more: a long idle actor makes way": Case(
        (pool("transcribe", queued=10, actors="b"), pool("diarize", actors="i", idle_s=6.0, setup_s=3.0)),
        Resources(8, 2), stops=("diarize:0",), starts=("transcribe",)),
    "more: a busy actor never stops": Case((pool("transcribe", queued=10, actors="b"), pool("diarize", actors="b")),
                                           Resources(8, 2)),
    # --workers caps every pool
    "cap": Case((pool("transcribe", queued=10, actors="b", cap=2),), Resources(8, 8), starts=("transcribe",)),
    "cap reached": Case((pool("transcribe", queued=10, actors="bb", cap=2),), Resources(8, 8)),
    # a pool grows only where its queue outlasts a start, per actor
    "queue within free actors": Case((pool("transcribe", queued=2, actors="bis"),), Resources(8, 8)),
    "queue shorter than a start": Case((pool("audio", CPU, queued=3, actors="b", per_task_s=0.5),), Resources(8, 0)),
    "grows until the queue per actor is short": Case((pool("audio", CPU, queued=4, actors="b", per_task_s=1.0),),
                                                     Resources(8, 0), starts=("audio",)),
    "largest backlog per actor first": Case(
        (pool("face", queued=9, actors="bbb"), pool("transcribe", queued=4, actors="b")), Resources(8, 5),
        starts=("transcribe",)),
    # 0.1 CPU three times adds up to 0.30000000000000004: the epsilon lets the third fit in 0.3 CPU
    "fractional resources": Case((pool("light", Resources(cpu=0.1), queued=10, per_task_s=100.0),),
                                 Resources(0.3, 0), starts=("light", "light", "light")),
    # no queue, nothing on its way: no actor; on its way: the first actor early, on spare resources only
    "nothing expected": Case((pool("align", CPU),), Resources(8, 0)),
    "expected: an early start": Case((pool("audio", CPU, actors="b"), pool("transcribe", expecting=True)),
                                     Resources(8, 1), starts=("transcribe",)),
    "expected: no room, nothing stopped": Case(
        (pool("face", actors="i", idle_s=100.0), pool("transcribe", expecting=True)), Resources(8, 1)),
    "spare resources: more before early": Case(
        (pool("face", queued=5, actors="b"), pool("transcribe", expecting=True)), Resources(8, 2),
        starts=("face",)),
    "finished or unplaceable: no start": Case(
        (pool("face", queued=2, placeable=False), pool("transcribe", expecting=True, finished=True)),
        Resources(8, 8)),
}


def _use(pools: tuple[PoolView, ...], decision: Decision) -> Resources:
    """What the actors hold once the decision is applied."""
    stopped = {key for _, key in decision.stops}
    held = Resources()
    for p in pools:
        for a in p.actors:
            if a.key not in stopped:
                held = held + p.need
        for stage in decision.starts:
            if stage == p.stage:
                held = held + p.need
    return held


@pytest.mark.parametrize("name", list(CASES))
def test_decide(name: str) -> None:
    case = CASES[name]
    decision = decide(case.pools, case.totals, start_s=case.start_s)
    assert [key for _, key in decision.stops] == list(case.stops)
    assert all(key.startswith(stage + ":") for stage, key in decision.stops)  # each stop names its own stage
    assert decision.starts == case.starts
    if decision.starts:  # never starts more than the cluster holds
        assert fits(_use(case.pools, decision), Resources(), case.totals)


def test_one_fit_test_with_its_epsilon() -> None:
    assert fits(Resources(cpu=0.1 + 0.1), Resources(cpu=0.1), Resources(cpu=0.3))
    assert not fits(Resources(cpu=0.3), Resources(cpu=0.1), Resources(cpu=0.3))
    assert short(Resources(cpu=1, gpu=1), Resources(cpu=0.25, gpu=1), Resources(cpu=8, gpu=1)) == {"gpu"}
    assert fits(Resources(gpu=5), Resources(cpu=1), Resources(cpu=1))  # a CPU worker needs no GPU left
    assert policy.EPSILON < 1e-6


def test_a_stopped_actor_frees_room_for_one_start_only() -> None:
    """Two stages want the one GPU an idle actor holds: the earliest gets it, the other waits."""
    pools = (pool("face", actors="i"), pool("transcribe", queued=1), pool("diarize", queued=1))
    decision = decide(pools, Resources(8, 1), start_s=2.0)
    assert decision == Decision(stops=(("face", "face:0"),), starts=("transcribe",))
