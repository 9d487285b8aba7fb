"""Specification of the round state machine (fedshield.federation.round.RoundMachine).

Prepare (a policy, a head model, a seeded rng, a fake clock), execute (ticks and
submissions), assert (the events and the machine's views). The expected aggregate is
always recomputed here in float64, independently of the machine.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedshield.errors import PayloadError, ProtocolError
from fedshield.federation.round import (
    Assignment,
    CommitRequest,
    FederationFailed,
    FederationFinished,
    ModelRef,
    Phase,
    RoundEvaluated,
    RoundMachine,
    RoundOpened,
    RoundPolicy,
    RoundRetried,
)
from fedshield.tensors import Layout, Weights, flatten, weights_sha3
from fedshield.training.server_opt import FedAvg

# Derandomized: the same examples on every run, so a failure is reproducible anywhere.
SETTINGS = settings(max_examples=60, deadline=None, derandomize=True)
T0 = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
FED = "fed-test"
SHAPES = {"fc.bias": (3,), "fc.weight": (3, 2)}


def _reject(m: RoundMachine, participant: str, reason: str) -> None:
    """Reject against the round and attempt that are open now."""
    assert m.current is not None
    m.reject(participant, reason, round=m.current[0], attempt=m.current[1])


def at(seconds: float) -> datetime:
    """The fake clock: T0 plus some seconds."""
    return T0 + timedelta(seconds=seconds)


def names(n: int) -> list[str]:
    return [f"p{i:02d}" for i in range(n)]


def random_weights(seed: int, scale: float = 1.0) -> Weights:
    rng = np.random.default_rng(seed)
    return {n: (scale * rng.standard_normal(s)).astype(np.float32) for n, s in SHAPES.items()}


HEAD = random_weights(12345)
HEAD_REF = ModelRef(0, weights_sha3(HEAD))


def policy(**overrides: object) -> RoundPolicy:
    base = RoundPolicy(
        rounds=3,
        min_participants=2,
        fit_timeout_s=100.0,
        evaluate_timeout_s=50.0,
        join_timeout_s=30.0,
        max_retries=2,
    )
    return replace(base, **overrides)  # type: ignore[arg-type]


def machine(
    pol: RoundPolicy | None = None,
    *,
    seed: int = 0,
    completed_rounds: int = 0,
    evaluated: bool = False,
    learning_rate: float = 1.0,
    head: Weights = HEAD,
    head_ref: ModelRef = HEAD_REF,
) -> RoundMachine:
    return RoundMachine(
        federation=FED,
        policy=pol or policy(),
        head=head_ref,
        head_weights=head,
        completed_rounds=completed_rounds,
        optimizer=FedAvg(learning_rate=learning_rate),
        rng=np.random.default_rng(seed),
        evaluated=evaluated,
    )


def only(events: Sequence[object], kind: type) -> object:
    assert len(events) == 1, events
    assert isinstance(events[0], kind), events
    return events[0]


def open_round(m: RoundMachine, available: Sequence[str], now: datetime = T0) -> RoundOpened:
    opened = only(m.tick(now, available), RoundOpened)
    assert isinstance(opened, RoundOpened)
    return opened


def submit(
    m: RoundMachine,
    opened: RoundOpened,
    participant: str,
    *,
    update: Weights | None = None,
    num_examples: int = 10,
    metrics: dict[str, float] | None = None,
    now: datetime | None = None,
    round: int | None = None,
    attempt: int | None = None,
    model_sha3: str | None = None,
) -> None:
    m.submit_fit(
        participant,
        round=opened.round if round is None else round,
        attempt=opened.attempt if attempt is None else attempt,
        model_sha3=opened.model.sha3 if model_sha3 is None else model_sha3,
        num_examples=num_examples,
        update=random_weights(zlib.crc32(participant.encode()), 0.1) if update is None else update,
        metrics={"loss": 1.0} if metrics is None else metrics,
        now=opened.deadline - timedelta(seconds=1) if now is None else now,
    )


def evaluate(
    m: RoundMachine, opened: RoundOpened, participant: str, *, num_examples: int, acc: float
) -> None:
    m.submit_evaluation(
        participant,
        round=opened.round,
        attempt=opened.attempt,
        model_sha3=opened.model.sha3,
        num_examples=num_examples,
        metrics={"accuracy": acc},
        now=opened.deadline - timedelta(seconds=1),
    )


def expected_weights(
    head: Weights, updates: dict[str, Weights], examples: dict[str, int], lr: float
) -> Weights:
    """head + lr * sum_i n_i u_i / sum_i n_i, tensor by tensor in float64."""
    total = sum(examples.values())
    out: Weights = {}
    for name in head:
        acc = np.zeros(head[name].shape, dtype=np.float64)
        for p, update in updates.items():
            acc += examples[p] * update[name].astype(np.float64)
        out[name] = head[name].astype(np.float64) + lr * acc / total
    return out


def commit(m: RoundMachine, request: CommitRequest, version: int) -> ModelRef:
    ref = ModelRef(version, request.sha3)
    m.committed(ref, request.weights)
    return ref


def exact_selection_size(pol: RoundPolicy, available: int) -> int:
    """The selection rule in exact arithmetic: per_round, else ceil(fraction * available),
    never below min_participants and never above what is available."""
    wanted = pol.per_round or math.ceil(Fraction(pol.fraction) * available)
    return min(available, max(wanted, pol.min_participants))


# ------------------------------------------------------------------------------ opening


@SETTINGS
@given(
    reachable=st.integers(0, 12),
    min_participants=st.integers(1, 6),
    extra_available=st.one_of(st.none(), st.integers(0, 6)),
    join_timeout_s=st.floats(1.0, 1000.0),
)
def test_a_round_opens_only_when_enough_participants_are_available(
    reachable: int, min_participants: int, extra_available: int | None, join_timeout_s: float
) -> None:
    min_available = None if extra_available is None else min_participants + extra_available
    pol = policy(
        min_participants=min_participants,
        min_available=min_available,
        join_timeout_s=join_timeout_s,
    )
    m = machine(pol)
    available = names(reachable)
    wanted = max(min_participants, min_available or 0)

    first = m.tick(T0, available)
    if reachable >= wanted:
        assert isinstance(only(first, RoundOpened), RoundOpened)
        assert m.phase is Phase.FIT
        return
    assert first == []
    assert m.phase is Phase.WAITING
    # Still waiting just before the join deadline, counted from the first tick.
    assert m.tick(at(join_timeout_s * 0.999), available) == []
    assert m.phase is Phase.WAITING
    late = m.tick(at(join_timeout_s), available)
    if reachable >= min_participants:
        opened = only(late, RoundOpened)
        assert isinstance(opened, RoundOpened)
        assert set(opened.selected) <= set(available)
        assert m.phase is Phase.FIT
    else:
        retried = only(late, RoundRetried)
        assert isinstance(retried, RoundRetried)
        assert (retried.round, retried.attempt, retried.kind) == (1, 1, "fit")
        assert f"only {reachable} of the required {min_participants}" in retried.reason
        assert m.phase is Phase.WAITING


def test_availability_can_grow_while_waiting() -> None:
    m = machine(policy(min_participants=2, min_available=4))
    assert m.tick(T0, names(2)) == []
    assert m.tick(at(5), names(3)) == []
    opened = open_round(m, names(4), at(6))
    assert opened.selected == tuple(names(4))
    assert opened.deadline == at(6 + 100)


def test_duplicates_in_available_count_once() -> None:
    m = machine(policy(min_participants=3))
    assert m.tick(T0, ["a", "a", "b", "b"]) == []


@SETTINGS
@given(
    available=st.integers(1, 40),
    fraction=st.sampled_from([1 / 8, 1 / 4, 3 / 8, 1 / 2, 5 / 8, 3 / 4, 7 / 8, 1.0]),
    per_round=st.one_of(st.none(), st.integers(1, 40)),
    min_participants=st.integers(1, 5),
    seed=st.integers(0, 2**32 - 1),
)
def test_selection_size_subset_and_determinism(
    available: int, fraction: float, per_round: int | None, min_participants: int, seed: int
) -> None:
    pool = names(available)
    pol = policy(fraction=fraction, per_round=per_round, min_participants=1)
    pol = replace(pol, min_participants=min(min_participants, available))
    opened = open_round(machine(pol, seed=seed), pool)

    assert len(opened.selected) == exact_selection_size(pol, available)
    assert pol.selection_size(available) == len(opened.selected)
    assert len(set(opened.selected)) == len(opened.selected)
    assert set(opened.selected) <= set(pool)
    assert list(opened.selected) == sorted(opened.selected)
    assert (opened.round, opened.attempt, opened.kind) == (1, 1, "fit")
    assert opened.model == HEAD_REF
    assert opened.deadline == T0 + timedelta(seconds=pol.fit_timeout_s)
    # Same seed, same selection (and the order of `available` does not matter).
    again = open_round(machine(pol, seed=seed), list(reversed(pool)))
    assert again.selected == opened.selected


def test_different_seeds_select_different_subsets() -> None:
    pol = policy(per_round=5)
    selections = {open_round(machine(pol, seed=s), names(20)).selected for s in range(10)}
    assert len(selections) > 1


@pytest.mark.parametrize(("fraction", "available", "size"), [(0.07, 100, 7), (0.14, 50, 7)])
def test_fraction_selection_is_not_inflated_by_rounding(
    fraction: float, available: int, size: int
) -> None:
    pol = policy(fraction=fraction, min_participants=1)
    assert len(open_round(machine(pol), names(available)).selected) == size


def test_assignments_go_to_selected_participants_only() -> None:
    m = machine(policy(per_round=3))
    opened = open_round(m, names(6))
    for p in names(6):
        assignment = m.assignment_for(p, at(1))
        if p in opened.selected:
            assert assignment == Assignment(FED, 1, 1, "fit", HEAD_REF, opened.deadline)
        else:
            assert assignment is None
    assert m.assignment_for(opened.selected[0], opened.deadline) is None
    assert m.current == (1, 1, "fit")
    assert m.selected == opened.selected


# ------------------------------------------------------------------------------ aggregation


@SETTINGS
@given(
    n=st.integers(2, 6),
    seed=st.integers(0, 2**32 - 1),
    learning_rate=st.sampled_from([1.0, 0.5, 2.0]),
    data=st.data(),
)
def test_commit_is_head_plus_weighted_mean_and_order_invariant(
    n: int, seed: int, learning_rate: float, data: st.DataObject
) -> None:
    rng = np.random.default_rng(seed)
    pool = names(n)
    updates = {p: random_weights(int(rng.integers(2**31)), 0.5) for p in pool}
    examples = {p: int(rng.integers(1, 5000)) for p in pool}
    losses = {p: float(rng.uniform(0, 3)) for p in pool}
    order = data.draw(st.permutations(pool), label="order")

    commits = []
    for sequence in (pool, order):
        m = machine(policy(), seed=seed, learning_rate=learning_rate)
        opened = open_round(m, pool)
        assert opened.selected == tuple(pool)
        for p in sequence:
            submit(
                m,
                opened,
                p,
                update=updates[p],
                num_examples=examples[p],
                metrics={"loss": losses[p]},
            )
        assert m.phase is Phase.FIT  # nothing happens until the shell ticks
        assert m.answered == tuple(pool)
        request = only(m.tick(at(1), pool), CommitRequest)  # all answered: closes early
        assert isinstance(request, CommitRequest)
        assert m.phase is Phase.COMMITTING
        commits.append(request)

    first, second = commits
    expected = expected_weights(HEAD, updates, examples, learning_rate)
    assert set(first.weights) == set(SHAPES)
    for name in SHAPES:
        assert first.weights[name].dtype == np.float32
        np.testing.assert_allclose(first.weights[name], expected[name], rtol=1e-6, atol=1e-6)
        np.testing.assert_array_equal(first.weights[name], second.weights[name])
    assert first.sha3 == second.sha3 == weights_sha3(first.weights)
    assert first.parent == HEAD_REF
    assert (first.round, first.attempt) == (1, 1)
    assert first.answered == tuple(pool)
    assert first.dropped == ()
    assert dict(first.rejected) == {}
    total = sum(examples.values())
    expected_loss = sum(losses[p] * examples[p] for p in pool) / total
    assert first.metrics["loss"] == pytest.approx(expected_loss, rel=1e-12)


def test_num_examples_weight_the_mean() -> None:
    m = machine(policy(min_participants=2))
    opened = open_round(m, ["a", "b"])
    ones = {n: np.ones(s, np.float32) for n, s in SHAPES.items()}
    zeros = {n: np.zeros(s, np.float32) for n, s in SHAPES.items()}
    submit(m, opened, "a", update=ones, num_examples=3)
    submit(m, opened, "b", update=zeros, num_examples=1)
    request = only(m.tick(at(1), ["a", "b"]), CommitRequest)
    assert isinstance(request, CommitRequest)
    for name in SHAPES:
        np.testing.assert_allclose(request.weights[name], HEAD[name] + 0.75, rtol=1e-6)


def test_commit_then_the_next_round_distributes_the_new_head() -> None:
    pool = names(3)
    m = machine(policy(rounds=3))
    opened = open_round(m, pool)
    for p in pool:
        submit(m, opened, p)
    first = only(m.tick(at(1), pool), CommitRequest)
    assert isinstance(first, CommitRequest)
    # Until the shell confirms the commit, no new round opens.
    assert m.tick(at(2), pool) == []
    assert m.tick(at(10_000), pool) == []
    with pytest.raises(ProtocolError):
        submit(m, opened, pool[0], now=at(2))
    ref = commit(m, first, 1)
    assert m.phase is Phase.WAITING
    assert m.completed_rounds == 1
    assert m.head == ref

    second_open = open_round(m, pool, at(3))
    assert (second_open.round, second_open.attempt) == (2, 1)
    assert second_open.model == ref
    assert m.assignment_for(pool[0], at(4)) == Assignment(
        FED, 2, 1, "fit", ref, second_open.deadline
    )
    # A result computed from the old head is refused.
    with pytest.raises(ProtocolError, match="computed from model"):
        submit(m, second_open, pool[0], model_sha3=HEAD_REF.sha3)
    step = {n: np.full(s, 0.25, np.float32) for n, s in SHAPES.items()}
    for p in pool:
        submit(m, second_open, p, update=step)
    second = only(m.tick(at(5), pool), CommitRequest)
    assert isinstance(second, CommitRequest)
    assert second.parent == ref
    assert second.round == 2
    for name in SHAPES:
        np.testing.assert_allclose(second.weights[name], first.weights[name] + 0.25, rtol=1e-6)


def test_committed_outside_committing_is_a_protocol_error() -> None:
    m = machine()
    with pytest.raises(ProtocolError, match="nothing to commit"):
        m.committed(ModelRef(1, "x" * 64), HEAD)
    open_round(m, names(2))
    with pytest.raises(ProtocolError):
        m.committed(ModelRef(1, "x" * 64), HEAD)


# ------------------------------------------------------------------------------ stragglers


@SETTINGS
@given(
    n=st.integers(2, 8),
    min_participants=st.integers(1, 8),
    max_retries=st.integers(0, 3),
    data=st.data(),
)
def test_stragglers_close_at_the_deadline_and_short_rounds_retry_then_fail(
    n: int, min_participants: int, max_retries: int, data: st.DataObject
) -> None:
    min_participants = min(min_participants, n)
    pol = policy(min_participants=min_participants, max_retries=max_retries, fit_timeout_s=60.0)
    m = machine(pol)
    pool = names(n)
    clock = 0.0
    for attempt in range(1, max_retries + 2):
        opened = open_round(m, pool, at(clock))
        assert (opened.round, opened.attempt) == (1, attempt)
        assert opened.selected == tuple(pool)
        answering = data.draw(
            st.lists(st.sampled_from(pool), unique=True, max_size=n - 1), label="answering"
        )
        for p in answering:
            submit(m, opened, p, now=at(clock + 1))
        assert m.tick(at(clock + 59), pool) == []  # stragglers still have time
        events = m.tick(at(clock + 60), pool)
        stragglers = tuple(p for p in pool if p not in answering)
        if len(answering) >= min_participants:
            request = only(events, CommitRequest)
            assert isinstance(request, CommitRequest)
            assert request.answered == tuple(sorted(answering))
            assert request.dropped == stragglers
            assert request.attempt == attempt
            return
        assert m.assignment_for(pool[0], at(clock + 61)) is None
        if attempt <= max_retries:
            retried = only(events, RoundRetried)
            assert isinstance(retried, RoundRetried)
            assert (retried.round, retried.attempt) == (1, attempt)
            assert retried.answered == tuple(sorted(answering))
            assert retried.dropped == stragglers
            assert f"{len(answering)} of {n} selected participants answered" in retried.reason
            assert m.phase is Phase.WAITING
            # A late answer for the failed attempt is refused.
            with pytest.raises(ProtocolError):
                submit(m, opened, stragglers[0], now=at(clock + 61))
        else:
            failed = only(events, FederationFailed)
            assert isinstance(failed, FederationFailed)
            assert (failed.round, failed.attempt, failed.kind) == (1, attempt, "fit")
            assert failed.attempt == max_retries + 1
            assert "round 1 failed after" in failed.reason
            assert f"at least {min_participants} are required" in failed.reason
            assert m.phase is Phase.FAILED
            assert m.failure == failed.reason
            assert m.tick(at(clock + 1000), pool) == []
            return
        clock += 100


def test_attempt_resets_after_a_commit() -> None:
    pol = policy(min_participants=2, max_retries=3)
    m = machine(pol)
    pool = names(2)
    first = open_round(m, pool)
    assert isinstance(only(m.tick(first.deadline, pool), RoundRetried), RoundRetried)
    second = open_round(m, pool, at(200))
    assert second.attempt == 2
    with pytest.raises(ProtocolError, match="attempt 1"):
        submit(m, second, pool[0], attempt=1)
    for p in pool:
        submit(m, second, p)
    request = only(m.tick(at(201), pool), CommitRequest)
    assert isinstance(request, CommitRequest)
    assert request.attempt == 2
    commit(m, request, 1)
    assert open_round(m, pool, at(202)).attempt == 1


def test_join_timeouts_count_as_attempts() -> None:
    pol = policy(min_participants=3, max_retries=1, join_timeout_s=10.0)
    m = machine(pol)
    assert m.tick(T0, names(2)) == []
    retried = only(m.tick(at(10), names(2)), RoundRetried)
    assert isinstance(retried, RoundRetried)
    assert retried.answered == () and retried.dropped == ()
    assert m.tick(at(11), names(2)) == []  # a fresh join window starts now
    assert m.tick(at(20), names(2)) == []
    failed = only(m.tick(at(21), names(2)), FederationFailed)
    assert isinstance(failed, FederationFailed)
    assert failed.attempt == 2
    assert "reachable within 10 s" in failed.reason
    assert m.phase is Phase.FAILED


# ------------------------------------------------------------------------------ refused results


def protocol_cases(opened: RoundOpened, outsider: str) -> dict[str, dict[str, object]]:
    member = opened.selected[0]
    return {
        "wrong round": {"participant": member, "round": opened.round + 1},
        "wrong attempt": {"participant": member, "attempt": opened.attempt + 1},
        "not selected": {"participant": outsider},
        "at the deadline": {"participant": member, "now": opened.deadline},
        "after the deadline": {"participant": member, "now": opened.deadline + timedelta(1)},
        "wrong model": {"participant": member, "model_sha3": "0" * 64},
    }


@pytest.mark.parametrize(
    "case",
    [
        "wrong round",
        "wrong attempt",
        "not selected",
        "at the deadline",
        "after the deadline",
        "wrong model",
    ],
)
def test_protocol_violations_are_refused_and_nothing_is_recorded(case: str) -> None:
    pool = names(4)
    m = machine(policy(per_round=3, min_participants=3))
    opened = open_round(m, pool)
    outsider = next(p for p in pool if p not in opened.selected)
    kwargs = protocol_cases(opened, outsider)[case]
    participant = str(kwargs.pop("participant"))
    with pytest.raises(ProtocolError):
        submit(m, opened, participant, **kwargs)  # type: ignore[arg-type]
    assert m.answered == ()
    assert m.phase is Phase.FIT
    assert m.tick(at(1), pool) == []  # nothing settled, the round stays open
    # The participant can still answer properly (when it was selected).
    for p in opened.selected:
        submit(m, opened, p)
    request = only(m.tick(at(2), pool), CommitRequest)
    assert isinstance(request, CommitRequest)
    assert dict(request.rejected) == {}
    assert request.answered == opened.selected


def test_a_duplicate_is_refused_and_the_first_answer_kept() -> None:
    pool = names(2)
    m = machine(policy())
    opened = open_round(m, pool)
    zero = {n: np.zeros(s, np.float32) for n, s in SHAPES.items()}
    big = {n: np.full(s, 100.0, np.float32) for n, s in SHAPES.items()}
    submit(m, opened, "p00", update=zero)
    with pytest.raises(ProtocolError, match="already answered"):
        submit(m, opened, "p00", update=big)
    submit(m, opened, "p01", update=zero)
    request = only(m.tick(at(1), pool), CommitRequest)
    assert isinstance(request, CommitRequest)
    for name in SHAPES:
        np.testing.assert_array_equal(request.weights[name], HEAD[name])


def test_no_fit_round_open_is_a_protocol_error() -> None:
    m = machine()
    with pytest.raises(ProtocolError, match="no fit round is open"):
        m.submit_fit(
            "p00",
            round=1,
            attempt=1,
            model_sha3=HEAD_REF.sha3,
            num_examples=1,
            update=HEAD,
            metrics={},
            now=T0,
        )


def bad_updates() -> dict[str, Weights]:
    good = random_weights(7, 0.1)
    nan = {n: a.copy() for n, a in good.items()}
    nan["fc.weight"][0, 0] = np.nan
    inf = {n: a.copy() for n, a in good.items()}
    inf["fc.bias"][1] = -np.inf
    overflow = {n: a.astype(np.float64) for n, a in good.items()}
    overflow["fc.bias"][0] = 1e39  # finite in float64, inf as float32
    return {
        "wrong shape": {**good, "fc.weight": np.zeros((2, 3), np.float32)},
        "missing tensor": {"fc.bias": good["fc.bias"]},
        "extra tensor": {**good, "extra": np.zeros(1, np.float32)},
        "nan": nan,
        "inf": inf,
        "float32 overflow": overflow,
    }


BAD_METRICS: dict[str, dict[str, float]] = {
    "nan metric": {"loss": math.nan},
    "inf metric": {"loss": math.inf},
    "too many metrics": {f"m{i}": 1.0 for i in range(33)},
    "empty metric name": {"": 1.0},
}


@pytest.mark.filterwarnings("ignore:overflow encountered in cast:RuntimeWarning")
@pytest.mark.parametrize("case", [*bad_updates(), *BAD_METRICS])
def test_bad_payloads_are_recorded_as_rejections(case: str) -> None:
    pool = names(3)
    m = machine(policy(min_participants=2))
    opened = open_round(m, pool)
    bad = "p01"
    update = bad_updates().get(case)
    with pytest.raises(PayloadError) as info:
        submit(m, opened, bad, update=update, metrics=BAD_METRICS.get(case))
    assert m.assignment_for(bad, at(1)) is None
    assert bad not in m.answered
    # It cannot try again, even with a valid payload.
    with pytest.raises(ProtocolError, match="already answered"):
        submit(m, opened, bad)
    submit(m, opened, "p00")
    assert m.tick(at(2), pool) == []  # p02 still owes an answer
    submit(m, opened, "p02")
    # Everyone settled (two answers + one rejection): the round closes before its deadline.
    request = only(m.tick(at(3), pool), CommitRequest)
    assert isinstance(request, CommitRequest)
    assert request.answered == ("p00", "p02")
    assert dict(request.rejected) == {bad: info.value.message}
    assert bad not in request.answered


@pytest.mark.parametrize("num_examples", [0, -1, 10**9 + 1])
def test_num_examples_out_of_range_is_a_payload_error(num_examples: int) -> None:
    m = machine()
    opened = open_round(m, names(2))
    with pytest.raises(PayloadError, match="num_examples"):
        submit(m, opened, "p00", num_examples=num_examples)
    assert m.answered == ()


def test_too_few_valid_answers_after_rejections_retry() -> None:
    pool = names(3)
    m = machine(policy(min_participants=2))
    opened = open_round(m, pool)
    submit(m, opened, "p00")
    _reject(m, "p01", "payload is not a valid safetensors file")
    _reject(m, "p02", "too large")
    retried = only(m.tick(at(1), pool), RoundRetried)  # settled, but no quorum
    assert isinstance(retried, RoundRetried)
    assert retried.answered == ("p00",)
    assert "1 of 3 selected participants answered" in retried.reason


def test_reject_records_only_selected_participants_that_owe_an_answer() -> None:
    pool = names(4)
    m = machine(policy(per_round=3, min_participants=2))
    opened = open_round(m, pool)
    outsider = next(p for p in pool if p not in opened.selected)
    first, second, third = opened.selected
    submit(m, opened, first)
    _reject(m, first, "late garbage")  # already answered: ignored
    _reject(m, outsider, "not ours")  # not selected: ignored
    _reject(m, second, "decode failed")
    _reject(m, second, "second reason")  # the first reason is kept
    assert m.assignment_for(second, at(1)) is None
    assert m.tick(at(1), pool) == []  # `third` still owes an answer
    submit(m, opened, third)
    request = only(m.tick(at(2), pool), CommitRequest)
    assert isinstance(request, CommitRequest)
    assert request.answered == tuple(sorted((first, third)))
    assert dict(request.rejected) == {second: "decode failed"}


def test_reject_for_another_round_or_attempt_is_ignored() -> None:
    pool = names(3)
    m = machine(policy(min_participants=2))
    opened = open_round(m, pool)
    m.reject("p01", "stale garbage", round=opened.round + 1, attempt=opened.attempt)
    m.reject("p01", "stale garbage", round=opened.round, attempt=opened.attempt + 1)
    assert m.assignment_for("p01", at(1)) is not None  # p01 still owes this round
    for p in opened.selected:
        submit(m, opened, p)
    request = only(m.tick(at(2), pool), CommitRequest)
    assert isinstance(request, CommitRequest)
    assert dict(request.rejected) == {}
    assert "p01" in request.answered


# ------------------------------------------------------------------------------ the end


def run_fit_rounds(m: RoundMachine, pool: list[str], rounds: int, clock: float = 0.0) -> float:
    for number in range(1, rounds + 1):
        opened = open_round(m, pool, at(clock))
        assert opened.round == number
        for p in opened.selected:
            submit(m, opened, p, now=at(clock + 1))
        request = only(m.tick(at(clock + 2), pool), CommitRequest)
        assert isinstance(request, CommitRequest)
        commit(m, request, number)
        clock += 10
    return clock


def test_final_evaluation_round_goes_to_everyone_then_finishes() -> None:
    pool = names(5)
    m = machine(policy(rounds=2, per_round=2, min_participants=2))
    clock = run_fit_rounds(m, pool, 2)
    head = m.head
    assert head.version == 2
    opened = open_round(m, pool, at(clock))
    assert (opened.round, opened.attempt, opened.kind) == (3, 1, "evaluate")
    assert opened.selected == tuple(pool)  # all available, not per_round
    assert opened.model == head
    assert opened.deadline == at(clock + 50)  # evaluate_timeout_s
    assert m.phase is Phase.EVALUATE
    assert m.assignment_for(pool[0], at(clock + 1)) == Assignment(
        FED, 3, 1, "evaluate", head, opened.deadline
    )
    with pytest.raises(ProtocolError, match="no fit round"):
        submit(m, opened, pool[0])
    scores = {"p00": (10, 0.5), "p01": (30, 0.9), "p02": (60, 0.7), "p03": (0, 0.0)}
    for p, (count, acc) in scores.items():
        if count:
            evaluate(m, opened, p, num_examples=count, acc=acc)
    events = m.tick(opened.deadline, pool)
    assert len(events) == 2
    evaluated, finished = events
    assert isinstance(evaluated, RoundEvaluated)
    assert evaluated.round == 3
    assert evaluated.model == head
    assert evaluated.answered == ("p00", "p01", "p02")
    assert evaluated.dropped == ("p03", "p04")
    assert evaluated.metrics["accuracy"] == pytest.approx((5 + 27 + 42) / 100)
    assert evaluated.per_participant["p01"] == {"accuracy": 0.9}
    assert finished == FederationFinished(model=head)
    assert m.phase is Phase.FINISHED
    assert m.tick(at(clock + 1000), pool) == []


def test_evaluation_payload_errors_are_refused() -> None:
    m = machine(policy(rounds=1), completed_rounds=1)
    opened = open_round(m, names(2))
    with pytest.raises(PayloadError, match="not finite"):
        m.submit_evaluation(
            "p00",
            round=opened.round,
            attempt=1,
            model_sha3=HEAD_REF.sha3,
            num_examples=3,
            metrics={"accuracy": math.nan},
            now=at(1),
        )
    assert m.answered == ()


def test_without_final_evaluation_the_federation_finishes_after_the_last_commit() -> None:
    pool = names(3)
    m = machine(policy(rounds=2, final_evaluation=False))
    clock = run_fit_rounds(m, pool, 2)
    finished = only(m.tick(at(clock), pool), FederationFinished)
    assert finished == FederationFinished(model=ModelRef(2, m.head.sha3))
    assert m.phase is Phase.FINISHED
    assert m.tick(at(clock + 1), pool) == []


def test_final_evaluation_without_a_quorum_retries() -> None:
    pool = names(3)
    m = machine(policy(rounds=1, max_retries=1), completed_rounds=1)
    opened = open_round(m, pool)
    evaluate(m, opened, "p00", num_examples=5, acc=0.5)
    retried = only(m.tick(opened.deadline, pool), RoundRetried)
    assert isinstance(retried, RoundRetried)
    assert (retried.round, retried.kind) == (2, "evaluate")
    again = open_round(m, pool, at(100))
    assert (again.round, again.attempt, again.kind) == (2, 2, "evaluate")


# ------------------------------------------------------------------------------ head and restart


def test_set_head_only_while_waiting() -> None:
    pool = names(2)
    m = machine()
    other = random_weights(99)
    other_ref = ModelRef(7, weights_sha3(other))
    m.set_head(other_ref, other)
    opened = open_round(m, pool)
    assert opened.model == other_ref
    with pytest.raises(ProtocolError, match="phase is fit"):
        m.set_head(HEAD_REF, HEAD)
    zero = {n: np.zeros(s, np.float32) for n, s in SHAPES.items()}
    for p in pool:
        submit(m, opened, p, update=zero)
    request = only(m.tick(at(1), pool), CommitRequest)
    assert isinstance(request, CommitRequest)
    assert request.parent == other_ref
    for name in SHAPES:  # the aggregate starts from the head that was set
        np.testing.assert_array_equal(request.weights[name], other[name])
    with pytest.raises(ProtocolError, match="phase is committing"):
        m.set_head(HEAD_REF, HEAD)


def test_set_head_rejects_a_different_layout() -> None:
    m = machine()
    wrong = {"fc.weight": np.zeros((3, 2), np.float32)}
    with pytest.raises(PayloadError, match="different layout"):
        m.set_head(ModelRef(1, weights_sha3(wrong)), wrong)
    assert m.head == HEAD_REF


def test_set_head_is_refused_after_the_end() -> None:
    m = machine(policy(rounds=1, final_evaluation=False), completed_rounds=1)
    only(m.tick(T0, names(2)), FederationFinished)
    with pytest.raises(ProtocolError):
        m.set_head(HEAD_REF, HEAD)


@SETTINGS
@given(rounds=st.integers(1, 20), data=st.data())
def test_a_restarted_machine_resumes_after_the_completed_rounds(
    rounds: int, data: st.DataObject
) -> None:
    completed = data.draw(st.integers(0, rounds - 1), label="completed")
    m = machine(policy(rounds=rounds), completed_rounds=completed)
    opened = open_round(m, names(3))
    assert (opened.round, opened.attempt, opened.kind) == (completed + 1, 1, "fit")


def test_a_restarted_machine_after_all_rounds_evaluates_or_finishes() -> None:
    pool = names(3)
    evaluating = open_round(machine(policy(rounds=4), completed_rounds=4), pool)
    assert (evaluating.round, evaluating.kind) == (5, "evaluate")
    done = machine(policy(rounds=4), completed_rounds=4, evaluated=True)
    assert only(done.tick(T0, pool), FederationFinished) == FederationFinished(model=HEAD_REF)


def test_negative_completed_rounds_are_refused() -> None:
    with pytest.raises(ValueError, match="completed_rounds"):
        machine(completed_rounds=-1)


def test_policy_from_config_copies_the_rounds_table() -> None:
    from fedshield.config import parse_config

    rounds = parse_config(
        {
            "participants": {"count": 9},
            "rounds": {
                "count": 4,
                "fraction": 0.5,
                "per_round": 3,
                "min_participants": 3,
                "min_available": 6,
                "fit_timeout_s": 11,
                "evaluate_timeout_s": 12,
                "join_timeout_s": 13,
                "max_retries": 5,
                "final_evaluation": False,
            },
        }
    ).rounds
    assert RoundPolicy.from_config(rounds) == RoundPolicy(
        rounds=4,
        fraction=0.5,
        per_round=3,
        min_participants=3,
        min_available=6,
        fit_timeout_s=11.0,
        evaluate_timeout_s=12.0,
        join_timeout_s=13.0,
        max_retries=5,
        final_evaluation=False,
    )


# ------------------------------------------------------------------------------ whole runs


@settings(max_examples=40, deadline=None, derandomize=True)
@given(
    n=st.integers(2, 7),
    rounds=st.integers(1, 4),
    min_participants=st.integers(1, 3),
    max_retries=st.integers(0, 2),
    final_evaluation=st.booleans(),
    seed=st.integers(0, 2**32 - 1),
    data=st.data(),
)
def test_random_federations_keep_the_invariants(
    n: int,
    rounds: int,
    min_participants: int,
    max_retries: int,
    final_evaluation: bool,
    seed: int,
    data: st.DataObject,
) -> None:
    """Drive whole federations with random answers, rejections and stragglers."""
    pool = names(n)
    pol = policy(
        rounds=rounds,
        fraction=0.5,
        min_participants=min(min_participants, n),
        max_retries=max_retries,
        final_evaluation=final_evaluation,
    )
    m = machine(pol, seed=seed)
    head, head_weights = HEAD_REF, HEAD
    attempts: dict[int, int] = {}
    clock = 0.0
    for _ in range(100):
        events = m.tick(at(clock), pool)
        clock += 1
        if not events:
            continue
        event = events[0]
        if isinstance(event, FederationFinished):
            assert event.model == head
            assert m.completed_rounds == rounds
            break
        if isinstance(event, FederationFailed):
            assert event.attempt == max_retries + 1
            assert m.phase is Phase.FAILED
            break
        if isinstance(event, RoundRetried):
            continue
        assert isinstance(event, RoundOpened)
        assert event.model == head
        assert set(event.selected) <= set(pool)
        assert event.attempt == attempts.get(event.round, 0) + 1
        attempts[event.round] = event.attempt
        assert event.attempt <= max_retries + 1
        if event.kind == "evaluate":
            assert event.round == rounds + 1 and final_evaluation
            assert event.selected == tuple(pool)
        else:
            assert event.round == m.completed_rounds + 1 <= rounds
            assert len(event.selected) == exact_selection_size(pol, n)
        good: dict[str, Weights] = {}
        examples: dict[str, int] = {}
        for p in event.selected:
            action = data.draw(st.sampled_from(["answer", "answer", "reject", "silent"]))
            if action == "reject":
                _reject(m, p, "bad payload")
            elif action == "answer" and event.kind == "fit":
                good[p] = random_weights(data.draw(st.integers(0, 10_000)), 0.1)
                examples[p] = data.draw(st.integers(1, 100))
                submit(m, event, p, update=good[p], num_examples=examples[p], now=at(clock))
            elif action == "answer":
                examples[p] = data.draw(st.integers(1, 100))
                evaluate(m, event, p, num_examples=examples[p], acc=0.5)
        closing = m.tick(event.deadline, pool)
        clock = (event.deadline - T0).total_seconds() + 1
        quorum = len(examples) >= pol.min_participants
        if not quorum:
            assert isinstance(closing[0], RoundRetried | FederationFailed)
            assert closing[0].answered == tuple(sorted(examples))
            if isinstance(closing[0], FederationFailed):
                assert closing[0].attempt == max_retries + 1
                break
            continue
        if event.kind == "evaluate":
            assert isinstance(closing[0], RoundEvaluated)
            assert closing[1] == FederationFinished(model=head)
            break
        request = closing[0]
        assert isinstance(request, CommitRequest)
        assert request.parent == head
        assert request.answered == tuple(sorted(good))
        expected = expected_weights(head_weights, good, examples, 1.0)
        for name in SHAPES:
            np.testing.assert_allclose(request.weights[name], expected[name], rtol=1e-5, atol=1e-5)
        head = commit(m, request, head.version + 1)
        head_weights = request.weights
    else:
        pytest.fail("the federation neither finished nor failed")
    assert m.phase in (Phase.FINISHED, Phase.FAILED)


def test_a_machine_resumed_with_failures_has_only_the_rest_of_its_retries() -> None:
    pool = names(3)
    pol = policy(min_participants=2, max_retries=2)
    m = RoundMachine(
        federation=FED,
        policy=pol,
        head=HEAD_REF,
        head_weights=HEAD,
        completed_rounds=0,
        optimizer=FedAvg(),
        rng=np.random.default_rng(0),
        attempt=4,
        failures=2,
    )
    opened = open_round(m, pool)
    assert opened.attempt == 4
    failed = only(m.tick(opened.deadline, pool), FederationFailed)
    assert isinstance(failed, FederationFailed)
    assert "after 3 attempt(s)" in failed.reason


# ------------------------------------------------------------------- secure aggregation


def secure_machine() -> RoundMachine:
    return machine(policy(min_participants=2, secure=True))


def report_without_updates(
    m: RoundMachine, opened: RoundOpened, *, metrics: dict[str, float]
) -> None:
    """Every selected site reports its count and metrics, no update (secure mode)."""
    for p in opened.selected:
        m.submit_fit(
            p,
            round=opened.round,
            attempt=opened.attempt,
            model_sha3=HEAD_REF.sha3,
            num_examples=5,
            update=None,
            metrics=metrics,
            now=at(1),
        )


def test_secure_mode_takes_no_individual_update_only_the_sum() -> None:
    pool = names(3)
    m = secure_machine()
    opened = open_round(m, pool)
    with pytest.raises(ProtocolError, match="send the masked input"):
        m.submit_fit(
            "p00",
            round=opened.round,
            attempt=opened.attempt,
            model_sha3=HEAD_REF.sha3,
            num_examples=5,
            update=random_weights(1),
            metrics={},
            now=at(1),
        )
    report_without_updates(m, opened, metrics={"train_loss": 1.0})
    assert m._open is not None and m._open.vectors == {}  # nothing individual is held
    assert m.tick(at(2), pool) == []  # all reported, but the round waits for the sum
    size = sum(int(np.prod(s)) for s in SHAPES.values())
    mean = np.full(size, 0.5)
    survivors = opened.selected[:2]
    m.submit_secure_sum(
        round=opened.round,
        attempt=opened.attempt,
        mean_update=mean,
        survivors=survivors,
        now=at(3),
    )
    request = only(m.tick(at(4), pool), CommitRequest)
    assert isinstance(request, CommitRequest)
    assert request.answered == tuple(sorted(survivors))
    assert set(request.dropped) == set(opened.selected) - set(survivors)
    expected = flatten(HEAD, Layout.of(HEAD)) + 0.5
    assert np.allclose(flatten(request.weights, Layout.of(HEAD)), expected, atol=1e-6)


def test_secure_mode_without_a_sum_by_the_deadline_is_retried() -> None:
    pool = names(3)
    m = secure_machine()
    opened = open_round(m, pool)
    report_without_updates(m, opened, metrics={})
    retried = only(m.tick(opened.deadline, pool), RoundRetried)
    assert isinstance(retried, RoundRetried)
    assert "no sum" in retried.reason


def test_a_secure_sum_is_refused_when_it_cannot_be_right() -> None:
    pool = names(3)
    plain = machine()
    opened = open_round(plain, pool)
    size = sum(int(np.prod(s)) for s in SHAPES.values())
    with pytest.raises(ProtocolError, match="off"):
        plain.submit_secure_sum(
            round=opened.round,
            attempt=opened.attempt,
            mean_update=np.zeros(size),
            survivors=opened.selected,
            now=at(1),
        )
    m = secure_machine()
    opened = open_round(m, pool)
    with pytest.raises(PayloadError, match="shape"):
        m.submit_secure_sum(
            round=opened.round,
            attempt=opened.attempt,
            mean_update=np.zeros(size + 1),
            survivors=opened.selected,
            now=at(1),
        )
    with pytest.raises(PayloadError, match="NaN"):
        m.submit_secure_sum(
            round=opened.round,
            attempt=opened.attempt,
            mean_update=np.full(size, np.nan),
            survivors=opened.selected,
            now=at(1),
        )
    with pytest.raises(ProtocolError, match="not selected"):
        m.submit_secure_sum(
            round=opened.round,
            attempt=opened.attempt,
            mean_update=np.zeros(size),
            survivors=("intruder",),
            now=at(1),
        )
