"""Order per entity: what the head of an entity's line does with the jobs held behind it.

When a worker claims the head of a line (the only job of its entity that may run), it decides
here, without touching Redis, whether the head is **superseded** (its version is older than one
already delivered for the entity: it is not sent), and which held jobs it **absorbs**: pending
updates of one record become one call carrying the newest value of each field, as long as the
job kind says they may be merged (``JobModel.mergeable``). Jobs whose version is older than one
already delivered are superseded on the way. The ledger then applies the plan atomically
(``Ledger.absorb``).

The fold order is submission order, except where the producer gave versions: a job's place is
its version, and a job without one counts as new as the highest version before it in submission
order; ties go by submission order. So versioned jobs fold oldest version first, and unversioned
ones where they came.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from tasks.models import JobModel, model_for
from worker.codec import unseal
from worker.ledger import HELD, MERGED, SUPERSEDED, Claim, JobRecord, Taken


@dataclass(frozen=True)
class Plan:
    """What the claimed head does. ``superseded``: the reason it is not sent (then nothing else
    applies). Otherwise ``job`` is what to send: the head's own job, or the merge of it and the
    jobs ``taken`` over (``merged``), with the fields below for the ledger."""

    job: JobModel
    superseded: str = ""
    taken: list[Taken] = field(default_factory=list)
    version: tuple[str, str, str] = ("", "", "")
    carried: str = ""
    newest: tuple[int, str] = (0, "")
    priority: str = ""
    retry_until_ms: int = 0

    @property
    def absorbs(self) -> bool:
        return bool(self.taken)


def older_than_delivered(record: JobRecord, claim: Claim) -> str:
    """Why ``record`` must not be sent (its version is older than the highest one delivered for
    its entity), or '' if it may. An operator's forced requeue is sent regardless."""
    if not record.vkey or not claim.delivered_vkey or record.force:
        return ""
    if record.vkey >= claim.delivered_vkey:
        return ""
    return (
        f"version {record.version} is older than the version job {claim.delivered_by} "
        "already delivered for the same record; not sent"
    )


def plan(
    head: JobRecord, job: JobModel, claim: Claim, held: list[JobRecord | None], coalesce: bool
) -> Plan:
    """Decide for the claimed ``head`` (its job ``job``), given the jobs ``held`` behind it in
    its line (oldest first, as read; None for a record that vanished) and whether its
    destination coalesces."""
    stale = older_than_delivered(head, claim)
    if stale:
        return Plan(job, superseded=stale)
    group, taken, merged_so_far = _take(head, job, claim, held if coalesce else [])
    if not group:
        return Plan(job, taken=taken)
    parts = _parts_of(head, job) + [Part(r.vkey, r.seq, j) for r, j in group]
    versioned = any(part.vkey for part in parts)
    folded = _fold(parts) if versioned else merged_so_far
    # Validated again as a stored payload is: a merge must not smuggle in what a job may not be.
    folded = type(folded).model_validate_json(folded.model_dump_json())
    everyone = [head, *(record for record, _ in group)]
    top_version = max(everyone, key=lambda record: (record.vkey, record.seq))
    newest = max(everyone, key=lambda record: record.newest_seq)
    realtime = any(record.priority == "realtime" for record in everyone)
    return Plan(
        folded,
        taken=taken,
        version=(top_version.version, top_version.vkey, top_version.vjob or top_version.id),
        newest=(newest.newest_seq, newest.top_id or newest.id),
        priority="realtime" if realtime and head.priority != "realtime" else "",
        retry_until_ms=max(record.retry_until_ms for record in everyone),
        carried=json.dumps([[p.vkey, p.seq, p.job.model_dump_json()] for p in parts])
        if versioned
        else "",
    )


def _take(
    head: JobRecord, job: JobModel, claim: Claim, held: list[JobRecord | None]
) -> tuple[list[tuple[JobRecord, JobModel]], list[Taken], JobModel]:
    """The jobs held behind ``head`` that it takes over, in order, up to the first it may not
    merge: (those it merges, with their jobs; every job taken, the superseded ones included;
    the merge in submission order)."""
    group: list[tuple[JobRecord, JobModel]] = []
    taken: list[Taken] = []
    merged_so_far = job
    for record in held:
        if record is None or record.state != HELD or record.destination != head.destination:
            break
        stale = older_than_delivered(record, claim)
        if stale:
            taken.append(Taken(record.id, SUPERSEDED, claim.delivered_by, stale))
            continue
        try:
            newer = model_for(record.kind).model_validate_json(unseal(record.payload))
        except ValueError:  # PayloadKeyError included
            break  # it runs alone and is rejected with its own reason
        if not merged_so_far.mergeable(newer):
            break
        merged_so_far = merged_so_far.merge(newer)
        group.append((record, newer))
        taken.append(
            Taken(
                record.id,
                MERGED,
                head.id,
                f"merged into job {head.id}, which "
                "carries its changes in one call with the jobs before it",
            )
        )
    return group, taken, merged_so_far


@dataclass(frozen=True)
class Part:
    """One job's own changes in a merge: its version's sort key ('' for none), its submission
    number, and the job as it was submitted."""

    vkey: str
    seq: int
    job: JobModel


def _parts_of(head: JobRecord, job: JobModel) -> list[Part]:
    """The jobs a head carries, each as it was submitted: once versions are involved, a merged
    payload alone cannot be merged again correctly (a field it took from version 36 must lose
    to version 39 arriving later, though the payload as a whole says 40), so the head keeps the
    parts (``carried``) and every merge folds them all again."""
    if not head.carried:
        return [Part(head.vkey, head.seq, job)]
    model = type(job)
    return [
        Part(vkey, seq, model.model_validate_json(payload))
        for vkey, seq, payload in json.loads(unseal(head.carried))
    ]


def _fold(parts: list[Part]) -> JobModel:
    """Merge ``parts`` oldest version first; see the module's docstring."""
    placed = []
    highest = ""
    for part in sorted(parts, key=lambda p: p.seq):
        highest = max(highest, part.vkey)
        placed.append(((part.vkey or highest, part.seq), part.job))
    placed.sort(key=lambda item: item[0])
    folded = placed[0][1]
    for _, job in placed[1:]:
        folded = folded.merge(job)
    return folded
