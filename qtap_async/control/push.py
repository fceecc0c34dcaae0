"""The push channel's wake-ups.

An activation made in this process wakes the event streams of the team at once (``notify``). One watcher
task per process also reads the activations table every ``push_poll_s`` seconds and wakes the teams whose
activations changed, so an activation made through another instance or the CLI reaches agents too; each
stream only re-reads its own desired version when woken. The store's load from idle streams is one query
per process per poll, whatever the number of agents.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

log = logging.getLogger("qtap.control")


class PushHub:
    def __init__(self) -> None:
        self._events: dict[str, asyncio.Event] = {}
        self._seen: dict[tuple[str, str], tuple[int, float]] | None = None
        self._generation: dict[str, int] = {}
        self._desired: dict[tuple[str, str], tuple[int, int | None]] = {}

    def desired(self, team: str, group: str, read: Callable[[str, str], int | None]) -> int | None:
        """The version (team, group) should run, read from the store once per wake-up of the team: the
        hundreds of streams a notify wakes share one query (benchmarks/bench_control.py)."""
        gen = self._generation.get(team, 0)
        cached = self._desired.get((team, group))
        if cached is not None and cached[0] == gen:
            return cached[1]
        version = read(team, group)
        self._desired[(team, group)] = (gen, version)
        return version

    def waiter(self, team: str) -> asyncio.Event:
        """The event the next ``notify(team)`` sets (take it before reading the store, then wait on it)."""
        ev = self._events.get(team)
        if ev is None:
            ev = self._events[team] = asyncio.Event()
        return ev

    def notify(self, team: str) -> None:
        self._generation[team] = self._generation.get(team, 0) + 1
        ev = self._events.pop(team, None)
        if ev is not None:
            ev.set()

    def changed(self, rows: list[tuple[Any, ...]]) -> set[str]:
        """Teams whose (team, group, version, activated_at) rows differ from the previous call's."""
        now = {(r[0], r[1]): (r[2], r[3]) for r in rows}
        before, self._seen = self._seen, now
        if before is None:  # the first look: wake everyone once, a change may predate the watcher
            return {key[0] for key in now}
        return {key[0] for key in before.keys() | now.keys() if before.get(key) != now.get(key)}

    async def watch(self, read: Callable[[], list[tuple[Any, ...]]], interval: float) -> None:
        while True:
            try:
                for team in self.changed(read()):
                    self.notify(team)
            except Exception as e:  # a store hiccup must not end the watcher; streams keep their keepalives
                log.warning("push watcher: %s", e)
            await asyncio.sleep(interval)
