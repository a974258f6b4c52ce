"""Backfills from files: columns to fields, rejects, run ids and checkpoints on fakeredis; then
the real thing (Valkey, a worker, the Noojee simulator): rejects, a killed run resumed, and the
queue held under its cap."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import fakeredis
import pytest

from producers.backfill import (
    Backfill,
    BackfillError,
    BackfillProgress,
    BackfillResult,
    checkpoint_key,
    resolve_kind,
    run,
    run_id_of,
)
from tests.conftest import PERSONAL_VALUES, Simulator, new_lead_id, run_cli, wait_for
from worker.ledger import Ledger, job_id_for

NOOJEE = {"template_id": "41", "campaign_id": "41", "allocation_id": "38", "disposition": "Sale"}
SET_NOOJEE = [arg for name, value in NOOJEE.items() for arg in ("--set", f"{name}={value}")]


def write_csv(path: Path, header: list[str], rows: list[list[str]]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def lead_rows(leads: list[str]) -> list[list[str]]:
    return [[lead, "0383218199", "Jane Smith"] for lead in leads]


def leads_csv(path: Path, leads: list[str]) -> Path:
    """A file of Noojee updates, one valid row per lead, for ``--set`` NOOJEE to complete."""
    return write_csv(path, ["external_lead_id", "FirstPhone", "Name"], lead_rows(leads))


def rejects_of(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


@pytest.fixture
def book(monkeypatch: pytest.MonkeyPatch) -> Ledger:
    """The process's ledger (and so ``enqueue``'s), on fakeredis."""
    import importlib

    from worker.settings import get_settings

    ledger = Ledger(fakeredis.FakeRedis(decode_responses=True), prefix=get_settings().key_prefix)
    monkeypatch.setattr("worker.runtime.ledger", lambda: ledger)
    # ``producers.submit`` the attribute is the function; the module is the one to patch.
    monkeypatch.setattr(importlib.import_module("producers.submit"), "ledger", lambda: ledger)
    return ledger


def payload(book: Ledger, result: BackfillResult, row: int) -> dict[str, Any]:
    destination = result.kind.partition(".")[0]
    record = book.get(job_id_for(destination, f"backfill:{result.run_id}:{row}"))
    assert record is not None, f"no job for row {row}"
    return dict(json.loads(record.payload))


# -- unit: no server ----------------------------------------------------------------------------
def test_csv_columns_name_fields_by_name_alias_mapping_or_as_noojee_lead_fields(
    tmp_path: Path, book: Ledger
) -> None:
    path = write_csv(
        tmp_path / "leads.csv",
        ["Lead", "njDisposition", "priority", "FirstPhone", "fields.Name", "Note"],
        [
            ["L-1", "Callback", "7", "0383218199", "Jane Smith", "ignored"],
            ["L-2", "Sale", "", "0399990000", "", ""],
        ],
    )
    result = run(
        Backfill(
            path,
            "noojee.update",
            mapping={"Lead": "external_lead_id", "Note": None},
            constants={
                "fTemplateId": "41",
                "campaign_id": "41",
                "allocation_id": "38",
                "Source": "backfill",
            },
            max_queue_depth=0,
        )
    )

    assert (result.rows_read, result.enqueued, result.rejected) == (2, 2, 0)
    first = payload(book, result, 2)
    assert first["external_lead_id"] == "L-1" and first["disposition"] == "Callback"
    assert (first["template_id"], first["campaign_id"], first["priority"]) == (41, 41, 7)
    assert first["fields"] == {
        "FirstPhone": "0383218199",
        "Name": "Jane Smith",
        "Source": "backfill",
    }
    second = payload(book, result, 3)  # empty cells are left out
    assert second["priority"] is None
    assert second["fields"] == {"FirstPhone": "0399990000", "Source": "backfill"}


def test_empty_cells_are_left_out_so_a_required_field_left_empty_is_rejected(
    tmp_path: Path,
) -> None:
    path = write_csv(
        tmp_path / "leads.csv",
        ["external_lead_id", "disposition", "FirstPhone"],
        [["L-1", "Sale", "0383218199"], ["L-2", "", "0383218199"]],
    )
    constants = {k: v for k, v in NOOJEE.items() if k != "disposition"}
    result = run(Backfill(path, "noojee.update", constants=constants, dry_run=True))
    assert (result.rows_read, result.rejected) == (2, 1)
    assert rejects_of(tmp_path / "leads.csv.rejects.csv") == [
        {"row": "3", "field": "disposition", "reason": "Field required"}
    ]


def test_trendsic_cells_become_the_strict_numbers_and_booleans_its_model_takes(
    tmp_path: Path, book: Ledger
) -> None:
    path = write_csv(
        tmp_path / "contacts.csv",
        ["contact_id", "contact.Phone", "contact.DoNotContact", "contact.Rate"],
        [["1234", "0383218199", "false", "2.5"]],
    )
    result = run(Backfill(path, "trendsic", constants={"agent_id": "7"}, max_queue_depth=0))
    assert (result.kind, result.enqueued, result.rejected) == ("trendsic.contact_connection", 1, 0)
    assert payload(book, result, 2) == {
        "contact_id": 1234,
        "agent_id": 7,
        "contact": {"Phone": "0383218199", "DoNotContact": False, "Rate": 2.5},
    }


def test_unknown_column_stops_the_backfill_before_any_row_naming_it_and_the_fields(
    tmp_path: Path,
) -> None:
    path = write_csv(
        tmp_path / "contacts.csv",
        ["contact_id", "agent_id", "contact.Phon"],
        [["not-a-number", "x", "0383218199"]] * 3,
    )
    with pytest.raises(BackfillError) as refused:
        run(Backfill(path, "trendsic", dry_run=True))
    message = str(refused.value)
    assert "column 'contact.Phon' is not a field of trendsic.contact_connection" in message
    assert "did you mean contact.Phone?" in message
    assert "contact_id, agent_id, contact.ContactId" in message  # the valid fields, listed
    assert "0383218199" not in message
    assert not (tmp_path / "contacts.csv.rejects.csv").exists()  # no row was read


def test_a_column_and_a_set_for_the_same_field_or_a_missing_required_field_stop_at_start(
    tmp_path: Path,
) -> None:
    path = write_csv(
        tmp_path / "leads.csv",
        ["external_lead_id", "template_id", "FirstPhone"],
        lead_rows(["L-1"]),
    )
    with pytest.raises(BackfillError, match="column 'template_id' and --set template_id both"):
        run(Backfill(path, "noojee.update", constants=NOOJEE, dry_run=True))
    with pytest.raises(BackfillError, match=r"no column gives campaign_id \(fCampaignId\)"):
        run(Backfill(path, "noojee.update", dry_run=True))
    with pytest.raises(BackfillError, match=r"the mapping names column\(s\) Mobile"):
        run(Backfill(path, "noojee.update", mapping={"Mobile": "FirstPhone"}, dry_run=True))


def test_a_destination_with_several_kinds_needs_kind_and_the_error_lists_them() -> None:
    assert resolve_kind("noojee", "insert") == resolve_kind("noojee.insert") == "noojee.insert"
    assert resolve_kind("missioncapital") == "missioncapital.contact_user"
    with pytest.raises(BackfillError, match=r"--kind \(insert, update\)"):
        resolve_kind("noojee")
    with pytest.raises(BackfillError, match="its actions are insert, update"):
        resolve_kind("noojee", "delete")
    with pytest.raises(BackfillError, match="the destinations are expandable, missioncapital"):
        resolve_kind("salesforce")


def test_rejects_file_has_spreadsheet_rows_fields_and_reasons_but_never_the_values(
    tmp_path: Path,
) -> None:
    path = tmp_path / "leads.csv"
    path.write_text(
        "external_lead_id,FirstPhone,Name\n"
        "L-1,0383218199,Jane Smith\n"  # row 2
        'L-2,jane.smith@example.com,"Jane\nSmith"\n'  # row 3, spanning two lines of the file
        "\n"  # row 4: blank, skipped
        ",0383218199,Jane Smith\n"  # row 5
        "L-6,0383218199,Jane Smith,surplus\n",  # row 6
        encoding="utf-8",
    )
    constants = {
        "template_id": "41",
        "campaign_id": "0",
        "allocation_id": "38",
        "disposition": "Sale",
    }
    result = run(Backfill(path, "noojee.update", constants=constants, dry_run=True))

    rejects = tmp_path / "leads.csv.rejects.csv"
    assert (result.rejects_path, result.rows_read, result.rejected) == (rejects, 4, 4)
    rows = rejects_of(rejects)
    assert [(r["row"], r["field"]) for r in rows] == [
        ("2", "campaign_id"),
        ("3", "campaign_id"),
        ("3", "fields"),
        ("5", "campaign_id"),
        ("5", "external_lead_id"),
        ("6", "(row)"),
    ]
    assert rows[2]["reason"].startswith("FirstPhone: not a phone number")
    assert rows[5]["reason"] == "4 cells, but the header names 3 columns"
    text = rejects.read_text()
    assert not any(value in text for value in (*PERSONAL_VALUES, "surplus"))


def test_jsonl_rows_are_lines_and_a_line_that_is_not_an_object_is_rejected(
    tmp_path: Path, book: Ledger
) -> None:
    good = {
        "template_id": 41,
        "campaign_id": 41,
        "allocation_id": 38,
        "Lead": "L-1",
        "fields": {"FirstPhone": "0383218199"},
        "Old": "x",
    }
    path = tmp_path / "leads.ndjson"
    path.write_text("\n".join([json.dumps(good), "[1, 2]", '{"cut', "", json.dumps(good)]) + "\n")
    result = run(
        Backfill(
            path,
            "noojee.update",
            mapping={"Lead": "external_lead_id", "Old": ""},
            constants={"disposition": "Sale"},
            max_queue_depth=0,
        )
    )

    assert (result.rows_read, result.enqueued, result.rejected) == (4, 2, 2)
    assert payload(book, result, 5)["external_lead_id"] == "L-1"
    assert payload(book, result, 1)["disposition"] == "Sale"
    rows = rejects_of(tmp_path / "leads.ndjson.rejects.csv")
    assert [(r["row"], r["field"]) for r in rows] == [("2", "(line)"), ("3", "(line)")]
    assert rows[0]["reason"].startswith("not a JSON object")
    assert rows[1]["reason"].startswith("not valid JSON")


def test_no_rejects_file_is_left_behind_when_every_row_is_valid(tmp_path: Path) -> None:
    path = leads_csv(tmp_path / "leads.csv", ["L-1", "L-2"])
    stale = tmp_path / "leads.csv.rejects.csv"
    stale.write_text("row,field,reason\n2,x,from an earlier run\n")
    result = run(Backfill(path, "noojee.update", constants=NOOJEE, dry_run=True))
    assert (result.rejected, result.rejects_path) == (0, None)
    assert not stale.exists()


def test_dry_run_validates_and_reports_but_sends_no_redis_command(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import redis

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("a dry run used Redis")

    monkeypatch.setattr(redis.Redis, "execute_command", refuse)
    monkeypatch.setattr(redis.client.Pipeline, "execute", refuse)
    path = write_csv(
        tmp_path / "leads.csv",
        ["external_lead_id", "FirstPhone", "Name"],
        [*lead_rows(["L-1", "L-2"]), ["L-3", "nope", ""]],
    )
    seen: list[str] = []
    result = run(
        Backfill(path, "noojee.update", constants=NOOJEE, dry_run=True),
        progress=lambda p: seen.append(p.phase),
    )
    assert (result.dry_run, result.rows_read, result.enqueued, result.rejected) == (True, 3, 0, 1)
    assert result.rows_per_s > 0 and result.jobs == {}
    assert seen[0] == "hashing" and "reading" in seen and seen[-1] == "done"


def test_dry_run_command_works_with_no_redis_configured_and_exits_1_on_rejects(
    tmp_path: Path,
) -> None:
    path = write_csv(
        tmp_path / "leads.csv",
        ["external_lead_id", "FirstPhone", "Name"],
        [*lead_rows(["L-1"]), ["L-2", "nope", "Jane Smith"]],
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONTACTSYNC_")}
    env.update(CONTACTSYNC_DATA_DIR=str(tmp_path / "no-server-here"), COLUMNS="250")
    args = ("backfill", str(path), "-d", "noojee", "--kind", "update", *SET_NOOJEE, "--dry-run")
    done = run_cli(*args, cwd=tmp_path, env=env)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "rows read  2" in done.stdout and "rejected   1" in done.stdout
    assert "nothing was sent" in done.stdout and "Jane Smith" not in done.stdout
    assert run_cli(*args[:-3], "--dry-run", cwd=tmp_path, env=env).returncode == 2  # no --set
    unknown = run_cli("backfill", str(path), "-d", "dialer", "--dry-run", cwd=tmp_path, env=env)
    assert unknown.returncode == 2 and "unknown destination 'dialer'" in unknown.stdout


def test_run_id_is_the_same_for_the_same_file_and_changes_with_bytes_kind_mapping_or_set(
    tmp_path: Path,
) -> None:
    path = write_csv(
        tmp_path / "leads.csv", ["external_lead_id", "FirstPhone"], [["L-1", "0383218199"]]
    )
    first = run_id_of(path, "noojee.update", {}, NOOJEE)
    assert len(first) == 16 and int(first, 16) >= 0
    assert run_id_of(path, "noojee.update", {}, dict(reversed(NOOJEE.items()))) == first
    copy = tmp_path / "copy.csv"
    copy.write_bytes(path.read_bytes())
    assert run_id_of(copy, "noojee.update", {}, NOOJEE) == first  # the bytes, not the name
    assert run_id_of(path, "noojee.insert", {}, NOOJEE) != first
    assert run_id_of(path, "noojee.update", {"x": None}, NOOJEE) != first
    assert run_id_of(path, "noojee.update", {}, {**NOOJEE, "campaign_id": "42"}) != first
    path.write_bytes(path.read_bytes().replace(b"L-1", b"L-2"))
    assert run_id_of(path, "noojee.update", {}, NOOJEE) != first


class Interrupted(Exception):
    """Stands for a kill between two chunks."""


def test_a_run_again_sends_no_row_twice_and_checkpoint_and_batch_expire_with_retention(
    tmp_path: Path, book: Ledger
) -> None:
    from worker.settings import get_settings

    path = write_csv(
        tmp_path / "leads.csv",
        ["external_lead_id", "FirstPhone", "Name"],
        [*lead_rows(["L-1", "L-2", "L-3"]), ["L-4", "nope", ""]],
    )
    spec = Backfill(path, "noojee.update", constants=NOOJEE, max_queue_depth=0, chunk_rows=2)
    first = run(spec)
    assert (first.enqueued, first.already_queued, first.rejected) == (3, 0, 1)
    key = checkpoint_key(get_settings().key_prefix, first.run_id)
    checkpoint = book.r.hgetall(key)
    assert (checkpoint["row"], checkpoint["state"], checkpoint["enqueued"]) == (
        "5",
        "finished",
        "3",
    )
    assert checkpoint["kind"] == "noojee.update" and checkpoint["file"] == str(path.resolve())
    retention_s = int(get_settings().retention_days * 86_400)
    assert 0 < book.r.ttl(key) <= retention_s
    assert 0 < book.r.ttl(book.batch_key(first.run_id)) <= retention_s

    notes: list[str] = []
    again = run(spec, note=notes.append)
    assert (again.run_id, again.enqueued, again.already_queued, again.rejected) == (
        first.run_id,
        0,
        3,
        1,
    )
    assert book.batch_counts(first.run_id)["jobs"] == 3 and notes == []


def test_resume_after_an_interruption_skips_the_checkpointed_rows_and_keeps_their_rejects(
    tmp_path: Path, book: Ledger
) -> None:
    path = write_csv(
        tmp_path / "leads.csv",
        ["external_lead_id", "FirstPhone", "Name"],
        [
            *lead_rows(["L-1"]),
            ["L-2", "nope", ""],
            *lead_rows(["L-3", "L-4", "L-5"]),
            ["L-6", "nope", ""],
            *lead_rows(["L-7"]),
        ],
    )
    spec = Backfill(path, "noojee.update", constants=NOOJEE, max_queue_depth=0, chunk_rows=2)
    checkpoints: list[int] = []

    def interrupt_after_the_first_checkpoint(p: BackfillProgress) -> None:
        if p.phase == "reading" and p.last_row:
            checkpoints.append(p.last_row)
            raise Interrupted

    with pytest.raises(Interrupted):
        run(spec, interrupt_after_the_first_checkpoint)
    # Two rows a chunk: rows 2-3 were checkpointed when the callback stopped the run, with rows
    # 4-5 in flight; those were queued anyway, so the run checkpointed them before it stopped.
    assert checkpoints == [3]
    rejects = tmp_path / "leads.csv.rejects.csv"
    with rejects.open("a", newline="") as f:  # a reject written after the checkpoint, then killed
        f.write("6,fields,not phone\r\n")

    notes: list[str] = []
    resumed = run(replace(spec, resume=True), note=notes.append)
    assert notes == ["resuming after row 5: the rows up to it are not read again"]
    assert (resumed.resumed_after, resumed.skipped, resumed.rows_read) == (5, 4, 7)
    assert (resumed.enqueued, resumed.already_queued, resumed.rejected) == (5, 0, 2)
    assert [r["row"] for r in rejects_of(rejects)] == ["3", "7"]
    assert book.batch_counts(resumed.run_id)["jobs"] == 5
    assert book.r.hget(checkpoint_key(book.prefix, resumed.run_id), "state") == "finished"

    checkpoints.clear()
    with pytest.raises(Interrupted):
        run(spec, interrupt_after_the_first_checkpoint)
    again = run(spec, note=notes.append)  # without --resume: from the first row, sending none
    assert "stopped after row 5: --resume skips to it" in notes[-1]
    assert (again.rows_read, again.skipped, again.enqueued, again.already_queued) == (7, 0, 0, 5)


# -- integration: Valkey, a worker, the simulator ---------------------------------------------
def queue_depth(ledger: Any, destination: str = "noojee") -> int:
    from worker.app import app
    from worker.dispatch import queue_key

    return sum(int(ledger.r.llen(queue_key(app, destination, p))) for p in ("realtime", "bulk"))


def calls_by_lead(simulator: Simulator) -> dict[str, int]:
    return dict(simulator.stats()["calls_by_lead"])


@pytest.mark.integration
def test_a_version_column_gives_each_row_its_version_and_a_bad_one_is_a_reject(
    book: Ledger, tmp_path: Path
) -> None:
    path = write_csv(
        tmp_path / "v.csv",
        ["external_lead_id", "FirstPhone", "Seen"],
        [
            ["L1", "0383218199", "7"],
            ["L1", "0383218199", "2026-11-30T09:30:00Z"],
            ["L2", "0383218199", ""],
            ["L3", "0383218199", "last tuesday"],
        ],
    )
    result = run(
        Backfill(path, "noojee.update", constants=NOOJEE, version_column="Seen", max_queue_depth=0)
    )
    assert (result.enqueued, result.rejected) == (3, 1)
    versions = [
        book.get(job_id_for("noojee", f"backfill:{result.run_id}:{row}")).version
        for row in (2, 3, 4)
    ]
    assert versions == ["7", "2026-11-30T09:30:00+00:00", ""]
    assert "Seen" not in payload(book, result, 2)["fields"]  # a version, not a lead field
    [reject] = rejects_of(tmp_path / "v.csv.rejects.csv")
    assert (reject["row"], reject["field"]) == ("5", "Seen (version)")
    assert "RFC 3339" in reject["reason"] and "tuesday" not in reject["reason"]
    with pytest.raises(BackfillError, match="--version-column Nope"):
        run(Backfill(path, "noojee.update", constants=NOOJEE, version_column="Nope", dry_run=True))


def test_backfill_rejects_bad_rows_to_the_file_and_delivers_the_rest_once(
    stack: Any, simulator: Simulator, ledger: Any, tmp_path: Path
) -> None:
    leads = [new_lead_id() for _ in range(30)]
    rows = lead_rows(leads)
    rows[3][1] = "not-a-phone"  # row 5
    rows[10][0] = ""  # row 12: no lead id
    rows[20][1] = "jane.smith@example.com"  # row 22
    path = write_csv(tmp_path / "leads.csv", ["Lead", "Mobile", "Name"], rows)
    (tmp_path / "columns.json").write_text('{"Lead": "external_lead_id", "Mobile": "FirstPhone"}')
    args = (
        "backfill",
        str(path),
        "-d",
        "noojee",
        "--kind",
        "update",
        "--mapping",
        str(tmp_path / "columns.json"),
        *SET_NOOJEE,
    )

    done = run_cli(*args, "--wait")
    assert done.returncode == 1, done.stdout + done.stderr
    assert "enqueued        27" in done.stdout and "rejected        3" in done.stdout
    assert "27 delivered" in done.stdout and "leads.csv.rejects.csv" in done.stdout
    assert not any(value in done.stdout + done.stderr for value in PERSONAL_VALUES)
    rejects = rejects_of(tmp_path / "leads.csv.rejects.csv")
    assert [(r["row"], r["field"]) for r in rejects] == [
        ("5", "fields"),
        ("12", "external_lead_id"),
        ("22", "fields"),
    ]
    calls = calls_by_lead(simulator)
    bad = {leads[3], leads[10], leads[20]}
    assert {lead: calls.get(lead, 0) for lead in leads} == {
        lead: 0 if lead in bad else 1 for lead in leads
    }

    again = run_cli(*args)  # the same file again: every row already queued
    assert again.returncode == 1, again.stdout + again.stderr
    assert "enqueued        0" in again.stdout and "already queued  27" in again.stdout
    assert calls_by_lead(simulator) == calls


@pytest.mark.integration
def test_a_backfill_killed_half_way_and_resumed_delivers_every_row_exactly_once(
    stack: Any, simulator: Simulator, ledger: Any, tmp_path: Path
) -> None:
    from worker.settings import get_settings

    leads = [new_lead_id() for _ in range(300)]
    path = leads_csv(tmp_path / "leads.csv", leads)
    run_id = run_id_of(path, "noojee.update", {}, NOOJEE, "csv")
    key = checkpoint_key(get_settings().key_prefix, run_id)
    args = ["backfill", str(path), "-d", "noojee.update", *SET_NOOJEE]
    # A low cap holds the backfill to the worker's pace: a few seconds for 300 rows.
    killed = subprocess.Popen(
        [sys.executable, "-m", "worker.cli", *args, "--max-queue-depth", "10"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for(
            lambda: int(ledger.r.hget(key, "row") or 0) >= 40,
            30,
            "the backfill to checkpoint 40 rows",
        )
        killed.send_signal(signal.SIGKILL)
    finally:
        killed.kill()
        killed.wait()
    stopped_at = int(ledger.r.hget(key, "row"))
    assert stopped_at < 301 and ledger.r.hget(key, "state") == "running"

    resumed = run_cli(*args, "--resume", "--wait")
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert f"resuming after row {stopped_at}" in resumed.stderr
    counts = ledger.batch_counts(run_id)
    assert (counts["jobs"], counts["delivered"], counts["pending"]) == (300, 300, 0)
    calls = calls_by_lead(simulator)
    assert [calls.get(lead, 0) for lead in leads] == [1] * 300


@pytest.fixture
def noojee_held(stack: Any) -> Iterator[Any]:
    """The worker stops taking Noojee jobs until the test lets it (``release()``)."""
    from worker.app import app

    app.control.cancel_consumer("noojee", reply=True)
    released = threading.Event()

    def release() -> None:
        if not released.is_set():
            released.set()
            app.control.add_consumer("noojee", reply=True)

    try:
        yield release
    finally:
        release()


@pytest.mark.integration
def test_backpressure_pauses_the_backfill_and_keeps_the_queue_under_its_cap(
    stack: Any, ledger: Any, noojee_held: Any, tmp_path: Path
) -> None:
    leads = [new_lead_id() for _ in range(250)]
    path = leads_csv(tmp_path / "leads.csv", leads)
    depths: list[int] = []
    phases: list[str] = []

    def progress(p: BackfillProgress) -> None:
        phases.append(p.phase)
        depths.append(queue_depth(ledger))  # right after each chunk: the fullest it gets

    results: list[BackfillResult] = []
    spec = Backfill(path, "noojee.update", constants=NOOJEE, max_queue_depth=100)
    backfill = threading.Thread(target=lambda: results.append(run(spec, progress)), daemon=True)
    backfill.start()

    def paused_for_a_while() -> bool:
        depths.append(queue_depth(ledger))
        return phases.count("paused") >= 3

    wait_for(paused_for_a_while, 20, "the backfill to pause at its cap")
    assert backfill.is_alive() and not results  # held at the cap, not finished
    assert max(depths) == 100  # filled to the cap, never past it
    noojee_held()

    backfill.join(timeout=60)
    assert results, "the backfill did not finish once the worker consumed again"
    result = results[0]
    assert (result.enqueued, result.rejected) == (250, 0)
    assert result.pauses >= 1 and result.paused_s > 0
    assert max(depths) == 100
    wait_for(
        lambda: ledger.batch_counts(result.run_id)["delivered"] == 250,
        60,
        "every job of the backfill to be delivered",
    )
