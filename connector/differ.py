"""The differ: which records of a page are real changes. Pure: no I/O, no clock."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence

from connector.mapping import Mapped
from state.polls import Snapshot, SnapshotWrite


def latest_per_key(records: Sequence[Mapped]) -> list[Mapped]:
    """One record per key; when a page repeats a key, the most recently updated (then last) wins."""
    chosen: dict[str, Mapped] = {}
    for record in records:
        held = chosen.get(record.key)
        if held is None or held.updated is None or record.updated is None or record.updated >= held.updated:
            chosen[record.key] = record
    return list(chosen.values())


def diff(records: Sequence[Mapped], known: Mapping[str, Snapshot]) -> list[SnapshotWrite]:
    """Compare records with their snapshots: a new hash (or a comeback after delete) is a change."""
    writes = []
    for record in records:
        snapshot = known.get(record.key)
        if snapshot is not None and snapshot.hash == record.hash and not snapshot.deleted:
            writes.append(SnapshotWrite(record.key, record.hash, snapshot.version, record.record, record.updated, None))
            continue
        version = snapshot.version + 1 if snapshot else 1
        writes.append(SnapshotWrite(record.key, record.hash, version, record.record, record.updated, "upsert"))
    return writes


def deletions(vanished: Sequence[tuple[str, int, dict]]) -> list[SnapshotWrite]:
    """Delete changes for records a full scan no longer found; data is the last known record."""
    return [
        SnapshotWrite(key, _deleted_hash(key), version + 1, payload, None, "delete")
        for key, version, payload in vanished
    ]


def _deleted_hash(key: str) -> str:
    return hashlib.sha256(f"deleted:{key}".encode()).hexdigest()
