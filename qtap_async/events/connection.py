"""Connection events: what the agent reports about each TCP connection (anonymized metadata only)."""

from __future__ import annotations

import msgspec


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
    tls: bool = False
    transport: str = "tcp"  # "tcp" | "udp" (DNS)
    midstream: bool = False
    reason: str = ""  # close: "closed" | "evicted" | "agent_stopped"


class GapEvent(msgspec.Struct, frozen=True, gc=False, tag_field="type", tag="gap", omit_defaults=True):
    """Bytes of a stream that were not captured (ring buffer drop, truncation, sendfile)."""

    id: str
    ts: str
    conn_id: int
    direction: str  # "send" | "recv": from the reporting process's point of view
    source: str
    bytes: int
    pid: int
    exe: str
