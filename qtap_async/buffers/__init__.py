"""Buffers between pipeline stages and in front of sinks: bounded channels, backoff, the durable spool."""

from qtap_async.buffers.backoff import Backoff
from qtap_async.buffers.channel import Channel, ChannelClosed, ChannelStats, WhenFull, default_sizeof
from qtap_async.buffers.spool import Spool, SpoolError, SpoolPosition, SpoolStats, SpoolWhenFull

__all__ = [
    "Backoff",
    "Channel",
    "ChannelClosed",
    "ChannelStats",
    "Spool",
    "SpoolError",
    "SpoolPosition",
    "SpoolStats",
    "SpoolWhenFull",
    "WhenFull",
    "default_sizeof",
]
