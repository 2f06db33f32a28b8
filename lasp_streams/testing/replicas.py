"""A convergence simulator: N replicas of one lattice over a faulty network.

Each replica applies mutations as its own actor (``r0``, ``r1`` ... : the mutation's actor
argument is replaced by the replica's), and sends the encoded delta to every other replica. The
network delivers messages in any order, delivers some twice and drops some; every message goes
through :mod:`lasp_streams.codec`. At the end, in-flight messages are delivered and every
replica that lost a message to a peer resends its full state to that peer (Lasp's full-state
fallback). Then all replicas must be equal, equal to the join of every delta, and (when a
sequential specification is given) have the value the specification predicts.

:func:`check_convergence` runs random schedules under Hypothesis; :class:`Network` is usable
directly for hand-written scenarios.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lasp_streams.codec import decode, encode
from lasp_streams.errors import MutatorError
from lasp_streams.lattices.base import Lattice
from lasp_streams.testing.laws import LawViolation, Mutation, OpsSpec, mutations

__all__ = [
    "ConvergenceFailure",
    "Network",
    "Spec",
    "Step",
    "check_convergence",
    "run_schedule",
    "schedules",
]

Spec = Callable[[Sequence[tuple[str, Mutation]]], Any]
"""A sequential specification: from the applied ``(actor, mutation)`` list, the final value."""


class ConvergenceFailure(LawViolation):
    """Replicas did not converge, or converged to a value the specification does not predict."""


@dataclass
class _Message:
    sender: int
    dest: int
    data: bytes


@dataclass
class Network:
    """``n`` replicas of ``bottom()`` and the messages in flight between them."""

    bottom: Callable[[], Lattice]
    n: int = 3
    replicas: list[Lattice] = field(init=False)
    in_flight: list[_Message] = field(init=False, default_factory=list)
    applied: list[tuple[str, Mutation]] = field(init=False, default_factory=list)
    lost: set[tuple[int, int]] = field(init=False, default_factory=set)
    all_deltas: Lattice = field(init=False)

    def __post_init__(self) -> None:
        if self.n < 1:
            raise ValueError("Network needs at least one replica")
        self.replicas = [self.bottom() for _ in range(self.n)]
        self.all_deltas = self.bottom()

    @staticmethod
    def actor(index: int) -> str:
        """The actor name of replica ``index``."""
        return f"r{index}"

    def mutate(self, index: int, op: Mutation) -> bool:
        """Apply ``op`` at replica ``index`` as its actor and broadcast the delta.

        Returns False (nothing sent) when the mutator refuses with MutatorError."""
        actor = self.actor(index)
        local = Mutation(op.name, (actor, *op.args[1:]))
        try:
            delta = local.apply(self.replicas[index])
        except MutatorError:
            return False
        self.applied.append((actor, local))
        self.all_deltas.merge(delta)
        data = encode(delta)
        for dest in range(self.n):
            if dest != index:
                self.in_flight.append(_Message(index, dest, data))
        return True

    def deliver(self, position: int, duplicate: bool = False) -> None:
        """Deliver the in-flight message at ``position`` (mod the count); keep a copy in
        flight when ``duplicate``."""
        if not self.in_flight:
            return
        position %= len(self.in_flight)
        message = self.in_flight[position] if duplicate else self.in_flight.pop(position)
        self.replicas[message.dest].merge(decode(message.data))

    def drop(self, position: int) -> None:
        """Lose the in-flight message at ``position``; the sender will resend full state."""
        if not self.in_flight:
            return
        message = self.in_flight.pop(position % len(self.in_flight))
        self.lost.add((message.sender, message.dest))

    def heal(self, rng: random.Random | None = None) -> None:
        """Deliver everything in flight (shuffled), then full-state resync of lost links."""
        rng = rng or random.Random(0)
        rng.shuffle(self.in_flight)
        while self.in_flight:
            self.deliver(0)
        # A full state is the join of every delta its sender produced or received, so one
        # resend repairs every dropped delta on that link.
        for sender, dest in sorted(self.lost):
            self.replicas[dest].merge(decode(encode(self.replicas[sender])))
        self.lost.clear()

    def check(self, spec: Spec | None = None) -> None:
        """Raise ConvergenceFailure unless all replicas equal the join of all deltas (and the
        specification's value)."""
        first = self.replicas[0]
        for index, replica in enumerate(self.replicas):
            if replica != self.all_deltas:
                raise ConvergenceFailure(
                    f"replica r{index} differs from the join of all deltas after healing\n"
                    f"  replica = {replica!r}\n  join of deltas = {self.all_deltas!r}\n"
                    f"  replica r0 = {first!r}\n  applied = {self.applied!r}"
                )
        if spec is not None:
            expected = spec(self.applied)
            if first.value() != expected:
                raise ConvergenceFailure(
                    f"converged value {first.value()!r} differs from the sequential "
                    f"specification {expected!r}\n  applied = {self.applied!r}"
                )


@dataclass(frozen=True)
class Step:
    """One step of a schedule: ``kind`` is "mutate", "deliver", "duplicate" or "drop"."""

    kind: str
    replica: int = 0
    position: int = 0
    op: Mutation | None = None


def schedules(ops: OpsSpec, n: int = 3, max_steps: int = 40) -> st.SearchStrategy[list[Step]]:
    """Random schedules of mutations and (possibly duplicated, dropped) deliveries."""
    replica = st.integers(min_value=0, max_value=n - 1)
    position = st.integers(min_value=0, max_value=10_000)
    step = st.one_of(
        st.builds(Step, kind=st.just("mutate"), replica=replica, op=mutations(ops)),
        st.builds(Step, kind=st.just("deliver"), position=position),
        st.builds(Step, kind=st.just("duplicate"), position=position),
        st.builds(Step, kind=st.just("drop"), position=position),
    )
    return st.lists(step, max_size=max_steps)


def run_schedule(
    bottom: Callable[[], Lattice], steps: Sequence[Step], n: int = 3, spec: Spec | None = None
) -> Network:
    """Play ``steps`` on a fresh :class:`Network`, heal it and check convergence."""
    net = Network(bottom, n)
    for step in steps:
        if step.kind == "mutate":
            assert step.op is not None
            net.mutate(step.replica, step.op)
        elif step.kind == "deliver":
            net.deliver(step.position)
        elif step.kind == "duplicate":
            net.deliver(step.position, duplicate=True)
        elif step.kind == "drop":
            net.drop(step.position)
        else:
            raise ValueError(f"unknown step kind {step.kind!r}")
    net.heal(random.Random(len(steps)))
    net.check(spec)
    return net


def check_convergence(
    bottom: Callable[[], Lattice],
    ops: OpsSpec,
    *,
    n: int = 3,
    spec: Spec | None = None,
    max_steps: int = 40,
    max_examples: int = 40,
) -> None:
    """Under Hypothesis, random schedules on ``n`` replicas always converge (and match
    ``spec``). Raises :class:`ConvergenceFailure` with the shrunk schedule on failure."""

    @settings(
        max_examples=max_examples,
        deadline=None,
        database=None,
        report_multiple_bugs=False,
        suppress_health_check=[HealthCheck.too_slow],
    )
    @given(steps=schedules(ops, n, max_steps))
    def run(steps: list[Step]) -> None:
        run_schedule(bottom, steps, n, spec)

    run()
