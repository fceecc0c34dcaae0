"""`qtap run --port/--domain/--exe/--direction/--container`: keep only the traffic a person is chasing.

The flags compile to a ``qtap_async.filters.Focus`` (the same matchers the config's filters use: exe
strategies, direction classes, endpoint-style domains). ``FocusGate`` is what the graph's dispatch
stage (qtap_async/topology/dispatch.py) asks, with or without a config:

- at a connection's open: one out of focus by port, process, container or direction is ignored like a
  filtered one (muted in conntrack, so none of its bytes are parsed, and none of its events written);
- per transaction: one whose host is out of ``--domain`` never reaches the stacks (so no plugin, access
  log or store sees it); other records and the close event need the connection's domain in focus.
"""

from __future__ import annotations

from collections.abc import Sequence

from qtap_async.errors import ConfigError
from qtap_async.events.connection import ConnectionEvent
from qtap_async.filters import DIRECTIONS, DomainMatcher, ExeFilter, Focus

__all__ = ["FocusGate", "build_focus"]


def _exe_filter(value: str) -> ExeFilter:
    """``/usr/bin/curl`` is the exact path, ``/opt/app/`` a directory prefix, ``curl`` the file name."""
    if value.startswith("/"):
        return ExeFilter(value, "prefix" if value.endswith("/") else "exact")
    return ExeFilter("/" + value, "suffix")


def build_focus(*, ports: Sequence[int] = (), domains: Sequence[str] = (), exes: Sequence[str] = (),
                direction: str | None = None, containers: Sequence[str] = ()) -> Focus:
    """A Focus from the flags; ConfigError names the flag and the reason."""
    bad_ports = [p for p in ports if not 0 < p < 65536]
    if bad_ports:
        raise ConfigError(f"--port {bad_ports[0]}: a port is 1-65535")
    if direction is not None and direction not in DIRECTIONS:
        raise ConfigError(f"--direction {direction}: expected one of {', '.join(DIRECTIONS)}")
    for d in domains:
        name = d[2:] if d.startswith("*.") else d
        if not name or "/" in name or " " in name or "*" in name:
            raise ConfigError(f"--domain {d}: expected a host name like api.example.com or *.example.com")
    for e in exes:
        if not e.strip("/"):
            raise ConfigError(f"--exe {e!r}: expected a program name (curl) or a path (/usr/bin/curl)")
    for c in containers:
        if not c or not all(ch in "0123456789abcdef" for ch in c.lower()):
            raise ConfigError(f"--container {c}: expected a container id or its prefix (hex digits)")
    return Focus(
        direction=direction or "all",
        ports=frozenset(ports),
        exes=tuple(_exe_filter(e) for e in exes),
        containers=tuple(c.lower() for c in containers),
        domains=DomainMatcher(domains) if domains else None,
    )


class FocusGate:
    """The flags' focus, as the dispatch stage asks it (``qtap_async.topology.dispatch.Focus``)."""

    def __init__(self, focus: Focus) -> None:
        self.focus = focus
        self.ignored_connections = 0

    def connection(self, ev: ConnectionEvent) -> bool:
        """Whether a connection is in focus, from its open event (decided once per connection)."""
        ingress = ev.direction == "ingress"
        ok = self.focus.connection(ingress=ingress, remote_ip=ev.src_ip if ingress else ev.dst_ip,
                                   lport=ev.dst_port if ingress else ev.src_port,
                                   rport=ev.src_port if ingress else ev.dst_port, exe=ev.exe,
                                   container_id=ev.container_id)
        if not ok:
            self.ignored_connections += 1
        return ok

    @property
    def has_domains(self) -> bool:
        return self.focus.domains is not None

    def domain(self, name: str) -> bool:
        return self.focus.domain(name)
