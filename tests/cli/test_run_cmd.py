"""cli/run_cmd: the stop line's drop count counts each lost record once."""

from __future__ import annotations

from cli.run_cmd import _dropped
from qtap_async.telemetry import metrics


def test_a_store_drop_counts_once_though_it_is_in_the_total_and_its_reason() -> None:
    events, dropped_bytes = metrics.SINK_DROPPED_BY_REASON["shutdown"]
    snapshot = {
        metrics.SINK_DROPPED_EVENTS.key(store="kafka"): 3,
        events.key(store="kafka"): 3,  # the same 3 events, by reason
        dropped_bytes.key(store="kafka"): 900,
        metrics.SINK_DROPPED_BYTES.key(store="kafka"): 900,
        metrics.KERNEL["drop_ringbuf"].key(): 5,
        metrics.KERNEL["drop_bytes"].key(): 4096,
        metrics.STAGE_DROPPED_AT_STOP.key(): 2,
        metrics.CHANNEL_DROPPED["raw"].key(): 1,
    }
    assert _dropped(snapshot) == 3 + 5 + 2 + 1


def test_nothing_lost_is_zero() -> None:
    assert _dropped({metrics.SINK_DROPPED_EVENTS.key(store="s"): 0, metrics.TRANSACTIONS.key(protocol="h1"): 9}) == 0
