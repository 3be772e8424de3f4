"""Versioned values for the replicated (global) tables: a replica never goes back to an older value.

Every worker holds a copy of the item rows, and learns other workers' writes by reading the tables'
changelogs. A worker also reads back its own writes (Faust keeps consuming the changelog partitions of
a global table), and those arrive after the row may have been written again: applying them would
roll the row back, and the next update applied on top would lose the one in between. So each stored
value carries a version, one more than the value it replaces, and a changelog record is applied only
when its version is newer than the copy's (`is_newer`): echoes and stale records are ignored, other
workers' writes and records a replica has not seen yet are applied, in any order of arrival.

Each key has one writer at a time (the owner of its partition); a new owner after a rebalance or a
crash starts from the restored value, so versions keep increasing across owners.

`Versioned` is the logic's view of such a table: it reads and writes plain values and keeps the
stored form `[version, value]` to itself; rows that absorb clicks store `[version, value, applied]`
(streams.recommend.dedup) and are written with `put`.
"""

from __future__ import annotations

from collections.abc import Iterator, MutableMapping
from typing import Any

from streams.recommend.dedup import Applied, decode_applied
from streams.recommend.errors import CorruptState


def version_of(stored: Any) -> int:
    if stored is None:
        return 0
    if (
        not isinstance(stored, list | tuple)
        or len(stored) not in (2, 3)
        or not isinstance(stored[0], int)
        or isinstance(stored[0], bool)
    ):
        raise CorruptState(
            f"a replicated table value must be [version, value(, applied)], got {type(stored).__name__}"
        )
    return int(stored[0])


def is_newer(incoming: Any, current: Any) -> bool:
    """Whether a changelog record's stored value replaces the copy's (a deletion always does)."""
    if incoming is None or current is None:
        return True
    return version_of(incoming) > version_of(current)


class Versioned(MutableMapping[str, Any]):
    """Plain values over a table that stores `[version, value]`."""

    def __init__(self, table: MutableMapping[str, Any]) -> None:
        self.table = table

    def __getitem__(self, key: str) -> Any:
        stored = self.table[key]
        version_of(stored)
        return stored[1]

    def get(self, key: str, default: Any = None) -> Any:
        stored = self.table.get(key)
        if stored is None:
            return default
        version_of(stored)
        return stored[1]

    def __setitem__(self, key: str, value: Any) -> None:
        # Assigning (not mutating in place) is what writes the table's changelog.
        self.table[key] = [version_of(self.table.get(key)) + 1, value]

    def applied(self, key: str) -> Applied:
        """The clicks the stored value has absorbed (streams.recommend.dedup)."""
        stored = self.table.get(key)
        version_of(stored)
        return decode_applied(stored[2]) if stored is not None and len(stored) == 3 else {}

    def put(self, key: str, value: Any, applied: Applied) -> None:
        """Write the value together with the clicks it has absorbed, in one record."""
        self.table[key] = [version_of(self.table.get(key)) + 1, value, applied]

    def __delitem__(self, key: str) -> None:
        del self.table[key]

    def __contains__(self, key: object) -> bool:
        return key in self.table

    def __iter__(self) -> Iterator[str]:
        return iter(self.table)

    def __len__(self) -> int:
        return len(self.table)
