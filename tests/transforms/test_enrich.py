"""The enrichment stage on conntrack's real output: connections named at open (DNS, hosts), by SNI and by
Host, DNS answers learnt for later connections, and the documented precedence end to end."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from qtap_async.context.domains import HostsFiles
from qtap_async.events.connection import ConnectionEvent
from qtap_async.events.dns import DnsAnswer, DnsMessage
from qtap_async.events.http import HttpTransaction
from qtap_async.events.kernel import ConnClose
from qtap_async.events.tls import TlsClientHello
from qtap_async.transforms.conntrack import Conntrack, Parsed
from qtap_async.transforms.enrich import Enrich
from tests.transforms.test_conntrack import _ct, _data, _open


def _answer(name: str, ip: str) -> DnsMessage:
    return DnsMessage(id=1, is_response=True, qname=name + ".", answers=[DnsAnswer(name=name, type="A", ttl=300,
                                                                                   data=ip)])


def _close(conn_id: int) -> Any:
    return ConnClose(50, conn_id, 5, 0, 0, 1)


def _enrich(ct: Conntrack, tmp_path: Path | None = None) -> Enrich:
    # No hosts file names 10.0.0.1 unless a test writes one: the machine's /etc/hosts must not decide.
    root = tmp_path or Path("/nonexistent-qtap-test")
    return Enrich(ct, hosts=HostsFiles(proc=str(root / "proc"), host_file=str(root / "hosts")))


def _feed(en: Enrich, conn: Any, rec: Any) -> None:
    en.apply([Parsed(conn, 0, rec)])


def test_egress_and_ingress_agree_when_another_process_resolved_the_address() -> None:
    """The bug of issue 19: another process's DNS answer named the egress record while the request's own
    Host header named the ingress one. Host beats another process's DNS on both ends now."""
    ct, _ = _ct()
    en = _enrich(ct)
    en.dns.learn(999, _answer("cdn.other.test", "10.0.0.1"))
    en.apply(ct.handle(_open(1, role=1, lport=40000, rport=8080, pid=5)))  # egress to 10.0.0.1:8080
    en.apply(ct.handle(_open(2, role=2, lport=8080, rport=40000, pid=6)))  # the accepted end
    egress, ingress = ct.conns[1], ct.conns[2]
    assert egress.domain_source == "dns_host"
    tx = HttpTransaction(protocol="http/1.1", method="GET", authority="api.mine.test:8080", path="/", status=200)
    for conn in (egress, ingress):
        _feed(en, conn, tx)
        assert (conn.domain, conn.domain_source) == ("api.mine.test", "host")
    _feed(en, egress, TlsClientHello(direction=0, ts_ns=1, sni="sni.mine.test"))
    assert (egress.domain, egress.domain_source) == ("sni.mine.test", "sni")
    (close,) = [e for e in en.apply(ct.handle(_close(1))) if getattr(e, "event", "") == "close"]
    assert (close.domain, close.domain_source) == ("sni.mine.test", "sni")


def test_the_open_event_carries_the_name_known_at_open_and_conntrack_alone_knows_none() -> None:
    ct, _ = _ct()
    en = _enrich(ct)
    (bare,) = ct.handle(_open(1))
    assert (bare.domain, bare.domain_source) == ("", "")  # conntrack names nothing by itself
    en.dns.learn(1, _answer("api.test", "10.0.0.1"))  # pid 1 (the opener) resolved the server's address
    (opened,) = en.apply(ct.handle(_open(2)))
    assert isinstance(opened, ConnectionEvent) and (opened.domain, opened.domain_source) == ("api.test", "dns")
    assert (ct.conns[2].domain, ct.conns[2].domain_source) == ("api.test", "dns")


def test_a_dns_answer_on_a_udp_connection_names_the_connections_opened_after_it() -> None:
    import struct

    ct, _ = _ct()
    en = _enrich(ct)
    en.apply(ct.handle(_open(1, rport=53, udp=True)))
    answer = (struct.pack("!HHHHHH", 7, 0x8180, 1, 1, 0, 0) + b"\x03www\x04test\x00" + struct.pack("!HH", 1, 1)
              + b"\xc0\x0c" + struct.pack("!HHIH", 1, 1, 60, 4) + bytes([10, 0, 0, 1]))
    out = en.apply(ct.handle(_data(1, 0, answer, direction=1)))
    assert [type(p.record) for p in out if isinstance(p, Parsed)] == [DnsMessage]
    (later,) = en.apply(ct.handle(_open(2)))
    assert (later.domain, later.domain_source) == ("www.test", "dns")


def test_hosts_file_names_at_open_and_a_resumed_connection_keeps_its_name(tmp_path: Path) -> None:
    (tmp_path / "hosts").write_text("10.0.0.1 from-hosts.test\n")
    ct, _ = _ct(idle_timeout_s=1.0)
    en = _enrich(ct, tmp_path)
    (opened,) = en.apply(ct.handle(_open(1)))
    assert (opened.domain, opened.domain_source) == ("from-hosts.test", "hosts")
    _feed(en, ct.conns[1], HttpTransaction(protocol="http/1.1", method="GET", authority="named.test", path="/"))
    en.apply(ct.sweep(5_000_000_000))  # evicted idle
    out = en.apply(ct.handle(_data(1, 10, b"x", ts=6_000_000_000)))
    (resumed,) = [e for e in out if isinstance(e, ConnectionEvent)]
    assert resumed.resumed and (resumed.domain, resumed.domain_source) == ("named.test", "host")


def test_ip_literal_hosts_and_empty_sni_name_nothing() -> None:
    ct, _ = _ct()
    en = _enrich(ct)
    en.apply(ct.handle(_open(1)))
    conn = ct.conns[1]
    _feed(en, conn, HttpTransaction(protocol="http/1.1", method="GET", authority="127.0.0.1:8080", path="/"))
    _feed(en, conn, TlsClientHello(direction=0, ts_ns=1, sni=""))
    assert (conn.domain, conn.domain_source) == ("", "")
