"""The fleet-wide pause of a destination that is down (worker/pause.py) and the fleet's shared
token (worker/credentials.py), on a real Valkey. Times are passed in, not slept."""

from __future__ import annotations

import threading
import uuid
from typing import Any

import pytest

from worker.credentials import REFUSAL_MEMORY_S, LoginFailed, SharedToken, Token
from worker.pause import Pause

pytestmark = [pytest.mark.integration, pytest.mark.timeout(20)]


def fresh_prefix() -> str:
    return f"t{uuid.uuid4().hex[:8]}:"


def pause(client: Any, **kwargs: Any) -> Pause:
    options = {"after_failures": 3, "probe_interval_s": 5.0, "config_probe_interval_s": 60.0}
    return Pause(client, "dest", prefix=fresh_prefix(), **{**options, **kwargs})


# -- pause --------------------------------------------------------------------------------------
def test_a_destination_is_paused_after_consecutive_failures_only(client: Any) -> None:
    p = pause(client)
    assert p.failed("refused", now_ms=1_000) == 0
    assert p.failed("refused", now_ms=1_100) == 0
    assert not p.check(now_ms=1_200).paused
    assert p.failed("refused", now_ms=1_200) == 6_200  # the third pauses it for one interval
    status = p.status()
    assert status.paused and status.reason == "refused" and status.since_ms == 1_200


def test_an_answer_between_failures_resets_the_count(client: Any) -> None:
    p = pause(client)
    p.failed("refused", now_ms=1_000)
    p.failed("refused", now_ms=1_100)
    verdict = p.check(now_ms=1_150)
    assert verdict.failures == 2
    p.succeeded(verdict)
    assert p.failed("refused", now_ms=1_200) == 0
    assert p.failed("refused", now_ms=1_300) == 0


def test_while_paused_one_caller_per_interval_probes_and_the_rest_wait(client: Any) -> None:
    p = pause(client)
    for at in (0, 1, 2):
        p.failed("503", now_ms=at)
    waiting = p.check(now_ms=4_000)
    assert waiting.paused and not waiting.probe and waiting.wait_until_ms == 5_002
    # At the probe time, exactly one of many concurrent callers is let through.
    verdicts = [p.check(now_ms=5_002 + i) for i in range(10)]
    probes = [v for v in verdicts if v.probe]
    assert len(probes) == 1 and verdicts[0].probe
    assert all(v.wait_until_ms == 10_002 for v in verdicts[1:])
    # The probe failed: paused one more interval from then.
    assert p.failed("503", now_ms=5_100) == 10_100
    assert p.status().probes == 1


def test_a_probe_that_gets_an_answer_ends_the_pause(client: Any) -> None:
    p = pause(client)
    for at in (0, 1, 2):
        p.failed("503", now_ms=at)
    probe = p.check(now_ms=6_000)
    assert probe.probe
    p.succeeded(probe)
    assert not p.status().paused
    after = p.check(now_ms=6_001)
    assert not after.paused and after.failures == 0


def test_a_configuration_error_pauses_at_once_for_the_longer_interval(client: Any) -> None:
    p = pause(client)
    assert p.pause_now("login refused", now_ms=1_000) == 61_000
    assert p.check(now_ms=30_000).wait_until_ms == 61_000
    assert p.check(now_ms=61_000).probe
    assert p.check(now_ms=61_001).wait_until_ms == 121_000  # the next probe keeps its interval


# -- shared token -------------------------------------------------------------------------------
class Logins:
    """A login function that counts its calls and can be told to refuse."""

    def __init__(self, lifetime_ms: int = 0) -> None:
        self.calls = 0
        self.refuse = False
        self.lifetime_ms = lifetime_ms
        self.seen_stale: list[Token | None] = []
        self.entered = threading.Event()
        self.release = threading.Event()
        self.release.set()

    def __call__(self, stale: Token | None) -> Token:
        self.entered.set()
        assert self.release.wait(5)
        self.calls += 1
        self.seen_stale.append(stale)
        if self.refuse:
            raise LoginFailed("refused: check CONTACTSYNC_X__PASSWORD")
        refresh_at = 0
        if self.lifetime_ms:
            import time

            refresh_at = int(time.time() * 1000) + self.lifetime_ms
        return Token(f"tok-{self.calls}", {"n": str(self.calls)}, refresh_at)


def test_the_first_get_logs_in_and_later_gets_reuse_the_token(client: Any) -> None:
    logins = Logins()
    shared = SharedToken(client, "x", logins, prefix=fresh_prefix())
    first = shared.get()
    assert first.value == "tok-1" and first.data == {"n": "1"}
    other_process = SharedToken(client, "x", Logins(), prefix=shared._key.split("token:")[0])
    assert other_process.get() == first
    assert logins.calls == 1 and shared.logins() == 1


def test_a_refused_token_is_refreshed_once_by_many_threads(client: Any) -> None:
    logins = Logins()
    prefix = fresh_prefix()
    workers = [SharedToken(client, "x", logins, prefix=prefix) for _ in range(8)]
    stale = workers[0].get()
    logins.release.clear()  # hold the refreshing login until every thread is asking
    results: list[Token] = []

    def refresh(shared: SharedToken) -> None:
        results.append(shared.refresh(stale))

    threads = [threading.Thread(target=refresh, args=(w,)) for w in workers]
    for thread in threads:
        thread.start()
    assert logins.entered.wait(5)
    logins.release.set()
    for thread in threads:
        thread.join(10)
    assert {t.value for t in results} == {"tok-2"}
    assert logins.calls == 2 and workers[0].logins() == 2
    assert logins.seen_stale[1] == stale  # the login was told which token was refused


def test_refreshing_a_token_already_replaced_does_not_log_in_again(client: Any) -> None:
    logins = Logins()
    shared = SharedToken(client, "x", logins, prefix=fresh_prefix())
    stale = shared.get()
    newer = shared.refresh(stale)
    assert shared.refresh(stale) == newer  # a late worker with the old token
    assert logins.calls == 2


def test_a_token_due_for_renewal_is_renewed_before_use(client: Any) -> None:
    logins = Logins(lifetime_ms=-1)  # already due
    shared = SharedToken(client, "x", logins, prefix=fresh_prefix())
    assert shared.get().value == "tok-1"
    assert shared.get().value == "tok-2"


def test_a_refused_login_raises_caches_no_token_and_answers_for_a_while(client: Any) -> None:
    logins = Logins()
    logins.refuse = True
    shared = SharedToken(client, "x", logins, prefix=fresh_prefix())
    with pytest.raises(LoginFailed, match="CONTACTSYNC_X__PASSWORD"):
        shared.get()
    logins.refuse = False
    with pytest.raises(LoginFailed, match="CONTACTSYNC_X__PASSWORD"):
        shared.get()  # within REFUSAL_MEMORY_S: the same answer, no second login
    assert logins.calls == 1
    assert 0 < client.pttl(shared._refused_key) <= REFUSAL_MEMORY_S * 1000
    client.delete(shared._refused_key)  # as if REFUSAL_MEMORY_S had passed
    assert shared.get().value == "tok-2"


def test_a_refused_login_is_tried_once_and_every_waiting_thread_takes_its_answer(
    client: Any,
) -> None:
    logins = Logins()
    logins.refuse = True
    logins.release.clear()  # hold the login until every thread is asking
    prefix = fresh_prefix()
    workers = [SharedToken(client, "x", logins, prefix=prefix) for _ in range(8)]
    refused: list[str] = []

    def ask(shared: SharedToken) -> None:
        with pytest.raises(LoginFailed) as caught:
            shared.get()
        refused.append(str(caught.value))

    threads = [threading.Thread(target=ask, args=(w,)) for w in workers]
    for thread in threads:
        thread.start()
    assert logins.entered.wait(5)
    logins.release.set()
    for thread in threads:
        thread.join(10)
    assert logins.calls == 1
    assert refused == ["refused: check CONTACTSYNC_X__PASSWORD"] * 8


def test_a_token_never_shows_in_its_repr() -> None:
    assert "secret-value" not in repr(Token("secret-value"))


def test_a_claim_answers_the_pause_check_of_the_first_call_in_its_own_step(client: Any) -> None:
    """The claim script checks the destination's pause (pause_lib.lua) and hands the verdict to
    the first call: the same answers as ``Pause.check``, a probe taken at most once."""
    from tests.test_ledger import new_job
    from worker.dispatch import Template
    from worker.ledger import Ledger, now_ms
    from worker.pause import Verdict

    prefix = fresh_prefix()
    p = Pause(client, "dest", prefix=prefix, after_failures=3, probe_interval_s=5.0)
    ledger = Ledger(client, prefix=prefix)
    for n in range(5):
        ledger.create(new_job(f"j{n}"), Template(f"{prefix}list", '{"job": "@@job@@"}'))

    def first_call(job_id: str) -> Verdict:
        claim = ledger.claim(job_id, f"h/1/{job_id}", pause=p.claim_args)
        assert claim.status == "claimed" and claim.pause is not None
        return p.verdict(*claim.pause)

    p.failed("503")
    assert first_call("j0") == Verdict(failures=1)
    assert ledger.claim("j1", "h/1/j1").pause is None  # no pause given, none checked
    p.failed("503")
    until = p.failed("503")
    assert first_call("j2") == Verdict(paused=True, wait_until_ms=until)
    client.hset(f"{prefix}pause:dest", "until_ms", now_ms() - 1)  # the probe is due
    assert first_call("j3").probe
    assert not first_call("j4").probe  # one probe an interval
    assert p.status().probes == 1
