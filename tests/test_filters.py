"""Process filters, direction classification, loopback, endpoint stack selection and the recognition of
the agent's own services (qtap_async.filters)."""

from __future__ import annotations

import ipaddress
import textwrap

import pytest

from qtap_async.config import loads_config
from qtap_async.filters import (
    GROUP_FILTERS,
    PROCESS_GROUPS,
    ExeFilter,
    OwnServices,
    ProcessFilter,
    StackSelector,
    TrafficFilter,
    classify_connection,
    direction_allowed,
    is_internal,
    is_loopback,
    parse_ip,
)


@pytest.mark.parametrize(
    ("exe", "strategy", "path", "expected"),
    [
        ("/usr/bin/curl", "exact", "/usr/bin/curl", True),
        ("/usr/bin/curl", "exact", "/usr/bin/curl2", False),
        ("/usr/bin/", "prefix", "/usr/bin/python3", True),
        ("/usr/bin/", "prefix", "/usr/sbin/sshd", False),
        ("/java", "suffix", "/opt/jdk/bin/java", True),
        ("/java", "suffix", "/opt/jdk/bin/javac", False),
        ("ruby", "contains", "/home/u/.rbenv/versions/3.3/bin/ruby", True),
        ("ruby", "contains", "/usr/bin/python3", False),
        (".*ruby.*", "regex", "/usr/local/bin/ruby3.2", True),
        ("^/usr/bin/python3\\.[0-9]+$", "regex", "/usr/bin/python3.11", True),
        ("^/usr/bin/python3\\.[0-9]+$", "regex", "/usr/local/bin/python3.11", False),
        ("python", "regex", "/usr/bin/python3", True),  # regexes search anywhere
    ],
)
def test_exe_filter(exe: str, strategy: str, path: str, expected: bool) -> None:
    f = ExeFilter(exe, strategy)  # type: ignore[arg-type]
    assert f.match(path) is expected
    assert ProcessFilter([f]).ignores(path) is expected
    assert (ProcessFilter([f]).match(path) is f) is expected


def test_unknown_strategy() -> None:
    with pytest.raises(ValueError, match="unknown strategy 'glob'"):
        ExeFilter("*", "glob")  # type: ignore[arg-type]


def test_process_filter_from_config_expands_groups_and_only() -> None:
    config = loads_config(
        textwrap.dedent(
            """\
            version: 2
            tap:
              filters:
                groups: [qpoint, container]
                custom:
                  - exe: /usr/bin/curl
                  - exe: java
                    strategy: contains
                    only: [tls, http]
            """
        )
    )
    pf = ProcessFilter.from_config(config.tap.filters)
    assert len(pf.filters) == len(GROUP_FILTERS["qpoint"]) + len(GROUP_FILTERS["container"]) + 2
    assert pf.ignores("/usr/local/bin/qtap")
    assert pf.ignores("/usr/bin/containerd-shim-runc-v2")
    assert pf.ignores("/usr/bin/curl")
    assert not pf.ignores("/usr/bin/wget")
    # a filter with `only` does not ignore the process, it narrows what is skipped
    assert not pf.ignores("/opt/jdk/bin/java")
    assert pf.skipped("/opt/jdk/bin/java") == {"tls", "http"}
    assert pf.skipped("/usr/bin/curl") == {"data", "dns", "tls", "http"}
    assert pf.skipped("/usr/bin/wget") == frozenset()


def test_every_group_has_filters() -> None:
    assert set(GROUP_FILTERS) == set(PROCESS_GROUPS)
    assert all(GROUP_FILTERS[g] for g in PROCESS_GROUPS)


@pytest.mark.parametrize(
    ("ip", "internal", "loopback"),
    [
        ("10.1.2.3", True, False),
        ("172.16.0.1", True, False),
        ("172.31.255.255", True, False),
        ("172.32.0.1", False, False),
        ("192.168.1.1", True, False),
        ("127.0.0.1", True, True),
        ("127.8.9.10", True, True),
        ("169.254.169.254", True, False),
        ("8.8.8.8", False, False),
        ("100.64.0.1", False, False),
        ("::1", True, True),
        ("fe80::1", True, False),
        ("fd12:3456::1", True, False),
        ("fc00::1", True, False),
        ("2001:4860:4860::8888", False, False),
        ("::ffff:10.0.0.1", True, False),
        ("::ffff:127.0.0.1", True, True),
        ("::ffff:8.8.8.8", False, False),
        ("not-an-ip", False, False),
        ("", False, False),
        (b"\x0a\x00\x00\x01", True, False),
        (b"\x7f\x00\x00\x01", True, True),
        (bytes(15) + b"\x01", True, True),
        (b"\x08\x08", False, False),
        (0x0A000001, True, False),
        (ipaddress.ip_address("8.8.4.4"), False, False),
    ],
)
def test_address_classes(ip: object, internal: bool, loopback: bool) -> None:
    assert is_internal(ip) is internal  # type: ignore[arg-type]
    assert is_loopback(ip) is loopback  # type: ignore[arg-type]


def test_parse_ip_maps_ipv4_in_ipv6() -> None:
    assert parse_ip("::ffff:1.2.3.4") == ipaddress.IPv4Address("1.2.3.4")
    with pytest.raises(ValueError):
        parse_ip(b"\x01\x02\x03")


@pytest.mark.parametrize(
    ("ingress", "ip", "conn"),
    [
        (True, "8.8.8.8", "ingress"),
        (False, "8.8.8.8", "egress-external"),
        (False, "10.0.0.1", "egress-internal"),
        (False, "127.0.0.1", "egress-internal"),
    ],
)
def test_classify_connection(ingress: bool, ip: str, conn: str) -> None:
    assert classify_connection(ingress, ip) == conn


@pytest.mark.parametrize(
    ("setting", "allowed"),
    [
        ("all", {"ingress", "egress-internal", "egress-external"}),
        ("ingress", {"ingress"}),
        ("egress", {"egress-internal", "egress-external"}),
        ("egress-internal", {"egress-internal"}),
        ("egress-external", {"egress-external"}),
    ],
)
def test_direction_allowed(setting: str, allowed: set[str]) -> None:
    for conn in ("ingress", "egress-internal", "egress-external"):
        assert direction_allowed(setting, conn) is (conn in allowed)  # type: ignore[arg-type]


def test_traffic_filter() -> None:
    config = loads_config(
        textwrap.dedent(
            """\
            version: 2
            tap:
              direction: egress-external
              ignore_loopback: true
              filters:
                custom: [{exe: /usr/bin/curl}]
            """
        )
    )
    tf = TrafficFilter.from_config(config.tap)
    assert tf.captures(ingress=False, remote_ip="8.8.8.8", exe="/usr/bin/wget")
    assert not tf.captures(ingress=False, remote_ip="8.8.8.8", exe="/usr/bin/curl")
    assert not tf.captures(ingress=False, remote_ip="10.0.0.1", exe=None)
    assert not tf.captures(ingress=True, remote_ip="8.8.8.8", exe=None)
    assert not tf.captures(ingress=False, remote_ip="127.0.0.1", exe=None)
    everything = TrafficFilter.from_config(loads_config("version: 2\n").tap)
    assert everything.captures(ingress=False, remote_ip="127.0.0.1", exe="/usr/bin/curl")


def test_stack_selector() -> None:
    config = loads_config(
        textwrap.dedent(
            """\
            version: 2
            stacks:
              light: {plugins: []}
              full: {plugins: []}
            tap:
              http: {stack: light}
              endpoints:
                - domain: api.example.com
                  http: {stack: full}
                - domain: "*.telemetry.example.com"
                  http: {stack: none}
                - domain: "*.example.com"
                  http: {stack: full}
            """
        )
    )
    sel = StackSelector.from_config(config.tap)
    assert sel.select("api.example.com") == "full"
    assert sel.select("API.Example.COM.") == "full"
    assert sel.select("api.example.com:8443") == "full"
    assert sel.select("x.telemetry.example.com") is None
    assert sel.select("www.example.com") == "full"
    assert sel.select("example.com") == "light"
    assert sel.select("other.org") == "light"
    assert sel.select(None) == "light"
    assert StackSelector("none", []).select("x") is None


def test_own_services_by_address() -> None:
    own = OwnServices.from_urls(["http://127.0.0.1:8428", "https://localhost", "not a url:x"])
    assert own
    # the agent (or anyone) posting to Pulse, and Pulse's accepted side of it
    assert own.involves(ingress=False, local=("127.0.0.1", 50000), remote=("127.0.0.1", 8428))
    assert own.involves(ingress=True, local=("127.0.0.1", 8428), remote=("127.0.0.1", 50000))
    assert own.involves(ingress=False, local=("::1", 50000), remote=("::1", 443))  # localhost: both families
    assert not own.involves(ingress=False, local=("127.0.0.1", 50000), remote=("127.0.0.1", 8429))
    assert not own.involves(ingress=True, local=("127.0.0.1", 50000), remote=("127.0.0.1", 8428))
    assert not OwnServices.from_urls([])
