"""Giving back the table of a dict that shrank a lot.

CPython never shrinks a dict's hash table when entries are deleted: after 10k connections close, the
connection table and the per-connection dispatch table stay sized for 10k (about 70 bytes per entry ever
held) for as long as the agent runs. ``TableCompactor.check`` rebuilds the dict in place (same object:
others keep referring to it) once it holds a quarter of what it grew to.
"""

from __future__ import annotations

from typing import Any

__all__ = ["MIN_PEAK", "TableCompactor"]

#: Below this many entries at its peak, a table is small enough to keep as it is.
MIN_PEAK = 4096


class TableCompactor:
    def __init__(self, table: dict[Any, Any], min_peak: int = MIN_PEAK) -> None:
        self.table = table
        self.min_peak = min_peak
        self.peak = len(table)
        self.compactions = 0

    def check(self) -> bool:
        """Call now and then (the idle sweep does): notes the peak, rebuilds once down to a quarter of it.
        True when it rebuilt. Order is kept (an OrderedDict stays in least-recently-active order)."""
        n = len(self.table)
        if n > self.peak:
            self.peak = n
            return False
        if self.peak < self.min_peak or n * 4 > self.peak:
            return False
        items = list(self.table.items())
        self.table.clear()  # frees the table; update() below sizes a new one for what is left
        self.table.update(items)
        self.peak = n
        self.compactions += 1
        return True
