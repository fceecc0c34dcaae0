"""The connection and process an event happened on, and the names every event uses for them.

``ConnContext`` is written once, here, and every event about a connection's traffic (connection,
HTTP transaction, TLS hello, DNS message, parse error) is a subclass of it, so its fields appear flat
in each event's JSON (the way Go embeds a struct) and mean the same thing everywhere.

Vocabulary (one meaning per name across qtap_async):

- ``direction`` (``Direction``): who opened the connection, from the local process's point of view:
  ``egress`` (it connected out), ``ingress`` (it accepted), ``unknown`` (a connection found already open
  whose side cannot be told). ``src`` is always the side that opened it.
- ``stream`` (``Stream``): which of a connection's two byte streams: ``send`` (written by the local
  process) or ``recv`` (read by it). Protocol records carry it as an int (0 send, 1 recv).
- ``traffic`` (``Traffic``): the direction classified by the peer's address (``ingress``,
  ``egress-internal``, ``egress-external``): what access lines print, what rules call ``conn.direction``
  and what the ``tap.direction`` setting filters on. Derived, never stored.
- ``protocol`` (``Protocol``): the application protocol by its ALPN identifier (RFC 7301 registry):
  ``http/1.0``, ``http/1.1``, ``h2`` (HTTP/2 over TLS), ``h2c`` (HTTP/2 in cleartext: after an Upgrade
  or with prior knowledge), plus ``grpc`` (report_usage's gRPC calls), ``tls`` and ``dns``. The protocol layer's
  detector names parser families instead (``http1``, ``http2``): those name a parser (``parse_error``'s
  ``protocol``), not a wire protocol.
- ``ts`` (``Timestamp``): when, as RFC 3339 in UTC with nanoseconds (``2026-12-02T15:38:44.123456789Z``),
  in every event and in Pulse's query results; ``ts_ns`` is the same instant in nanoseconds since the Unix
  epoch, where a program needs the number (``connection``, ``object_ref``, Pulse rows). Other names ending in
  ``_ns`` are durations in nanoseconds (``duration_ns``, ``ttfb_ns``), except an owner's ``first_ns``, the
  epoch-ns twin of its ``first_ts``.
"""

from __future__ import annotations

from typing import Literal, TypeAlias

import msgspec

from qtap_async.events.times import Timestamp
from qtap_async.filters import ConnDirection, classify_connection

__all__ = ["ConnContext", "Direction", "Protocol", "Stream", "Timestamp", "Traffic"]

Direction: TypeAlias = Literal["egress", "ingress", "unknown"]
Stream: TypeAlias = Literal["send", "recv"]
Traffic: TypeAlias = ConnDirection
#: An ALPN identifier ("http/1.1", "h2", "h2c"), "grpc", "tls", "dns"; "" when not known yet.
Protocol: TypeAlias = str


class ConnContext(msgspec.Struct, frozen=True, gc=False, kw_only=True, omit_defaults=True):
    """The connection and process an event happened on (a snapshot: plugins may keep it).

    ``src`` is the side that opened the connection (see ``direction``). ``domain`` is what the connection
    is known as so far (SNI, Host or DNS). Container and pod fields come from the runtime's API
    (``qtap_async.context``) once looked up, and are left out of the JSON while empty; the rest is always
    written.
    """

    conn_id: int
    direction: Direction
    tls: bool
    src_ip: str
    src_port: int
    dst_ip: str
    dst_port: int
    pid: int
    exe: str
    comm: str
    container_id: str
    container_name: str = ""
    container_image: str = ""
    container_labels: dict[str, str] = {}
    pod_name: str = ""
    pod_namespace: str = ""
    pod_uid: str = ""
    user: str = ""
    domain: str = ""

    @property
    def remote_ip(self) -> str:
        """The peer's address: the opener of an accepted connection, the target of an outgoing one."""
        return self.src_ip if self.direction == "ingress" else self.dst_ip

    @property
    def traffic(self) -> Traffic:
        """``direction`` classified by the peer's address (see the module docstring)."""
        return classify_connection(self.direction == "ingress", self.remote_ip)
