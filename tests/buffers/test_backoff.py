import random

import pytest

from qtap_async.buffers import Backoff


def test_grows_exponentially_to_the_cap_without_jitter() -> None:
    b = Backoff(initial=0.1, maximum=1.0, multiplier=2, jitter=0)
    assert [round(b.next_delay(), 3) for _ in range(6)] == [0.1, 0.2, 0.4, 0.8, 1.0, 1.0]
    b.reset()
    assert b.next_delay() == pytest.approx(0.1)


def test_jitter_stays_within_bounds_and_varies() -> None:
    b = Backoff(initial=1.0, maximum=1.0, multiplier=2, jitter=0.25, rng=random.Random(7))
    delays = [b.next_delay() for _ in range(200)]
    assert all(0.75 <= d <= 1.25 for d in delays)
    assert len({round(d, 6) for d in delays}) > 100


def test_long_outage_does_not_overflow() -> None:
    b = Backoff(initial=0.1, maximum=5.0, jitter=0)
    b.attempt = 100_000
    assert b.next_delay() == 5.0


def test_rejects_bad_settings() -> None:
    with pytest.raises(ValueError):
        Backoff(initial=0)
    with pytest.raises(ValueError):
        Backoff(initial=2, maximum=1)
