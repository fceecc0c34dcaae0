"""FocusGate: the --port/--exe/--direction/--domain flags as the dispatch stage asks them, decided on a
connection's open event (its two ends seen from the local process)."""

from __future__ import annotations

from typing import Any

from cli.filters_cli import FocusGate, build_focus
from qtap_async.events.connection import ConnectionEvent


def _ev(direction: str, src: tuple[str, int], dst: tuple[str, int], exe: str = "/usr/bin/curl") -> ConnectionEvent:
    return ConnectionEvent(id="c", ts="t", ts_ns=1, event="open", family="ipv4", conn_id=1, direction=direction,  # type: ignore[arg-type]
                           tls=False, src_ip=src[0], src_port=src[1], dst_ip=dst[0], dst_port=dst[1], pid=1, exe=exe,
                           comm="curl", container_id="")


def test_ports_and_exes_from_either_end() -> None:
    gate = FocusGate(build_focus(ports=[8080], exes=["curl"]))
    assert gate.connection(_ev("egress", ("10.0.0.2", 40000), ("10.0.0.9", 8080)))
    assert gate.connection(_ev("ingress", ("10.0.0.9", 40000), ("10.0.0.2", 8080)))  # the local port is dst's
    assert not gate.connection(_ev("egress", ("10.0.0.2", 40000), ("10.0.0.9", 9090)))
    assert not gate.connection(_ev("egress", ("10.0.0.2", 40000), ("10.0.0.9", 8080), exe="/usr/bin/wget"))
    assert gate.ignored_connections == 2 and not gate.has_domains


def test_direction_and_domains() -> None:
    gate: Any = FocusGate(build_focus(direction="ingress", domains=["*.example.com"]))
    assert not gate.connection(_ev("egress", ("10.0.0.2", 40000), ("10.0.0.9", 80)))
    assert gate.connection(_ev("ingress", ("10.0.0.9", 40000), ("10.0.0.2", 80)))
    assert gate.has_domains and gate.domain("api.example.com") and not gate.domain("example.org")
