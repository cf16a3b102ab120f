"""The spill file: entries round-trip, a replay cut short resumes where it stopped (nothing
stored twice), and two processes on one data directory never replay the same file."""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path

from qwen_gateway.store.audit import AuditEntry
from qwen_gateway.store.spill import Entry, SpillFile
from store.helpers import usage


async def test_a_replay_cut_short_resumes_where_it_stopped(tmp_path: Path) -> None:
    spill = SpillFile(tmp_path / "spill.jsonl")
    audit = AuditEntry(datetime.now(UTC), "key.create", "cli", "key:1", None, {"n": [1, "x"]})
    entries: list[Entry] = [usage(f"r{i}") for i in range(10)]
    spill.append([*entries, audit])
    got: list[Entry] = []

    async def down_after_two_batches(batch: list[Entry]) -> list[Entry]:
        if len(got) >= 6:
            return batch
        got.extend(batch)
        return []

    assert await spill.replay(down_after_two_batches, 3) == (6, False)
    later = usage("r10")
    spill.append([later])  # a new file: the one being replayed is not appended to

    async def up(batch: list[Entry]) -> list[Entry]:
        got.extend(batch)
        return []

    assert await spill.replay(up, 3) == (6, True)
    # the batch the database refused was spilled again, behind the rest of its file
    assert got == [*entries[:6], entries[9], audit, *entries[6:9], later]
    assert not spill.pending and not os.listdir(tmp_path)


async def test_two_processes_never_replay_the_same_file(tmp_path: Path) -> None:
    mine, theirs = SpillFile(tmp_path / "spill.jsonl"), SpillFile(tmp_path / "spill.jsonl")
    mine.append([usage(f"r{i}") for i in range(4)])
    got: list[Entry] = []

    async def store(batch: list[Entry]) -> list[Entry]:
        assert await theirs.replay(store, 2) == (0, True)  # it is locked while we replay it
        got.extend(batch)
        return []

    assert await mine.replay(store, 2) == (4, True)
    assert [e.request_id for e in got if not isinstance(e, AuditEntry)] == [
        f"r{i}" for i in range(4)
    ]
    assert await theirs.replay(store, 2) == (0, True)


async def test_a_batch_stored_in_part_is_never_stored_twice(tmp_path: Path) -> None:
    spill = SpillFile(tmp_path / "spill.jsonl")
    spill.append([usage(f"r{i}") for i in range(4)])
    got: list[Entry] = []

    async def first_row_then_down(batch: list[Entry]) -> list[Entry]:
        got.append(batch[0])  # the database went away after the first row of the batch
        return batch[1:]

    assert await spill.replay(first_row_then_down, 4) == (1, False)

    async def up(batch: list[Entry]) -> list[Entry]:
        got.extend(batch)
        return []

    assert await spill.replay(up, 4) == (3, True)
    assert sorted(e.request_id for e in got if not isinstance(e, AuditEntry)) == [
        f"r{i}" for i in range(4)
    ]
