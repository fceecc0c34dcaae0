"""`qtap run --port/--domain/--exe/--direction/--container`: keep only the traffic a person is chasing.

The flags compile to a ``qtap_async.filters.Focus`` (the same matchers the config's filters use: exe
strategies, direction classes, endpoint-style domains). ``FocusGate`` applies it at the agent's two
choke points, with or without a config:

- the session factory: a connection out of focus by port, process, container or direction gets no
  protocol session, so none of its bytes are parsed;
- the protocol-record handler: a transaction whose host is out of ``--domain`` never reaches the
  stacks (so no plugin, access log or store sees it), and records of unfocused connections are dropped;
- the writer's keep function: connection and gap events of unfocused connections are dropped.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from qtap_async.errors import ConfigError
from qtap_async.events.connection import ConnectionEvent, GapEvent
from qtap_async.events.http import HttpTransaction
from qtap_async.filters import DIRECTIONS, DomainMatcher, ExeFilter, Focus
from qtap_async.plugins.exchange import host_of
from qtap_async.transforms.conntrack import Connection, Session

__all__ = ["FocusGate", "build_focus"]

SessionFactory = Callable[[Connection, int], Session | None]
RecordHandler = Callable[[Connection, Any, int], list[Any]]


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
    """Wraps the agent's hooks so only focused traffic is parsed, handed to the stacks and written."""

    def __init__(self, focus: Focus) -> None:
        self.focus = focus
        self._decided: dict[int, bool] = {}
        self.ignored_connections = 0

    def _conn_ok(self, conn: Connection) -> bool:
        ok = self._decided.get(conn.conn_id)
        if ok is None:
            p = conn.process
            ok = self.focus.connection(ingress=conn.direction == "ingress", remote_ip=conn.raddr, lport=conn.lport,
                                       rport=conn.rport, exe=p.exe, container_id=p.container_id)
            self._decided[conn.conn_id] = ok
            if not ok:
                self.ignored_connections += 1
        return ok

    def session_factory(self, inner: SessionFactory | None) -> SessionFactory:
        def factory(conn: Connection, layer: int) -> Session | None:
            if not self._conn_ok(conn) or inner is None:
                return None
            return inner(conn, layer)
        return factory

    def on_protocol_record(self, inner: RecordHandler) -> RecordHandler:
        focus = self.focus

        def handle(conn: Connection, rec: Any, layer: int) -> list[Any]:
            if not self._conn_ok(conn):
                return []
            if focus.domains is not None and isinstance(rec, HttpTransaction):
                host = host_of(rec.authority) or conn.domain
                if not focus.domain(host):
                    return []
            out = inner(conn, rec, layer)  # TLS hellos and DNS answers still teach the connection its domain
            if focus.domains is not None and not isinstance(rec, HttpTransaction) and not focus.domain(conn.domain):
                return []
            return out
        return handle

    def keep(self, inner: Callable[[Any], bool] | None) -> Callable[[Any], bool]:
        focus = self.focus

        def keep(item: Any) -> bool:
            if isinstance(item, ConnectionEvent | GapEvent):
                ok = self._decided.get(item.conn_id)
                if ok is None and isinstance(item, ConnectionEvent):
                    ingress = item.direction == "ingress"
                    ok = focus.connection(ingress=ingress, remote_ip=item.src_ip if ingress else item.dst_ip,
                                          lport=item.dst_port if ingress else item.src_port,
                                          rport=item.src_port if ingress else item.dst_port, exe=item.exe,
                                          container_id=item.container_id)
                if ok is False:
                    return False
                if isinstance(item, ConnectionEvent):
                    if item.event == "close":
                        self._decided.pop(item.conn_id, None)
                    if focus.domains is not None and not focus.domain(item.domain):
                        return False  # the domain is known at close (SNI, Host, DNS); an open has none yet
            return inner(item) if inner is not None else True
        return keep
