"""Which local TCP ports are listening, per network namespace (from /proc/PID/net/tcp{,6}).

Used only for connections the agent joined mid-way (no connect/accept seen): a local port that is
listening means the connection was accepted (ingress).
"""

from __future__ import annotations

import os
import time

_LISTEN = "0A"
_REFRESH_S = 1.0


def _parse(text: str) -> set[int]:
    ports: set[int] = set()
    for line in text.splitlines()[1:]:
        parts = line.split()
        if len(parts) > 3 and parts[3] == _LISTEN:
            ports.add(int(parts[1].rsplit(":", 1)[1], 16))
    return ports


def _read_ports(pid: int) -> set[int]:
    ports: set[int] = set()
    for name in ("tcp", "tcp6"):
        try:
            with open(f"/proc/{pid}/net/{name}") as f:
                ports |= _parse(f.read())
        except OSError:
            continue
    return ports


class ListeningPorts:
    def __init__(self) -> None:
        self._cache: dict[int, tuple[float, set[int]]] = {}  # netns inode -> (read at, ports)
        # What listened when the agent attached, per pid: a connection joined mid-way existed then, so its
        # listener did too, even if both are gone by the time its first record is looked at.
        self._at_start: dict[int, set[int]] = {}

    def snapshot_at_start(self) -> None:
        """Remember every process's listening ports as they are now (once per network namespace)."""
        by_ns: dict[int, set[int]] = {}
        try:
            pids = [int(p) for p in os.listdir("/proc") if p.isdigit()]
        except OSError:
            return
        for pid in pids:
            try:
                ns = os.stat(f"/proc/{pid}/ns/net").st_ino
            except OSError:
                continue
            ports = by_ns.get(ns)
            if ports is None:
                ports = by_ns[ns] = _read_ports(pid)
            if ports:
                self._at_start[pid] = ports

    def ports(self, pid: int) -> set[int]:
        try:
            ns = os.stat(f"/proc/{pid}/ns/net").st_ino
        except OSError:  # gone: the agent's own namespace is the best guess (is_listening adds _at_start)
            ns, pid = 0, os.getpid()
        now = time.monotonic()
        hit = self._cache.get(ns)
        if hit is not None and now - hit[0] < _REFRESH_S:
            return hit[1]
        ports = _read_ports(pid)
        self._cache[ns] = (now, ports)
        return ports

    def is_listening(self, pid: int, port: int) -> bool:
        return port in self.ports(pid) or port in self._at_start.get(pid, ())
