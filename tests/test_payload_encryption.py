"""Payload encryption at rest (``worker/codec.py``): sealed and opened at every boundary, keys
rotated without downtime, and through a whole `contactsync up` with a key: no payload field in
plain text anywhere in Redis (SCAN + DUMP of every key), while `review show --reveal`, a
requeue and the delivery still work."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from worker.codec import PREFIX, PayloadCodec, PayloadKeyError, decode_key, new_key

K1, K2 = new_key(), new_key()
PHONE, NAME = "0412345678", "Jane Smith"
PAYLOAD = json.dumps({"fields": {"MobilePhone": PHONE, "Name": NAME}})


def codec(*names: str) -> PayloadCodec:
    keys = {"k1": K1, "k2": K2}
    return PayloadCodec({name: decode_key(keys[name]) for name in names})


def test_a_sealed_payload_shows_nothing_of_the_job_and_opens_again() -> None:
    sealed = codec("k1").seal(PAYLOAD)

    assert sealed.startswith(f"{PREFIX}k1:")
    assert PHONE not in sealed and NAME not in sealed and "MobilePhone" not in sealed
    assert codec("k1").unseal(sealed) == PAYLOAD
    assert codec("k1").seal(PAYLOAD) != sealed  # a fresh nonce each time


def test_without_keys_payloads_pass_through_and_plaintext_is_read_with_keys_on() -> None:
    assert codec().seal(PAYLOAD) == PAYLOAD and not codec().enabled
    assert codec("k1").unseal(PAYLOAD) == PAYLOAD  # written before encryption was turned on


def test_rotation_the_first_key_seals_and_every_key_opens() -> None:
    old = codec("k1").seal(PAYLOAD)
    rotated = codec("k2", "k1")

    assert rotated.unseal(old) == PAYLOAD
    assert rotated.seal(PAYLOAD).startswith(f"{PREFIX}k2:")
    assert not rotated.sealed_with_first(old) and rotated.sealed_with_first(rotated.seal("x"))


def test_a_payload_whose_key_was_dropped_or_that_was_altered_names_the_key_not_the_data() -> None:
    sealed = codec("k1").seal(PAYLOAD)
    with pytest.raises(PayloadKeyError, match="'k1'"):
        codec("k2").unseal(sealed)
    tampered = sealed[:-6] + ("A" if sealed[-6] != "A" else "B") + sealed[-5:]
    with pytest.raises(PayloadKeyError, match="altered"):
        codec("k1").unseal(tampered)


@pytest.mark.parametrize(
    "keys",
    ['{"k1": "c2hvcnQ="}', json.dumps({"k 1": K1}), '["x"]'],
    ids=["short-key", "bad-name", "not-an-object"],  # stable: K1 is new every run
)
def test_bad_payload_keys_are_refused_naming_the_variable_never_the_key(
    keys: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from pydantic import ValidationError

    from worker.settings import Settings, settings_problem

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CONTACTSYNC_PAYLOAD_KEYS", keys)
    with pytest.raises(ValidationError) as refused:
        Settings()
    line = settings_problem(refused.value)
    assert "CONTACTSYNC_PAYLOAD_KEYS" in line
    assert "c2hvcnQ" not in line and K1[:12] not in line


def test_ordering_reads_sealed_payloads_and_sealed_carried_parts(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A merge with versions carries the parts it folded (``carried``), sealed as the payload
    is; the next claim opens both (the v36/v40/v39 story of tests/test_ordering.py, sealed)."""
    from tests.test_ordering import CLAIMED, record, update
    from worker import codec as codec_module

    sealer = codec("k1")
    monkeypatch.setattr(codec_module, "payload_codec", lambda: sealer)

    def sealed(job: Any, job_id: str, seq: int, state: str = "held", **more: Any) -> Any:
        made = record(job, job_id, seq, state, **more)
        made.payload = sealer.seal(made.payload)
        return made

    from tasks.ordering import plan

    head = update(Name="v6")
    first = [
        sealed(update(Title="from-v36"), "f36", 2, version="36", vkey="36".zfill(20)),
        sealed(update(City="from-v40"), "f40", 3, version="40", vkey="40".zfill(20)),
    ]
    stage1 = plan(
        sealed(head, "h", 1, "running", version="6", vkey="6".zfill(20)),
        head,
        CLAIMED,
        first,
        coalesce=True,
    )
    carried = sealer.seal(stage1.carried)  # as the worker stores it (Ledger.absorb)
    assert PHONE not in carried and "from-v36" not in carried
    carrying = sealed(
        stage1.job, "h", 1, "running", version="40", vkey="40".zfill(20), carried=carried
    )
    later = [sealed(update(Title="from-v39"), "f39", 4, version="39", vkey="39".zfill(20))]
    stage2 = plan(carrying, stage1.job, CLAIMED, later, coalesce=True)
    assert stage2.job.fields == {
        "FirstPhone": "0383218199",
        "Name": "v6",  # type: ignore
        "Title": "from-v39",
        "City": "from-v40",
    }


@pytest.mark.integration
def test_reseal_moves_every_stored_payload_to_the_first_key(redis_server: str) -> None:
    from tests.test_ledger import new_job
    from worker.ledger import Ledger
    from worker.payload_store import reseal_all

    ledger = Ledger(redis.Redis.from_url(redis_server, decode_responses=True), prefix="rs:")
    old = codec("k1")
    for n in range(30):
        ledger.create(new_job(f"j{n}", payload=old.seal(PAYLOAD)))
    ledger.r.hset(ledger.job_key("j0"), "carried", old.seal("[]"))

    rotated = codec("k2", "k1")
    first = reseal_all(ledger, rotated)
    again = reseal_all(ledger, rotated)

    assert (first.changed, again.changed, again.kept) == (30, 0, 30)
    records = [ledger.get(f"j{n}") for n in range(30)]
    assert all(r is not None and r.payload.startswith(f"{PREFIX}k2:") for r in records)
    assert codec("k2").unseal(records[0].payload) == PAYLOAD  # type: ignore[union-attr]
    assert codec("k2").unseal(ledger.r.hget(ledger.job_key("j0"), "carried")) == "[]"


# -- the whole system with a key ----------------------------------------------------------------
def dump_everything(url: str) -> bytes:
    """Every key's name and its DUMP, as `redis-cli --scan` and DUMP would show them."""
    client = redis.Redis.from_url(url)
    return b"".join(key + (client.dump(key) or b"") for key in client.scan_iter(count=1000))


@pytest.mark.integration
@pytest.mark.timeout(240)
def test_with_a_key_redis_holds_no_payload_field_in_plain_text_and_everything_still_works(
    tmp_path: Path,
) -> None:
    from tests.conftest import run_cli, wait_for
    from tests.test_up_end_to_end import _env, _start_up, _stop_up

    env = {**_env(tmp_path), "CONTACTSYNC_PAYLOAD_KEYS": json.dumps({"k1": K1})}
    up, output = _start_up(tmp_path, env)
    try:
        intake_line = next(line for line in output.lines if line.startswith("intake"))
        intake_url, token = intake_line.split()[1], intake_line.split()[4]
        noojee = next(line for line in output.lines if line.startswith("noojee")).split()[1]
        state = json.loads((tmp_path / ".contactsync" / "redis" / "embedded.json").read_text())
        auth = {"Authorization": f"Bearer {token}"}
        httpx.post(f"{noojee}/_script", json={"lead": "ENC-1", "codes": [110, 0]})
        job = {
            "kind": "noojee.update",
            "job": {
                "template_id": 41,
                "campaign_id": 41,
                "allocation_id": 38,
                "external_lead_id": "ENC-1",
                "disposition": "Sale",
                "fields": {"MobilePhone": PHONE, "Name": NAME, "Email": "jane@example.com"},
            },
        }
        job_id = httpx.post(f"{intake_url}/v1/jobs", json=job, headers=auth).json()["job_id"]

        def state_of(wanted: str) -> bool:
            shown = httpx.get(f"{intake_url}/v1/jobs/{job_id}", headers=auth).json()
            return bool(shown["state"] == wanted)

        wait_for(lambda: state_of("review"), 60, "the job to reach review")
        everything = dump_everything(state["url"])
        stored = redis.Redis.from_url(state["url"]).hget(f"cs:job:{job_id}", "payload")
        assert stored is not None and stored.startswith(PREFIX.encode())
        for value in (PHONE, NAME, "jane@example.com", "MobilePhone", "Sale"):
            assert value.encode() not in everything, value

        revealed = run_cli("review", "show", job_id, "--reveal", cwd=tmp_path, env=env)
        assert PHONE in revealed.stdout and NAME in revealed.stdout, revealed.stdout
        shown = httpx.get(f"{intake_url}/v1/jobs/{job_id}", headers=auth).json()
        assert shown["payload"]["fields"]["MobilePhone"] == "0***78"

        requeued = run_cli(
            "review", "requeue", job_id, "--set", "disposition=Callback", cwd=tmp_path, env=env
        )
        assert requeued.returncode == 0, requeued.stdout + requeued.stderr
        wait_for(lambda: state_of("delivered"), 60, "the requeued job to be delivered")
        lead = httpx.get(f"{noojee}/_leads/ENC-1").json()
        assert (lead["MobilePhone"], lead["njDisposition"]) == (PHONE, "Callback")
    finally:
        _stop_up(up)
