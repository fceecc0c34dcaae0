"""TableCompactor: a dict down to a quarter of its peak is rebuilt in place (same object, same order, a
smaller table), small or still-full tables are left alone."""

from __future__ import annotations

import sys
from collections import OrderedDict

from qtap_async.buffers.compact import TableCompactor


def test_a_table_emptied_to_a_quarter_is_rebuilt_in_place_in_order() -> None:
    table: OrderedDict[int, str] = OrderedDict((i, f"c{i}") for i in range(10000))
    alias = table  # as Enrich holds the connection table
    t = TableCompactor(table)
    assert not t.check() and t.peak == 10000
    for i in range(10000):
        if i % 50:
            del table[i]
    table.move_to_end(0)  # least-recently-active order must survive
    big = sys.getsizeof(table)
    assert t.check() and t.compactions == 1
    assert alias is t.table and list(alias) == [i for i in range(50, 10000, 50)] + [0]
    assert sys.getsizeof(table) < big / 10, (sys.getsizeof(table), big)
    assert not t.check()  # the peak is now what is left


def test_small_or_busy_tables_are_left_alone() -> None:
    small = {i: i for i in range(1000)}
    t = TableCompactor(small)
    for i in range(990):
        del small[i]
    assert not t.check()  # never large enough to matter
    busy = {i: i for i in range(8000)}
    t = TableCompactor(busy)
    for i in range(4000):
        del busy[i]
    assert not t.check() and t.compactions == 0  # half full: still worth its size
    for i in range(4000, 6500):
        del busy[i]
    assert t.check()
