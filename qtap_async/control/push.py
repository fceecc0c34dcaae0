"""The push channel's wake-ups: an activation in this process wakes the agents' event streams at once.

Streams also re-read the store every ``push_poll_s`` seconds, so an activation made through another
instance or the CLI reaches agents too, only a little later.
"""

from __future__ import annotations

import asyncio


class PushHub:
    def __init__(self) -> None:
        self._events: dict[str, asyncio.Event] = {}

    def waiter(self, team: str) -> asyncio.Event:
        """The event the next ``notify(team)`` sets (take it before reading the store, then wait on it)."""
        ev = self._events.get(team)
        if ev is None:
            ev = self._events[team] = asyncio.Event()
        return ev

    def notify(self, team: str) -> None:
        ev = self._events.pop(team, None)
        if ev is not None:
            ev.set()
