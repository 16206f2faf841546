"""How many actors each stage's pool has: a pure decision, tested without Ray (``tests/executors/test_policy.py``).

The Ray executor describes its pools (:class:`PoolView`) and the cluster (:class:`Resources`) and applies what
:func:`decide` returns: which idle actors to stop, then which stages get one more actor. In order of need:

1. Actors without a task (idle or starting) of a finished stage with nothing queued stop: no task will come.
2. :attr:`Rank.FIRST`: every stage with tasks queued and no actor gets one, earliest stage first; on a full
   cluster by stopping idle actors of other stages (:func:`_victims`), at the next task boundary of a stage
   that has several.
3. :attr:`Rank.MORE`: a pool grows where its queue would keep each actor busy longer than starting one takes
   (:func:`_wants_more`), largest backlog per actor first; it may stop actors idle, with nothing queued, for
   longer than replacing them would take (a start plus their stage's model load).
4. :attr:`Rank.EARLY`: with resources nobody else wants, the first actor of a stage whose tasks are on their
   way (a stage it reads is at work), so that its start overlaps the upstream work. It stops nothing.

A stage that cannot fit is left for this round (``stuck``) and the next need is looked at.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass, field
from enum import Enum, IntEnum

# Fractional resources (0.25 CPU per worker) add up with float error: 4 x 0.25 CPU must fit in 1 CPU.
EPSILON = 1e-9


@dataclass(frozen=True)
class Resources:
    """CPUs and GPUs: what one actor asks for, what the cluster has, or what actors hold."""

    cpu: float = 0.0
    gpu: float = 0.0

    def __add__(self, other: Resources) -> Resources:
        return Resources(self.cpu + other.cpu, self.gpu + other.gpu)

    def __sub__(self, other: Resources) -> Resources:
        return Resources(self.cpu - other.cpu, self.gpu - other.gpu)

    def items(self) -> tuple[tuple[str, float], ...]:
        return (("cpu", self.cpu), ("gpu", self.gpu))


def short(used: Resources, need: Resources, total: Resources) -> set[str]:
    """The resources (``cpu``, ``gpu``) of which ``total`` lacks ``need`` once ``used`` is taken: empty if it fits."""
    return {k for k, v in need.items() if v > 0 and getattr(used, k) + v > getattr(total, k) + EPSILON}


def fits(used: Resources, need: Resources, total: Resources) -> bool:
    return not short(used, need, total)


class ActorState(Enum):
    STARTING = "starting"  # being created, or restarted by Ray: not yet answering
    BUSY = "busy"  # computing a task
    IDLE = "idle"  # up and waiting for a task


@dataclass(frozen=True)
class ActorView:
    key: Hashable  # the executor's name for it, handed back in :attr:`Decision.stops`
    state: ActorState
    idle_s: float = 0.0  # how long it has been idle (IDLE only)


@dataclass(frozen=True)
class PoolView:
    """One stage's pool as the policy sees it.

    ``per_task_s``: what one of its tasks takes (the mean of its finished ones, else the oldest running one's
    age so far); ``setup_s``: its longest model load; ``cap``: most actors (``--workers``); ``finished``: no
    more tasks will be submitted; ``expecting``: a stage it reads is at work, so tasks are on their way;
    ``placeable``: some node can hold one actor (else it gets none).
    """

    stage: str
    need: Resources
    queued: int = 0
    actors: tuple[ActorView, ...] = ()
    per_task_s: float = 0.0
    setup_s: float = 0.0
    cap: int | None = None
    finished: bool = False
    expecting: bool = False
    placeable: bool = True


class Rank(IntEnum):
    """Why a stage would get one more actor; the lower, the sooner."""

    FIRST = 0  # tasks queued and no actor
    MORE = 1  # its queue outlasts an actor's start
    EARLY = 2  # no actor, tasks on their way


class Yield(IntEnum):
    """Why an idle actor may stop to make room; the lower, the sooner."""

    FINISHED = 0  # its stage gets no more tasks
    UNNEEDED = 1  # nothing is queued for its stage (for MORE: and it has been idle longer than a replacement takes)
    BETWEEN_TASKS = 2  # one of several actors of a stage with a queue, between two tasks (for FIRST only)


@dataclass(frozen=True)
class Decision:
    """Stop these actors (stage, key) first, then start one actor per entry of ``starts`` (stage names, in order)."""

    stops: tuple[tuple[str, Hashable], ...] = ()
    starts: tuple[str, ...] = ()


@dataclass
class _Plan:
    """A pool as the decision changes it: its actors, less those stopped, plus the number started."""

    view: PoolView
    order: int
    actors: list[ActorView] = field(default_factory=list)
    started: int = 0

    @property
    def size(self) -> int:
        return len(self.actors) + self.started

    @property
    def free(self) -> int:
        """Actors without a task: idle, starting, or just started."""
        return sum(1 for a in self.actors if a.state is not ActorState.BUSY) + self.started


def decide(pools: Sequence[PoolView], totals: Resources, *, start_s: float) -> Decision:
    """Which actors to stop and which to start (see the module docstring). ``start_s``: what starting an
    actor takes (the mean of this run's starts so far)."""
    plans = [_Plan(view, i, list(view.actors)) for i, view in enumerate(pools)]
    stops = [(p.view.stage, a.key) for p in plans for a in _retire(p)]
    held = _held(plans)
    starts: list[str] = []
    stuck: set[str] = set()
    while (choice := _next(plans, stuck, start_s)) is not None:
        rank, plan = choice
        need = plan.view.need
        if not fits(held, need, totals):
            victims = _victims(plan, plans, held, totals, rank, start_s) if rank is not Rank.EARLY else []
            if not victims:
                stuck.add(plan.view.stage)
                continue
            for other, actor in victims:
                other.actors.remove(actor)
                held = held - other.view.need
                stops.append((other.view.stage, actor.key))
        plan.started += 1
        held = held + need
        starts.append(plan.view.stage)
    return Decision(tuple(stops), tuple(starts))


def _retire(plan: _Plan) -> list[ActorView]:
    """The actors without a task (idle or still starting) of a finished stage with nothing queued: no task will
    come for them."""
    if not plan.view.finished or plan.view.queued:
        return []
    spare = [a for a in plan.actors if a.state is not ActorState.BUSY]
    for actor in spare:
        plan.actors.remove(actor)
    return spare


def _held(plans: Iterable[_Plan]) -> Resources:
    held = Resources()
    for plan in plans:
        for _ in range(plan.size):
            held = held + plan.view.need
    return held


def _wants_more(plan: _Plan, start_s: float) -> bool:
    """Whether one more actor would pay: tasks wait beyond the free actors, below the cap, and the queue would
    keep each actor busy longer than starting one takes."""
    view = plan.view
    if view.queued <= plan.free or (view.cap is not None and plan.size >= view.cap):
        return False
    return view.per_task_s * view.queued / plan.size > start_s


def _next(plans: Sequence[_Plan], stuck: set[str], start_s: float) -> tuple[Rank, _Plan] | None:
    """The most needed start: lowest rank; within FIRST and EARLY the earliest stage, within MORE the largest
    backlog per actor."""
    options: list[tuple[tuple[float, ...], Rank, _Plan]] = []
    for plan in plans:
        view = plan.view
        if view.stage in stuck or view.finished or not view.placeable:
            continue
        if not plan.size and view.queued:
            options.append(((Rank.FIRST, plan.order), Rank.FIRST, plan))
        elif plan.size and _wants_more(plan, start_s):
            options.append(((Rank.MORE, -view.queued / plan.size, plan.order), Rank.MORE, plan))
        elif not plan.size and view.expecting:
            options.append(((Rank.EARLY, plan.order), Rank.EARLY, plan))
    if not options:
        return None
    _, rank, plan = min(options, key=lambda o: o[0])
    return rank, plan


def _yields(other: _Plan, actor: ActorView, rank: Rank, start_s: float) -> Yield | None:
    """Whether (and why) an actor of another stage may stop for a start of ``rank``."""
    if actor.state is not ActorState.IDLE:
        return None
    view = other.view
    if view.finished:
        return Yield.FINISHED
    if rank is Rank.FIRST and (not view.queued or other.size > 1):
        return Yield.UNNEEDED if not view.queued else Yield.BETWEEN_TASKS
    if not view.queued and actor.idle_s > start_s + view.setup_s:
        return Yield.UNNEEDED
    return None


def _victims(plan: _Plan, plans: Sequence[_Plan], held: Resources, totals: Resources, rank: Rank,
             start_s: float) -> list[tuple[_Plan, ActorView]]:
    """Idle actors of other stages to stop so that one actor of ``plan`` fits, or none if that cannot be done:
    by :class:`Yield`, then the longest idle first; only actors that free a resource still short."""
    candidates = []
    for other in plans:
        if other is plan:
            continue
        for actor in other.actors:
            why = _yields(other, actor, rank, start_s)
            if why is not None:
                candidates.append((why, -actor.idle_s, other, actor))
    chosen: list[tuple[_Plan, ActorView]] = []
    freed = held
    for _, _, other, actor in sorted(candidates, key=lambda c: (c[0], c[1])):
        lacking = short(freed, plan.view.need, totals)
        if not lacking:
            break
        if any(getattr(other.view.need, k) > 0 for k in lacking):
            chosen.append((other, actor))
            freed = freed - other.view.need
    return chosen if fits(freed, plan.view.need, totals) else []
