"""Connection events: what the agent reports about each TCP connection (anonymized metadata only)."""

from __future__ import annotations

import msgspec


class Owner(msgspec.Struct, frozen=True, gc=False, omit_defaults=True):
    """A process that moved bytes on a connection (the opener, then each one that took over: a child
    forked after accept(), the receiver of the fd over SCM_RIGHTS, the program an exec started)."""

    pid: int
    exe: str
    comm: str = ""
    user: str = ""
    first_ns: int = 0  # wall clock of its first I/O on the connection


class ConnectionEvent(msgspec.Struct, frozen=True, gc=False, tag_field="type", tag="connection",
                      omit_defaults=True):
    """A connection opened or closed.

    src is the side that initiated the connection and dst the side that accepted it, whatever side of
    the connection the reporting process is on; `direction` says which: `egress` (this host's process
    connected out) or `ingress` (it accepted the connection).
    """

    id: str
    ts: str
    ts_ns: int
    event: str  # "open" | "close"
    conn_id: int
    direction: str
    family: str  # "ipv4" | "ipv6"
    src_ip: str
    src_port: int
    dst_ip: str
    dst_port: int
    pid: int
    exe: str
    comm: str
    user: str = ""
    uid: int = -1
    container_id: str = ""
    cgroup: str = ""
    container_name: str = ""  # the rest from the runtime's API (qtap_async.context), once looked up
    container_image: str = ""
    container_labels: dict[str, str] = {}
    pod_name: str = ""
    pod_namespace: str = ""
    pod_uid: str = ""
    bytes_sent: int = 0
    bytes_received: int = 0
    duration_ns: int = 0
    protocol: str = ""
    domain: str = ""
    domain_source: str = ""  # "sni" | "host" | "dns" | "dns_host" | "hosts" (context/domains.py)
    tls: bool = False
    transport: str = "tcp"  # "tcp" | "udp" (DNS)
    midstream: bool = False
    resumed: bool = False
    io_uring: bool = False  # some bytes moved through io_uring (counted; their payload is not captured)
    owners: list[Owner] | None = None
    reason: str = ""  # close: "closed" | "evicted" | "agent_stopped"


class GapEvent(msgspec.Struct, frozen=True, gc=False, tag_field="type", tag="gap", omit_defaults=True):
    """Bytes of a stream that were not captured, and why.

    `reason`: "truncated" (a call larger than the capture limit), "read_fault" (the user buffer could not be
    read), "sendfile" / "splice" / "io_uring" (bytes that never passed through a user buffer the agent
    reads), "lost" (records dropped on the way: ring buffer full, tracking tables full).
    """

    id: str
    ts: str
    conn_id: int
    direction: str  # "send" | "recv": from the reporting process's point of view
    source: str
    bytes: int
    pid: int
    exe: str
    reason: str = ""
