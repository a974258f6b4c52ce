"""The adaptive limit's controller alone (``worker/gate_policy.py``): a pure function, tested
without a server. Properties over arbitrary states and windows, then the decisions that tell
queueing from a slower PBX, one window at a time. (The same controller against a simulated PBX,
through the real gate scripts, is ``test_gate_adaptive.py``.)"""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from worker.gate_policy import (
    MODES,
    Measure,
    PolicyConfig,
    PolicyState,
    Window,
    decide,
)
from worker.settings import PolicySettings

CONFIG = PolicyConfig()
MAX = 32

measures = st.builds(
    Measure,
    n=st.floats(0, 500),
    log_mean=st.floats(0, math.log(60_000)),
    held=st.floats(0, MAX),
)
states = st.builds(
    PolicyState,
    mode=st.sampled_from(MODES),
    floor=measures,
    current=measures,
    reference=measures,
    reference_limit=st.integers(0, MAX + 8),
    since_ms=st.integers(0, 10**7),
    verified_ms=st.integers(-1, 10**7),
    gap=st.integers(0, 5),
    waited=st.integers(0, 10),
    slow_start=st.booleans(),
    step=st.integers(1, 16),
    noise_var=st.floats(0, 3),
    noise_n=st.floats(0, 500),
)


@st.composite
def windows(draw: st.DrawFn, limit: int | None = None, busy: int | None = None) -> Window:
    """Any window a release script can close: n answers of a mean log-latency and a spread."""
    limit = draw(st.integers(1, MAX)) if limit is None else limit
    n = draw(st.integers(0, 200))
    log_mean = draw(st.floats(math.log(0.1), math.log(60_000)))
    log_var = draw(st.floats(0, 4))
    held = draw(st.floats(1, limit))
    return Window(
        limit,
        n,
        n * log_mean,
        n * log_mean**2 + max(0, n - 1) * log_var,
        n * held,
        draw(st.integers(0, 3)) if busy is None else busy,
        draw(st.integers(10**7, 2 * 10**7)),
    )


def steady(ms: float, n: int, held: float, limit: int, end_ms: int, spread: float = 0.1) -> Window:
    """n answers around ``ms`` (log-sd ``spread``), each granted with ``held`` permits out."""
    log_mean = math.log(ms)
    return Window(
        limit, n, n * log_mean, n * log_mean**2 + (n - 1) * spread**2, n * held, 0, end_ms
    )


def cruising(limit: int, floor_ms: float, **changes: object) -> PolicyState:
    """A controller cruising at ``limit`` with a well-measured floor and a quiet PBX."""
    state = PolicyState(
        mode="cruise",
        floor=Measure(200, math.log(floor_ms), limit),
        verified_ms=0,
        slow_start=False,
        gap=2,
        noise_var=0.01,
        noise_n=200,
    )
    return replace(state, **changes)  # type: ignore[arg-type]


# -- properties ---------------------------------------------------------------------------------
@given(states, windows(), st.integers(1, MAX))
@settings(max_examples=400)
def test_the_limit_never_leaves_1_to_max(state: PolicyState, window: Window, maximum: int) -> None:
    decision = decide(state, window, CONFIG, maximum)
    assert 1 <= decision.limit <= maximum


@given(states, st.integers(1, MAX), st.data())
def test_a_busy_answer_cuts_the_limit_at_once(
    state: PolicyState, limit: int, data: st.DataObject
) -> None:
    window = data.draw(windows(limit=limit, busy=data.draw(st.integers(1, 5))))
    decision = decide(state, window, CONFIG, MAX)
    assert decision.limit == max(1, math.floor(limit * CONFIG.busy_cut))
    assert decision.state.mode == "cruise" and not decision.state.slow_start


@given(states, st.lists(windows(), max_size=30))
def test_any_sequence_of_windows_keeps_bounds_and_a_state_that_survives_redis(
    state: PolicyState, sequence: list[Window]
) -> None:
    for window in sequence:
        decision = decide(state, window, CONFIG, MAX)
        assert 1 <= decision.limit <= MAX
        state = PolicyState.from_fields(decision.state.fields())
        assert state == decision.state


@given(states)
def test_state_round_trips_through_its_redis_fields(state: PolicyState) -> None:
    assert PolicyState.from_fields(state.fields()) == state
    assert all(isinstance(v, str) for v in state.fields().values())


def test_a_missing_or_unreadable_state_starts_afresh() -> None:
    assert PolicyState.from_fields({}) == PolicyState()
    broken = {**PolicyState().fields(), "gap": "two"}
    assert PolicyState.from_fields(broken) == PolicyState()
    assert PolicyState.from_fields({**PolicyState().fields(), "mode": "dance"}) == PolicyState()


@given(st.integers(2, 16), st.floats(1.3, 20), st.integers(10, 200))
def test_a_window_much_slower_than_the_floor_never_raises_the_limit(
    limit: int, slower: float, n: int
) -> None:
    state = cruising(limit, 100)
    decision = decide(state, steady(100 * slower, n, limit, limit, 10**6), CONFIG, MAX)
    assert decision.limit <= limit


@given(st.integers(2, 16), st.floats(1.0, 3.0), st.floats(1.0, 3.0), st.integers(20, 200))
def test_a_slower_probe_never_keeps_a_higher_limit(
    below: int, first: float, second: float, n: int
) -> None:
    """The same probe, one window faster than the other (never faster than the floor)."""
    fast, slow = sorted([first, second])
    probe = cruising(below + 1, 100, mode="probe", reference_limit=below)

    def after(slower: float) -> int:
        window = steady(100 * slower, n, below + 1, below + 1, 10**6)
        return decide(probe, window, CONFIG, MAX).limit

    assert after(slow) <= after(fast)


@given(st.integers(3, 16), st.floats(1.0, 4.0), st.floats(1.0, 4.0), st.integers(20, 200))
def test_a_slower_trial_never_keeps_a_lower_limit(
    above: int, first: float, second: float, n: int
) -> None:
    """A trial below a limit whose latency rose: the slower the trial's own calls, the more
    the rise was the PBX's, not ours; so the limit it keeps only goes up with it."""
    fast, slow = sorted([first, second])
    reference = Measure(n, math.log(200), above)  # the limit above, at twice the floor's latency
    trial = cruising(above // 2, 100, mode="trial", reference=reference, reference_limit=above)

    def after(slower: float) -> int:
        window = steady(100 * slower, n, above // 2, above // 2, 10**6)
        return decide(trial, window, CONFIG, MAX).limit

    assert after(fast) <= after(slow)


# -- the decisions, one window at a time ------------------------------------------------------
def test_queueing_is_confirmed_then_tried_at_the_slots_the_estimate_gives() -> None:
    # 4 of our calls, 200 ms where the floor says 100: only 2 are being served.
    first = decide(cruising(4, 100), steady(200, 20, 4, 4, 1000), CONFIG, MAX)
    assert (first.limit, first.state.mode) == (4, "confirm")  # a window may straddle a change
    second = decide(first.state, steady(200, 20, 4, 4, 1500), CONFIG, MAX)
    assert (second.limit, second.state.mode) == (2, "trial")


def test_a_trial_whose_latency_fell_keeps_the_lower_limit_fewer_slots() -> None:
    trial = cruising(
        2, 100, mode="trial", reference=Measure(20, math.log(200), 4), reference_limit=4
    )
    decision = decide(trial, steady(100, 20, 2, 2, 2000), CONFIG, MAX)
    assert decision.limit == 2 and decision.state.mode == "cruise"
    assert decision.state.floor.ms == pytest.approx(100)


def test_a_trial_whose_latency_stayed_restores_the_limit_a_slower_pbx() -> None:
    # 4 calls at 250 ms, and 2 calls also at 250 ms: the rate halved with the calls, so all
    # 4 were being served; the PBX got slower. The floor takes the new latency.
    trial = cruising(
        2, 100, mode="trial", reference=Measure(20, math.log(250), 4), reference_limit=4
    )
    decision = decide(trial, steady(250, 20, 2, 2, 2000), CONFIG, MAX)
    assert decision.limit == 4 and decision.state.mode == "cruise"
    assert decision.state.floor.ms == pytest.approx(250)


def test_fewer_slots_and_a_slower_pbx_at_once_settle_at_the_slots() -> None:
    # 4 slots of 100 ms became 2 of 200 ms: 4 calls take 400 ms, a trial at 1 takes 200 ms.
    trial = cruising(
        1, 100, mode="trial", reference=Measure(20, math.log(400), 4), reference_limit=4
    )
    assert decide(trial, steady(200, 20, 1, 1, 2000), CONFIG, MAX).limit == 2


def test_a_probe_that_queued_goes_back_and_one_that_found_room_climbs_on() -> None:
    probe = cruising(5, 100, mode="probe", reference_limit=4)
    queued = decide(probe, steady(125, 25, 5, 5, 1000), CONFIG, MAX)  # 5 calls, 4 served
    assert (queued.limit, queued.state.mode, queued.state.gap) == (4, "cruise", 2)
    served = decide(probe, steady(100, 25, 5, 5, 1000), CONFIG, MAX)  # all 5 served
    assert (served.limit, served.state.mode) == (7, "probe")  # a doubled step


def test_a_probe_that_the_jobs_never_fill_keeps_its_limit_without_climbing() -> None:
    probe = cruising(5, 100, mode="probe", reference_limit=4)
    decision = decide(probe, steady(100, 25, 2, 5, 1000), CONFIG, MAX)
    assert (decision.limit, decision.state.mode) == (5, "cruise")


def test_cruising_probes_every_probe_gap_windows_only_while_the_limit_binds() -> None:
    state = cruising(4, 100, gap=2, waited=0)
    limits = []
    for n in range(6):
        decision = decide(state, steady(100, 20, 4, 4, 1000 + 500 * n), CONFIG, MAX)
        limits.append(decision.limit)
        state = replace(decision.state, mode="cruise", waited=decision.state.waited)
    assert limits[:3] == [4, 4, 5]
    idle = decide(cruising(4, 100, gap=0), steady(100, 20, 1, 4, 1000), CONFIG, MAX)
    assert idle.limit == 4  # one call at a time: no reason to probe


def test_a_faster_pbx_has_its_floor_measured_again() -> None:
    decision = decide(cruising(4, 250), steady(100, 20, 4, 4, 1000), CONFIG, MAX)
    assert decision.limit == 4 and decision.state.floor.n == 0
    again = decide(decision.state, steady(100, 20, 4, 4, 1500), CONFIG, MAX)
    assert again.state.floor.ms == pytest.approx(100)


def test_the_floor_is_checked_one_step_down_once_a_minute() -> None:
    state = cruising(4, 100, verified_ms=0, gap=5)
    assert decide(state, steady(100, 20, 4, 4, 59_000), CONFIG, MAX).state.mode == "cruise"
    check = decide(state, steady(100, 20, 4, 4, 60_000), CONFIG, MAX)
    assert (check.limit, check.state.mode) == (3, "check")
    holds = decide(check.state, steady(100, 20, 3, 3, 61_000), CONFIG, MAX)
    assert (holds.limit, holds.state.verified_ms) == (4, 61_000)


def test_a_heavy_tailed_pbx_waits_for_more_answers_before_a_verdict() -> None:
    noisy = cruising(5, 100, mode="probe", reference_limit=4, noise_var=0.6, noise_n=200)
    one_window = decide(noisy, steady(125, 20, 5, 5, 1000, spread=0.77), CONFIG, MAX)
    assert (one_window.limit, one_window.state.mode) == (5, "probe")  # still measuring
    quiet = replace(noisy, noise_var=0.01)
    assert decide(quiet, steady(125, 20, 5, 5, 1000), CONFIG, MAX).limit == 4


def test_a_window_unlike_the_rest_of_its_measurement_restarts_it() -> None:
    state = cruising(4, 100, current=Measure(20, math.log(100), 4))
    decision = decide(state, steady(300, 20, 4, 4, 1000), CONFIG, MAX)
    assert decision.limit == 4 and decision.state.current.n == 0


def test_the_first_floor_starts_a_doubling_probe_when_the_limit_binds() -> None:
    decision = decide(PolicyState(), steady(100, 20, 2, 2, 1000), CONFIG, MAX)
    assert (decision.limit, decision.state.mode) == (4, "probe")
    assert decision.state.floor.ms == pytest.approx(100)


def test_settings_and_the_controller_agree_on_every_default() -> None:
    assert PolicySettings().config() == PolicyConfig()


@given(windows())
def test_a_window_with_no_answers_changes_nothing(window: Window) -> None:
    assume(window.n == 0 and window.busy == 0)
    state = cruising(4, 100)
    decision = decide(state, replace(window, limit=4), CONFIG, MAX)
    assert decision.limit == 4 and decision.state == state
