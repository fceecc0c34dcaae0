"""The command-line focus filters (cli/filters_cli.py: --port, --domain, --exe, --direction, --container):
built from the flags, and as the dispatch stage asks them (FocusGate), decided on a connection's open event
(its two ends seen from the local process)."""

from __future__ import annotations

from typing import Any

import pytest

from cli.filters_cli import FocusGate, build_focus
from qtap_async.errors import ConfigError
from qtap_async.events.connection import ConnectionEvent
from qtap_async.filters import DomainMatcher, Focus


def conn(focus: Focus, *, ingress: bool = False, ip: str = "10.1.2.3", lport: int = 40000, rport: int = 443,
         exe: str = "/usr/bin/curl", container: str = "") -> bool:
    return focus.connection(ingress=ingress, remote_ip=ip, lport=lport, rport=rport, exe=exe, container_id=container)


def test_empty_focus_keeps_everything() -> None:
    f = build_focus()
    assert f.empty and conn(f) and f.domain("")


def test_each_kind_must_match_any_value_within() -> None:
    f = build_focus(ports=[443, 8080], exes=["curl"])
    assert conn(f) and conn(f, rport=8080) and conn(f, ingress=True, lport=8080, rport=51000)
    assert not conn(f, rport=80)
    assert not conn(f, exe="/usr/bin/wget")
    assert not conn(f, exe="/opt/curlish")  # the file name, not a substring


def test_exe_forms() -> None:
    assert conn(build_focus(exes=["/usr/bin/curl"]))
    assert not conn(build_focus(exes=["/usr/bin/curl"]), exe="/usr/local/bin/curl")
    assert conn(build_focus(exes=["/usr/"]))
    assert not conn(build_focus(exes=["/opt/"]))


def test_direction_classes() -> None:
    f = build_focus(direction="egress-external")
    assert conn(f, ip="93.184.216.34") and not conn(f, ip="10.0.0.1") and not conn(f, ingress=True)
    assert conn(build_focus(direction="ingress"), ingress=True)
    assert not conn(build_focus(direction="egress"), ingress=True)


def test_container_prefix() -> None:
    f = build_focus(containers=["ABC123"])
    assert conn(f, container="abc123def456") and not conn(f, container="") and not conn(f, container="ffff")


def test_domains() -> None:
    m = DomainMatcher(["api.example.com", "*.internal.test"])
    assert m.matches("API.example.com.") and m.matches("api.example.com:8443")
    assert m.matches("db.internal.test") and not m.matches("internal.test") and not m.matches("example.com")
    f = build_focus(domains=["localhost"])
    assert f.domain("localhost:8080") and not f.domain("") and not f.domain("127.0.0.1:8080")


@pytest.mark.parametrize(("kwargs", "words"), [
    ({"ports": [0]}, "--port 0"),
    ({"direction": "up"}, "--direction up"),
    ({"domains": ["a b"]}, "--domain a b"),
    ({"exes": ["/"]}, "--exe"),
    ({"containers": ["xyz"]}, "--container xyz"),
])
def test_bad_values_name_the_flag(kwargs: dict[str, object], words: str) -> None:
    with pytest.raises(ConfigError, match=words):
        build_focus(**kwargs)  # type: ignore[arg-type]


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
