"""DNS messages: UDP datagrams and TCP streams (recorded from dig, hand-made, hostile)."""

from __future__ import annotations

import struct

from qtap_async.protocols import (
    Direction,
    DnsMessage,
    ParseError,
    parse_dns_datagram,
)
from tests.protocols.helpers import errors, run
from tests.protocols.record import load, replay

C, S = Direction.SEND, Direction.RECV


def test_recorded_dns_tcp() -> None:
    out = replay(load("dns_tcp_dig"))
    q, a = out
    assert isinstance(q, DnsMessage) and isinstance(a, DnsMessage)
    assert not q.is_response and q.qname == "www.example.test." and q.qtype == "A" and q.direction == C
    assert a.is_response and a.id == q.id and a.rcode == "NOERROR" and a.transport == "tcp"
    assert [(x.name, x.type, x.data) for x in a.answers] == [
        ("www.example.test.", "CNAME", "edge.example.test."),
        ("edge.example.test.", "CNAME", "cdn.net."),
        ("cdn.net.", "A", "192.0.2.1"),
        ("cdn.net.", "A", "192.0.2.2"),
    ]
    assert [x.ttl for x in a.answers] == [300, 60, 30, 30]


def test_recorded_dns_udp() -> None:
    rec = load("dns_udp_dig")
    q = parse_dns_datagram(rec.events[0][2] or b"")
    a = parse_dns_datagram(memoryview(rec.events[1][2] or b""))
    assert isinstance(q, DnsMessage) and isinstance(a, DnsMessage)
    assert q.transport == "udp" and a.answers[-1].data == "192.0.2.2"


def _msg(answers: bytes, an: int, flags: int = 0x8180) -> bytes:
    q = b"\x03www\x07example\x03com\x00\x00\x1c\x00\x01"
    return struct.pack(">HHHHHH", 7, flags, 1, an, 0, 0) + q + answers


def test_dns_aaaa_nxdomain_and_unknown_types() -> None:
    aaaa = b"\xc0\x0c\x00\x1c\x00\x01\x00\x00\x00\x05\x00\x10" + bytes.fromhex("20010db8000000000000000000000001")
    other = b"\xc0\x0c\x01\x01\x00\x01\x00\x00\x00\x05\x00\x02\xab\xcd"
    m = parse_dns_datagram(_msg(aaaa + other, 2))
    assert isinstance(m, DnsMessage) and m.qtype == "AAAA"
    assert [(x.type, x.data) for x in m.answers] == [("AAAA", "2001:db8::1"), ("CAA", "abcd")]
    nx = parse_dns_datagram(_msg(b"", 0, flags=0x8183))
    assert isinstance(nx, DnsMessage) and nx.rcode == "NXDOMAIN"


def test_dns_hostile_inputs() -> None:
    loop = struct.pack(">HHHHHH", 1, 0, 1, 0, 0, 0) + b"\xc0\x0c"  # pointer to itself
    fwd = struct.pack(">HHHHHH", 1, 0, 1, 0, 0, 0) + b"\xc0\x20" + b"\0" * 30  # forward pointer
    for bad in (b"", b"\x00" * 11, loop, fwd, _msg(b"\xc0\x0c\x00\x01", 1), _msg(b"", 5)):
        r = parse_dns_datagram(bad)
        assert isinstance(r, ParseError) and r.protocol == "dns"


def test_dns_tcp_split_and_gap() -> None:
    m = _msg(b"", 0)
    framed = len(m).to_bytes(2, "big") + m
    out = run([(S, framed[:1]), (S, framed[1:7]), (S, framed[7:] + framed)], local_port=53, remote_port=5353)
    assert [type(x) for x in out] == [DnsMessage, DnsMessage]
    out = run([(C, framed[:5]), (C, 3), (C, framed)], remote_port=53)
    assert any("framing lost" in e.reason for e in errors(out))
