"""The command-line focus filters (cli/filters_cli.py: --port, --domain, --exe, --direction, --container)."""

from __future__ import annotations

import pytest

from cli.filters_cli import build_focus
from qtap_async.errors import ConfigError
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
