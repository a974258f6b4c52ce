"""The adaptive gate's controller: how many calls the fleet may have in flight to a PBX.

A pure function, ``decide``, of the controller's state and one window of measurements, with no
Redis in it: the release script (``lua/gate_release.lua``) records the calls and closes each
window exactly once fleet-wide; the process that closed it calls ``decide`` and writes the result
back with ``lua/gate_adjust.lua``, which applies it only if no newer window was decided since.
Its state lives in the gate's ``policy`` hash as plain fields (``PolicyState.fields``).

What it has to tell apart (issue 11): with ``L`` of our calls in a PBX of ``S`` free slots,
- **queueing** (``L > S``): latency rises, completions per second do not (Little: rate = L/latency
  stays S/service time). The cure is fewer calls.
- **a slower PBX**: latency rises and the rate falls with it, whatever ``L`` is. More or fewer
  calls change nothing, and cutting only idles slots.
- **noise**: heavy-tailed service times move a window's latency by half without anything changing.

Latency alone cannot tell the first two apart; the delivery rate at two different limits can
(BBR's delivery rate x minimum RTT). So the controller keeps a **floor**: the latency at the
highest limit verified to queue nothing, and estimates how many of our calls are being served
(not queued) as ``est = calls in flight x floor / latency`` (TCP Vegas's estimate, Netflix's
concurrency-limits). It moves by experiments, each judged on samples, never on one window:

- **cruise** at the limit, measuring. A measurement slower than the floor allows, beyond doubt
  (``alarm_z``), is measured once more (a window may straddle a change), then a **trial** drops
  to the number of calls the estimate says are served. The trial's latency, times the rate seen
  at the old limit, says how many calls the old limit really had in service (BBR's bandwidth x
  RTprop): all of them → the PBX got slower, the old limit comes back and the floor takes the new
  latency; fewer → it was queueing, and the limit settles there. A foreign client taking slots is
  queueing too: the rate does not grow with our calls, so the slots are given back.
- **probe** upward every ``probe_gap`` measurements (doubling at the start, as TCP's slow start;
  then by one, or ``step_fraction`` of the limit): kept if the added calls were served (the rate
  grew), dropped if they queued. A probe that found room probes again at once, with a doubled
  step, so new slots are found within seconds.
- **check**: once after the start and every ``recheck_ms``, one step down, to verify the floor
  itself (BBR's ProbeRTT): a limit that started above the slots would otherwise look normal.
- A **busy answer** (Noojee 109) cuts the limit by ``busy_cut`` at once (AIMD), once per limit.

Latencies are compared in logarithms (geometric means): a heavy tail's few long calls move the
log-mean far less than the mean, and a slower PBX scales every call alike. Every comparison
carries its standard error, from a running estimate of the latency's log-variance, so a decision
waits for as many samples as the noise needs: one window on a steady PBX, a few seconds on a
heavy-tailed one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields, replace
from typing import Literal, cast

#: What the controller is doing, in the order a typical life goes through them.
Mode = Literal["cruise", "confirm", "trial", "probe", "check"]
MODES: tuple[Mode, ...] = ("cruise", "confirm", "trial", "probe", "check")

#: The log-variance assumed before any sample (a standard deviation of 0.5 in logs: cautious,
#: so the first windows of a noisy PBX are not trusted more than they deserve), and its weight.
PRIOR_LOG_VARIANCE, PRIOR_WEIGHT = 0.25, 2.0


@dataclass(frozen=True)
class PolicyConfig:
    """The controller's constants (settings ``CONTACTSYNC_GATE__POLICY__*``). Times in ms.

    window_ms, min_samples: a window of calls closes after at least this long and this many
        answers (and twice the limit); the shortest measurement.
    tolerance: a window whose latency differs from the rest of its measurement by more than
        this fraction (and beyond doubt) marks a change of the PBX: the measurement restarts.
        It also sizes cruise measurements: each can see a change this large.
    z: standard errors a verdict needs (a probe's, a trial's).
    alarm_z: standard errors for an alarm: queueing seen while cruising, a check that finds the
        floor wrong, a window unlike the others.
    busy_cut: a busy answer multiplies the limit by this.
    probe_gap: at most this many cruise measurements between probes (after a failed probe the
        gap doubles up to this; after a successful one it is 0).
    max_samples, max_decision_ms: a measurement that has not decided by then decides on its
        point estimate (or gives up the probe).
    decision_precision: no verdict before the mean log-latency's standard error is below this.
    floor_precision: the same for a measurement that becomes the floor.
    memory_samples: the floor and the noise estimate weigh at most this many past samples.
    recheck_ms: the floor is verified by one step down at least this often.
    step_fraction: the smallest probe step, as a fraction of the limit (at least 1 call).
    """

    window_ms: int = 500
    min_samples: int = 10
    tolerance: float = 0.25
    z: float = 1.5
    alarm_z: float = 3.0
    busy_cut: float = 0.5
    probe_gap: int = 2
    max_samples: int = 300
    max_decision_ms: int = 10_000
    decision_precision: float = 0.2
    floor_precision: float = 0.3
    memory_samples: int = 200
    recheck_ms: int = 60_000
    step_fraction: float = 0.125


@dataclass(frozen=True)
class Window:
    """One window of the release script: the answers to calls granted under the current limit.

    log_sum / log_sq_sum: sums of ln(latency in ms) and of its square; held_sum: the sum of the
    permits held (this call's included) when each call was granted; busy: busy answers.
    """

    limit: int
    n: int
    log_sum: float
    log_sq_sum: float
    held_sum: float
    busy: int
    end_ms: int


@dataclass(frozen=True)
class Measure:
    """Samples pooled: how many, their mean log-latency, the mean permits held at grant."""

    n: float = 0.0
    log_mean: float = 0.0
    held: float = 0.0

    @property
    def ms(self) -> float:
        """The geometric mean latency."""
        return math.exp(self.log_mean)

    def plus(self, other: Measure) -> Measure:
        n = self.n + other.n
        if n <= 0:
            return Measure()
        mean = (self.n * self.log_mean + other.n * other.log_mean) / n
        return Measure(n, mean, (self.n * self.held + other.n * other.held) / n)

    def capped(self, n_max: float) -> Measure:
        """The same, weighing no more than ``n_max`` samples (older ones fade out)."""
        return replace(self, n=min(self.n, n_max))


@dataclass(frozen=True)
class PolicyState:
    """Everything the controller remembers between windows (one gate's ``policy`` hash).

    floor: latency at the highest limit verified to queue nothing (n = 0: not measured yet).
    current: the measurement in progress; reference (at reference_limit): what a probe, trial or
    check compares with; since_ms: when the current decision started; verified_ms: when a trial
    or check last verified the floor (-1: never); gap/waited: probe spacing; slow_start: doubling
    until the first probe that failed; step: the next probe's step; noise_var/noise_n: the
    latency's log-variance and the samples it is based on.
    """

    mode: Mode = "cruise"
    floor: Measure = field(default_factory=Measure)
    current: Measure = field(default_factory=Measure)
    reference: Measure = field(default_factory=Measure)
    reference_limit: int = 0
    since_ms: int = 0
    verified_ms: int = -1
    gap: int = 0
    waited: int = 0
    slow_start: bool = True
    step: int = 1
    noise_var: float = PRIOR_LOG_VARIANCE
    noise_n: float = PRIOR_WEIGHT

    def fields(self) -> dict[str, str]:
        """As the flat string fields of a Redis hash (read back by ``from_fields``)."""
        flat: dict[str, str] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, Measure):
                for g in fields(Measure):
                    flat[f"{f.name}.{g.name}"] = repr(float(getattr(value, g.name)))
            elif isinstance(value, bool):
                flat[f.name] = "1" if value else "0"
            else:
                flat[f.name] = repr(value) if isinstance(value, float) else str(value)
        return flat

    @classmethod
    def from_fields(cls, flat: dict[str, str]) -> PolicyState:
        """The state these fields describe; missing or unreadable fields take their default (a
        gate that never decided, or state written by an older version, starts afresh)."""
        if flat.get("mode") not in MODES:
            return cls()
        try:
            measures = {
                name: Measure(*(float(flat[f"{name}.{g.name}"]) for g in fields(Measure)))
                for name in ("floor", "current", "reference")
            }
            return cls(
                mode=cast(Mode, flat["mode"]),  # one of MODES: checked above
                **measures,
                reference_limit=int(flat["reference_limit"]),
                since_ms=int(flat["since_ms"]),
                verified_ms=int(flat["verified_ms"]),
                gap=int(flat["gap"]),
                waited=int(flat["waited"]),
                slow_start=flat["slow_start"] == "1",
                step=int(flat["step"]),
                noise_var=float(flat["noise_var"]),
                noise_n=float(flat["noise_n"]),
            )
        except (KeyError, ValueError):
            return cls()


@dataclass(frozen=True)
class Decision:
    """The new limit, the state to keep, and why (for the debug log)."""

    limit: int
    state: PolicyState
    reason: str


def decide(state: PolicyState, window: Window, config: PolicyConfig, maximum: int) -> Decision:
    """The limit after ``window`` closed, between 1 and ``maximum``, and the state to keep."""
    decision = _Controller(state, window, config, maximum).run()
    limit = max(1, min(maximum, decision.limit))
    return replace(decision, limit=limit)


def nearest(x: float) -> int:
    """Round half up (Python's ``round`` rounds half to even)."""
    return math.floor(x + 0.5)


class _Controller:
    """One decision: ``run`` reads like the module docstring, mode by mode."""

    def __init__(
        self, state: PolicyState, window: Window, config: PolicyConfig, maximum: int
    ) -> None:
        self.s, self.w, self.c, self.maximum = state, window, config, maximum
        self.limit = window.limit
        self.now = window.end_ms
        self.done = False  # the current measurement has run out of samples or time

    # -- outcomes --------------------------------------------------------------------------
    def stay(self, reason: str, **changes: object) -> Decision:
        return Decision(self.limit, replace(self.s, **changes), reason)  # type: ignore[arg-type]

    def go(self, mode: Mode, limit: int, reason: str, **changes: object) -> Decision:
        """A new decision starts: a new measurement, at ``limit``."""
        state = replace(self.s, mode=mode, current=Measure(), since_ms=self.now, **changes)  # type: ignore[arg-type]
        return Decision(limit, state, reason)

    def backed_off(self) -> dict[str, object]:
        """After a probe that found no room (or a cut): no doubling, and probe less often."""
        return {
            "slow_start": False,
            "step": self.min_step(self.limit),
            "gap": min(self.c.probe_gap, max(1, 2 * self.s.gap)),
        }

    def min_step(self, limit: int) -> int:
        return max(1, nearest(limit * self.c.step_fraction))

    # -- statistics ------------------------------------------------------------------------
    def se(self, a: Measure, b: Measure) -> float:
        """Standard error of the difference of two mean log-latencies."""
        inv = (1 / a.n if a.n else 0.0) + (1 / b.n if b.n else 0.0)
        return math.sqrt(self.s.noise_var * inv)

    def floor_samples(self) -> float:
        return max(self.c.min_samples, self.s.noise_var / self.c.floor_precision**2)

    def served(self, current: Measure) -> tuple[float, float]:
        """Of the calls in flight, how many the floor says are served, and its standard error."""
        est = current.held * math.exp(self.s.floor.log_mean - current.log_mean)
        return est, est * self.se(current, self.s.floor)

    def served_at_reference(self) -> tuple[float, float]:
        """How many calls the reference limit had in service: its rate (calls in flight over
        latency, Little) times the latency measured now, lower down, with nothing queued."""
        ref, cur = self.s.reference, self.s.current
        est = ref.held * math.exp(cur.log_mean - ref.log_mean)
        return est, est * self.se(cur, ref)

    def learn_noise(self) -> None:
        w = self.w
        if w.n < 2:
            return
        mean = w.log_sum / w.n
        var = max(0.0, (w.log_sq_sum - w.n * mean * mean) / (w.n - 1))
        weight = min(self.s.noise_n, self.c.memory_samples)
        total = weight + w.n - 1
        self.s = replace(
            self.s, noise_var=(self.s.noise_var * weight + var * (w.n - 1)) / total, noise_n=total
        )

    # -- the decision ----------------------------------------------------------------------
    def run(self) -> Decision:
        s, c, w = self.s, self.c, self.w
        if w.busy:
            cut = max(1, math.floor(self.limit * c.busy_cut))
            return self.go(
                "cruise",
                cut,
                f"busy answer: cut to {cut}",
                waited=0,
                **{**self.backed_off(), "gap": c.probe_gap},
            )
        if w.n == 0:
            return self.stay("no answers")
        self.learn_noise()
        s = self.s
        window = Measure(w.n, w.log_sum / w.n, w.held_sum / w.n)
        current = s.current
        if current.n:
            gap = abs(window.log_mean - current.log_mean)
            if gap > math.log(1 + c.tolerance) and gap > c.alarm_z * self.se(window, current):
                # The PBX changed within this measurement: what came before no longer counts,
                # and this window may straddle the change; measure again from the next one.
                return self.stay("a change: measuring again", current=Measure())
        current = current.plus(window)
        self.s = s = replace(s, current=current)
        if current.n < max(c.min_samples, s.noise_var / c.decision_precision**2):
            return self.stay("measuring")
        self.done = current.n >= c.max_samples or self.now - s.since_ms >= c.max_decision_ms
        if not s.floor.n:
            return self.first_floor()
        est, se = self.served(current)
        if not (math.isfinite(est) and math.isfinite(se)):
            # A measure of next to no weight (a fraction of a sample after capping) says
            # nothing: keep measuring rather than decide on infinity.
            return self.stay("no finite estimate yet")
        if est - c.alarm_z * se > current.held + 0.5:
            # Faster than the floor allows: the PBX got faster, and the floor must be measured
            # again where nothing queues, then verified once (its first windows may hold the
            # last slow calls).
            self.s = replace(s, floor=Measure(), verified_ms=-1)
            if s.mode == "probe":
                return self.go(
                    "cruise",
                    s.reference_limit,
                    "faster PBX: floor measured again",
                    **{**self.backed_off(), "gap": 0},
                )
            if s.mode in ("cruise", "confirm"):
                return self.go("cruise", self.limit, "faster PBX: floor measured again")
        handler = {"probe": self.probe, "check": self.check, "trial": self.trial}
        return handler.get(s.mode, self.cruise)(est, se)

    def first_floor(self) -> Decision:
        s = self.s
        if s.current.n < self.floor_samples() and not self.done:
            return self.stay("measuring the floor")
        self.s = replace(s, floor=s.current.capped(self.c.memory_samples))
        if s.slow_start and s.current.held >= self.limit - 0.5:
            return self.go(
                "probe",
                min(self.maximum, 2 * self.limit),
                "floor measured: doubling",
                reference_limit=self.limit,
            )
        return self.go("cruise", self.limit, "floor measured")

    def cruise(self, est: float, se: float) -> Decision:
        s, c, limit = self.s, self.c, self.limit
        in_flight = s.current.held  # (below the limit when there are fewer jobs than permits)
        if est + c.alarm_z * se < in_flight - 0.5:
            if s.mode == "cruise":
                return self.go("confirm", limit, f"queueing? {est:.1f} of {limit} served")
            if limit == 1:
                return self.go(
                    "cruise",
                    1,
                    "slower PBX at a limit of 1",
                    floor=s.current.capped(c.memory_samples),
                )
            trial = max(1, min(limit - 1, nearest(est)))
            return self.go(
                "trial",
                trial,
                f"queueing: {est:.1f} of {limit} served, trying {trial}",
                reference=s.current,
                reference_limit=limit,
            )
        # Enough samples to see a change of the tolerance beyond doubt, were there one.
        sees_tolerance = s.noise_var * (c.alarm_z / math.log(1 + c.tolerance)) ** 2
        enough = max(c.min_samples, min(c.max_samples, sees_tolerance))
        measured = s.current.n >= enough or est - c.z * se >= in_flight - 0.5 or self.done
        if measured:
            if est + c.z * se >= in_flight - 0.5:  # nothing queued, as far as it can tell
                self.s = s = replace(s, floor=s.floor.plus(s.current).capped(c.memory_samples))
            stale = (
                self.now - s.verified_ms >= c.recheck_ms if s.verified_ms >= 0 else not s.slow_start
            )
            if stale and limit > 1 and in_flight >= limit - 0.5:  # (only a binding limit matters)
                below = limit - self.min_step(limit)
                return self.go(
                    "check",
                    below,
                    f"checking the floor at {below}",
                    reference=s.current,
                    reference_limit=limit,
                )
        # Probes are paced by windows, not by measurements: on a noisy PBX a measurement takes
        # seconds, and the room a probe may find is worth more than the queue it may cost.
        binds = s.current.held >= limit - 0.5 and limit < self.maximum
        if binds and s.waited >= s.gap:
            step = limit if s.slow_start else max(s.step, self.min_step(limit))
            up = min(self.maximum, limit + step)
            floor = s.floor
            if not measured and est + c.z * se >= in_flight - 0.5:  # what it measured so far
                floor = floor.plus(s.current).capped(c.memory_samples)
            return self.go(
                "probe", up, f"probing {up}", reference_limit=limit, waited=0, floor=floor
            )
        waited = s.waited + 1 if binds else s.waited
        if measured:
            return self.go("cruise", limit, "cruising", waited=waited)
        return self.stay("cruising", waited=waited)

    def probe(self, est: float, se: float) -> Decision:
        s, c, limit = self.s, self.c, self.limit
        below = s.reference_limit

        def within(x: float) -> int:
            return max(below, min(limit, nearest(x)))

        if s.current.held < limit - 0.5 and est + c.z * se >= s.current.held - 0.5:
            # Fewer jobs than permits: the probe cannot fill its limit, and nothing queued. The
            # limit stays up (it costs nothing while unused); no climbing on without evidence.
            return self.go(
                "cruise",
                limit,
                f"probe {limit}: not filled, nothing queued",
                waited=0,
                **self.backed_off(),
            )
        low, high = within(est - c.z * se), within(est + c.z * se)
        # A big step that did not serve them all: the low end will do, +1 probes refine it.
        wide = limit - below > 1 and high < limit
        undecided = (low != high and not wide) or s.current.n < self.floor_samples()
        if undecided and not self.done:
            return self.stay(f"probing: {est:.1f} of {limit} served")
        new = low if (low == high or wide) else within(est)
        if new == limit:
            floor = s.floor.plus(s.current).capped(c.memory_samples)
            if limit < self.maximum:  # every added call was served: climb on at once
                step = s.step
                if low == high:
                    step = limit if s.slow_start else 2 * s.step
                up = min(self.maximum, limit + max(step, self.min_step(limit)))
                return self.go(
                    "probe",
                    up,
                    f"{limit} all served: probing {up}",
                    floor=floor,
                    step=step,
                    gap=0,
                    waited=0,
                    reference_limit=limit,
                )
            self.s = replace(s, floor=floor)
        return self.go(
            "cruise",
            new,
            f"probe {limit}: {est:.1f} served, keeping {new}",
            waited=0,
            **self.backed_off(),
        )

    def trial(self, est: float, se: float) -> Decision:
        s, c, limit = self.s, self.c, self.limit
        above = s.reference_limit
        at_above, se_above = self.served_at_reference()
        threshold = s.reference.held - 0.5  # all the calls it had in flight were served
        undecided = abs(at_above - threshold) < c.z * se_above
        if (undecided or s.current.n < self.floor_samples()) and not self.done:
            return self.stay(f"trial: {at_above:.1f} of {above} were served")
        changes = {**self.backed_off(), "waited": 0, "verified_ms": self.now}
        if at_above + c.z * se_above >= threshold:  # (or undecided): nothing of ours queued
            floor = s.reference.plus(s.current).capped(c.memory_samples)
            return self.go("cruise", above, f"slower PBX: back to {above}", floor=floor, **changes)
        lift = s.current.log_mean - s.floor.log_mean - math.log(1 + c.tolerance)
        inflated = s.floor.n > 0 and lift > c.z * self.se(s.current, s.floor)
        if at_above < limit + 0.5 and limit > 1 and inflated:
            return self.go("trial", limit - 1, f"{limit} may queue too: trying {limit - 1}")
        new = max(limit, min(above - 1, nearest(at_above)))
        return self.go(
            "cruise",
            new,
            f"queueing: {at_above:.1f} of {above} served, keeping {new}",
            floor=s.current.capped(c.memory_samples),
            **changes,
        )

    def check(self, est: float, se: float) -> Decision:
        s, c = self.s, self.c
        above = s.reference_limit
        at_above, se_above = self.served_at_reference()
        if s.current.n < self.floor_samples() and not self.done:
            return self.stay("checking the floor")
        if at_above + c.alarm_z * se_above < s.reference.held - 0.5:  # it was queueing after all
            new = max(self.limit, min(above - 1, nearest(at_above)))
            return self.go(
                "cruise",
                new,
                f"check: {above} queued, keeping {new}",
                floor=s.current.capped(c.memory_samples),
                verified_ms=self.now,
                **self.backed_off(),
            )
        floor = s.floor.plus(s.reference).plus(s.current).capped(c.memory_samples)
        return self.go("cruise", above, "check: the floor holds", floor=floor, verified_ms=self.now)
