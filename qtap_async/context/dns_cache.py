"""IP -> name, learnt from the DNS answers the agent sees, so a connection gets a domain even when no
Host header or SNI names it. Per process first (what that process resolved), then host-wide (a resolver
daemon may have resolved it for everyone). Bounded LRU; entries expire with the record's TTL (at least
MIN_TTL_S, so a connection opened right after a short-TTL answer still matches)."""

from __future__ import annotations

import time
from collections import OrderedDict

from qtap_async.events.dns import DnsMessage

MIN_TTL_S = 60
MAX_TTL_S = 3600


class DnsCache:
    def __init__(self, max_entries: int = 65536) -> None:
        self.max_entries = max_entries
        self._by_pid: OrderedDict[tuple[int, str], tuple[str, float]] = OrderedDict()
        self._host: OrderedDict[str, tuple[str, float]] = OrderedDict()
        self.learned = 0

    def learn(self, pid: int, msg: DnsMessage, now: float | None = None) -> None:
        if not msg.is_response or msg.rcode != "NOERROR" or not msg.qname:
            return
        t = time.monotonic() if now is None else now
        name = msg.qname.rstrip(".")
        for a in msg.answers:
            if a.type not in ("A", "AAAA"):
                continue
            expires = t + min(max(a.ttl, MIN_TTL_S), MAX_TTL_S)
            self._put(self._by_pid, (pid, a.data), (name, expires))
            self._put(self._host, a.data, (name, expires))
            self.learned += 1

    def _put(self, d: OrderedDict, key: object, value: tuple[str, float]) -> None:  # type: ignore[type-arg]
        d[key] = value
        d.move_to_end(key)
        if len(d) > self.max_entries:
            d.popitem(last=False)

    def lookup(self, pid: int, ip: str, now: float | None = None) -> str:
        return self.lookup_source(pid, ip, now)[0]

    def lookup_source(self, pid: int, ip: str, now: float | None = None) -> tuple[str, str]:
        """(name, "pid") from this process's answers, else (name, "host") from anyone's, else ("", "")."""
        t = time.monotonic() if now is None else now
        for hit, source in ((self._by_pid.get((pid, ip)), "pid"), (self._host.get(ip), "host")):
            if hit is not None and hit[1] >= t:
                return hit[0], source
        return "", ""
