"""A connection's ``domain``: the name it is known by, and where that name came from (``domain_source``).

Sources, strongest first (a stronger source replaces a weaker one, never the other way round):

- ``sni``: the server name the TLS client asked for;
- ``host``: the HTTP ``Host`` header or HTTP/2 ``:authority`` of a request on it;
- ``dns``: a DNS answer that the same process received for the server's address;
- ``dns_host``: a DNS answer another process received for it (a resolver daemon, another client);
- ``hosts``: the hosts file the process sees (``/proc/PID/root/etc/hosts``, so a container's own file),
  which NSS consults without sending any DNS query.

The server's address names the connection on both ends: the destination of an outgoing connection and
the local address of an accepted one, so a client and the server it talks to on this host agree.
IP literals (``Host: 127.0.0.1:8080``) are no names: they never become a domain.
"""

from __future__ import annotations

import ipaddress
import os
import sys
import time
from collections import OrderedDict
from functools import lru_cache
from typing import TYPE_CHECKING, Literal

from qtap_async.context.dns_cache import DnsCache

if TYPE_CHECKING:
    from qtap_async.transforms.conntrack import Connection

DomainSource = Literal["sni", "host", "dns", "dns_host", "hosts"]

RANK: dict[str, int] = {"": 0, "hosts": 1, "dns_host": 2, "dns": 3, "host": 4, "sni": 5}

#: How often one hosts file is looked at again (stat) for changes.
HOSTS_CHECK_INTERVAL_S = 1.0
HOSTS_MAX_BYTES = 4 * 1024 * 1024


@lru_cache(maxsize=4096)  # per transaction (Host: 127.0.0.1:8080), and ipaddress parsing is slow
def is_ip_literal(name: str) -> bool:
    try:
        ipaddress.ip_address(name.split("%", 1)[0])
    except ValueError:
        return False
    return True


def offer(conn: Connection, name: str, source: DomainSource) -> bool:
    """Give ``conn`` the domain ``name`` if ``source`` beats what named it so far. True when taken."""
    if not name or is_ip_literal(name):
        return False
    if RANK[source] <= RANK.get(conn.domain_source, 0):
        return False
    # Interned: each connection keeps its domain, and many connections share one.
    conn.domain = sys.intern(name.rstrip(".").lower())
    conn.domain_source = source
    return True


def parse_hosts(text: str) -> dict[str, str]:
    """address -> its first name, as gethostbyaddr() answers from a hosts file (the first line wins)."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        fields = line.split("#", 1)[0].split()
        if len(fields) < 2:
            continue
        try:
            addr = str(ipaddress.ip_address(fields[0].split("%", 1)[0]))
        except ValueError:
            continue  # not an address line: ignored, as NSS does
        out.setdefault(addr, fields[1].rstrip(".").lower())
    return out


def _plain(ip: str) -> str:
    """An address as DNS answers and hosts files write it (a v4-mapped IPv6 address as IPv4)."""
    if ":" not in ip:
        return ip
    try:
        a = ipaddress.IPv6Address(ip.split("%", 1)[0])
    except ValueError:
        return ip
    return str(a.ipv4_mapped) if a.ipv4_mapped is not None else str(a)


class _Watched:
    __slots__ = ("checked", "signature")

    def __init__(self, signature: tuple[int, int, int, int] | None, checked: float) -> None:
        self.signature = signature
        self.checked = checked


class HostsFiles:
    """The hosts files of the processes, parsed once per content and looked at again when they change.

    A file is identified by (device, inode, mtime, size): every process of the host shares one table,
    each container (its own root) its own. A process whose root cannot be read (it exited) falls back
    to the host's file. The path of an exited process is forgotten (``forget``, at its exit record): else
    every short-lived program would keep one until the ``max_paths`` LRU bound pushed it out.
    """

    def __init__(self, proc: str = "/proc", host_file: str = "/etc/hosts", max_paths: int = 4096,
                 check_interval_s: float = HOSTS_CHECK_INTERVAL_S) -> None:
        self.proc = proc
        self.host_file = host_file
        self.max_paths = max_paths
        self.check_interval_s = check_interval_s
        self._paths: OrderedDict[str, _Watched] = OrderedDict()
        self._tables: dict[tuple[int, int, int, int], dict[str, str]] = {}
        self.loads = 0
        self.errors = 0
        self.evicted_full = 0  # paths pushed out by max_paths
        self.forgotten = 0  # paths of exited processes

    @property
    def watched(self) -> int:  # (no __len__: `hosts or HostsFiles()` would replace an empty one)
        return len(self._paths)

    def forget(self, pid: int) -> None:
        """The process exited: its root's path names nothing any more."""
        if self._paths.pop(f"{self.proc}/{pid}/root{self.host_file}", None) is not None:
            self.forgotten += 1

    def lookup(self, pid: int, ip: str, now: float | None = None) -> str:
        t = time.monotonic() if now is None else now
        for path in (f"{self.proc}/{pid}/root{self.host_file}", self.host_file):
            table = self._table(path, t)
            if table is not None:
                return table.get(ip, "")
        return ""

    def _table(self, path: str, now: float) -> dict[str, str] | None:
        w = self._paths.get(path)
        if w is None or now - w.checked >= self.check_interval_s:
            sig = self._signature(path)
            if w is None:
                w = _Watched(sig, now)
                self._paths[path] = w
                if len(self._paths) > self.max_paths:
                    self._paths.popitem(last=False)
                    self.evicted_full += 1
            else:
                w.signature, w.checked = sig, now
            if sig is not None and sig not in self._tables:
                self._load(path, sig)
        self._paths.move_to_end(path)
        if w.signature is None:
            return None
        return self._tables.get(w.signature)

    @staticmethod
    def _signature(path: str) -> tuple[int, int, int, int] | None:
        try:
            st = os.stat(path)
        except OSError:
            return None
        return (st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size)

    def _load(self, path: str, sig: tuple[int, int, int, int]) -> None:
        try:
            with open(path, "rb") as f:
                text = f.read(HOSTS_MAX_BYTES).decode("utf-8", "replace")
        except OSError:
            self.errors += 1
            text = ""
        # Old versions of a file are dropped: only the current contents of each file are kept.
        for old in [k for k in self._tables if k[:2] == sig[:2]]:
            del self._tables[old]
        if len(self._tables) >= self.max_paths:
            self._tables.clear()
        self._tables[sig] = parse_hosts(text)
        self.loads += 1


class Domains:
    """Decides a connection's domain at open (DNS, then hosts); ``offer`` takes the stronger names later."""

    def __init__(self, dns: DnsCache, hosts: HostsFiles | None = None) -> None:
        self.dns = dns
        self.hosts = hosts or HostsFiles()

    def at_open(self, conn: Connection) -> None:
        ip = _plain(conn.laddr if conn.direction == "ingress" else conn.raddr)
        if not ip:
            return
        name, source = self.dns.lookup_source(conn.pid, ip)
        if name:
            offer(conn, name, "dns" if source == "pid" else "dns_host")
            return
        name = self.hosts.lookup(conn.pid, ip)
        if name:
            offer(conn, name, "hosts")
