"""Exponential backoff with jitter, for retrying transient sink errors."""

from __future__ import annotations

import random
from collections.abc import Iterator


class Backoff:
    """Delays ``initial * multiplier**n`` capped at ``maximum``, each scaled by a random factor in
    ``[1 - jitter, 1 + jitter]`` so that many agents retrying after one outage do not hit the store in step."""

    def __init__(
        self,
        initial: float = 0.1,
        maximum: float = 5.0,
        multiplier: float = 2.0,
        jitter: float = 0.2,
        rng: random.Random | None = None,
    ) -> None:
        if initial <= 0 or maximum < initial or multiplier < 1 or not 0 <= jitter < 1:
            raise ValueError("backoff needs 0 < initial <= maximum, multiplier >= 1, 0 <= jitter < 1")
        self.initial = initial
        self.maximum = maximum
        self.multiplier = multiplier
        self.jitter = jitter
        self._rng = rng or random.Random()
        self.attempt = 0

    def next_delay(self) -> float:
        # The exponent is capped so a long outage cannot overflow the float.
        base = min(self.maximum, self.initial * self.multiplier ** min(self.attempt, 64))
        self.attempt += 1
        if self.jitter:
            base *= 1 + self._rng.uniform(-self.jitter, self.jitter)
        return base

    def reset(self) -> None:
        self.attempt = 0

    def __iter__(self) -> Iterator[float]:
        while True:
            yield self.next_delay()
