"""Waiting, in async tests, for state that has no event to await: a runner's counters, a reloader's count,
files another process writes. Bound the wait with ``asyncio.timeout`` around the call."""

from __future__ import annotations

import asyncio
from collections.abc import Callable


async def until(cond: Callable[[], object], every: float = 0.01) -> None:
    """Return once ``cond()`` is true, checking it every ``every`` seconds."""
    # The one poll loop of the tests: what they wait for is owned by the code under test, which has no
    # reason to signal it.
    while not cond():  # noqa: ASYNC110
        await asyncio.sleep(every)
