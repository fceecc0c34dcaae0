"""Ties the Java agent's plaintext streams (one per SSLSocket or SSLEngine) to the connections conntrack holds.

The JVM's pid comes from the channel's peer credentials. An SSLSocket reports both ports, so its connection
is the one of that process with those ports. An SSLEngine knows only its peer's port (the JSSE never sees
the socket beneath it): its connection is the one open connection of that process to that port not already
tied to another stream; when there are several, the chunk is dropped and counted (`ambiguous`) rather than
given to a connection that may not be its own. A stream stays tied to its connection until that one closes.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from qtap_async.events.kernel import JavaData

MAX_STREAMS = 65536


@dataclass
class JavaStreamStats:
    chunks: int = 0
    bytes: int = 0
    unmatched: int = 0  # no open connection of that process has those ports (not tracked, or closed already)
    ambiguous: int = 0  # an SSLEngine's chunk, and several connections could be its own
    late: int = 0  # its connection closed before the chunk came


class JavaStreams:
    def __init__(self) -> None:
        self._bound: OrderedDict[tuple[int, int], int] = OrderedDict()  # (pid, stream id) -> conn_id
        self._owner: dict[int, tuple[int, int]] = {}  # conn_id -> (pid, stream id)
        self.stats = JavaStreamStats()

    def resolve(self, rec: JavaData, conns: Mapping[int, Any]) -> Any | None:
        """The Connection `rec` belongs to, or None (counted)."""
        stats = self.stats
        key = (rec.pid, rec.stream_id)
        cid = self._bound.get(key)
        if cid is not None:
            c = conns.get(cid)
            if c is not None:
                stats.chunks += 1
                stats.bytes += len(rec.payload)
                return c
            del self._bound[key]
            self._owner.pop(cid, None)
            stats.late += 1
            return None
        pid, lport, rport = rec.pid, rec.lport, rec.rport
        owner = self._owner
        found = [c for c in conns.values()
                 if c.rport == rport and c.pid == pid and (lport == 0 or c.lport == lport) and not c.udp
                 and c.conn_id not in owner]
        if len(found) != 1:
            if found:
                stats.ambiguous += 1
            else:
                stats.unmatched += 1
            return None
        c = found[0]
        self._bound[key] = c.conn_id
        owner[c.conn_id] = key
        if len(self._bound) > MAX_STREAMS:
            _, old = self._bound.popitem(last=False)
            owner.pop(old, None)
        stats.chunks += 1
        stats.bytes += len(rec.payload)
        return c

    def closed(self, conn_id: int) -> None:
        key = self._owner.pop(conn_id, None)
        if key is not None:
            self._bound.pop(key, None)
