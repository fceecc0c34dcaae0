"""Connection events: what the agent reports about each TCP connection (anonymized metadata only)."""

from __future__ import annotations

import msgspec

from qtap_async.events.context import ConnContext, Stream, Timestamp

__all__ = ["ConnectionEvent", "GapEvent", "Owner"]


class Owner(msgspec.Struct, frozen=True, gc=False, omit_defaults=True):
    """A process that moved bytes on a connection (the opener, then each one that took over: a child
    forked after accept(), the receiver of the fd over SCM_RIGHTS, the program an exec started)."""

    pid: int
    exe: str
    comm: str = ""
    user: str = ""
    first_ns: int = 0  # wall clock of its first I/O on the connection, epoch ns
    first_ts: Timestamp = ""  # the same instant as RFC 3339 text (what a person reads)


class ConnectionEvent(ConnContext, frozen=True, gc=False, kw_only=True, tag_field="type", tag="connection",
                      omit_defaults=True):
    """A connection opened or closed, with its context (``ConnContext``: the opener's process)."""

    id: str
    ts: Timestamp
    ts_ns: int
    event: str  # "open" | "close"
    family: str  # "ipv4" | "ipv6"
    uid: int = -1
    cgroup: str = ""
    bytes_sent: int = 0
    bytes_received: int = 0
    duration_ns: int = 0
    protocol: str = ""  # at close: the parser family that read it ("http1", "http2", "tls", "dns")
    domain_source: str = ""  # "sni" | "host" | "dns" | "dns_host" | "hosts" (context/domains.py)
    transport: str = "tcp"  # "tcp" | "udp" (DNS)
    midstream: bool = False
    resumed: bool = False
    io_uring: bool = False  # some bytes moved through io_uring (counted; their payload is not captured)
    owners: list[Owner] | None = None
    # close: "closed" | "swept" (the kernel's sweep found it freed: no hook saw the end) | "evicted" | "agent_stopped"
    reason: str = ""


class GapEvent(msgspec.Struct, frozen=True, gc=False, kw_only=True, tag_field="type", tag="gap",
               omit_defaults=True):
    """Bytes of a stream that were not captured, and why (the connection is the one ``conn_id`` names).

    `reason`: "truncated" (a call larger than the capture limit), "read_fault" (the user buffer could not be
    read), "sendfile" / "splice" / "io_uring" (bytes that never passed through a user buffer the agent
    reads), "lost" (records dropped on the way: ring buffer full, tracking tables full).
    """

    id: str
    ts: Timestamp
    conn_id: int
    stream: Stream | str  # "send" | "recv"; "?" for a direction the kernel record did not name
    source: str
    bytes: int
    pid: int
    exe: str
    reason: str = ""
