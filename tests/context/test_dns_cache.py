"""The DNS cache learns names from answers as the DNS parser decodes them off the wire: per process first,
then host-wide, expiring with the record's TTL (clamped), bounded."""

from __future__ import annotations

import socket
import struct

from qtap_async.context.dns_cache import MAX_TTL_S, MIN_TTL_S, DnsCache
from qtap_async.events.dns import DnsMessage
from qtap_async.protocols.dns import parse_dns_message

A, AAAA, CNAME = 1, 28, 5
NOERROR, NXDOMAIN = 0, 3


def _name(name: str) -> bytes:
    return b"".join(bytes([len(p)]) + p.encode() for p in name.rstrip(".").split(".")) + b"\0"


def _rr(name: str, rtype: int, ttl: int, rdata: bytes) -> bytes:
    return _name(name) + struct.pack("!HHIH", rtype, 1, ttl, len(rdata)) + rdata


def _wire(qname: str, answers: list[bytes], *, response: bool = True, rcode: int = NOERROR, qtype: int = A) -> bytes:
    flags = (0x8180 if response else 0x0100) | rcode
    header = struct.pack("!HHHHHH", 0x1234, flags, 1, len(answers), 0, 0)
    return header + _name(qname) + struct.pack("!HH", qtype, 1) + b"".join(answers)


def _a(name: str, ip: str, ttl: int = 300) -> bytes:
    return _rr(name, A, ttl, socket.inet_aton(ip))


def _aaaa(name: str, ip: str, ttl: int = 300) -> bytes:
    return _rr(name, AAAA, ttl, socket.inet_pton(socket.AF_INET6, ip))


def _learn(cache: DnsCache, pid: int, wire: bytes, now: float) -> None:
    msg = parse_dns_message(wire)
    assert isinstance(msg, DnsMessage), msg
    cache.learn(pid, msg, now=now)


def test_the_resolving_process_first_then_anyone() -> None:
    cache = DnsCache()
    _learn(cache, 10, _wire("api.example.", [_a("api.example.", "10.0.0.9"), _aaaa("api.example.", "2001:db8::9")]),
           now=100.0)
    assert cache.learned == 2
    assert cache.lookup_source(10, "10.0.0.9", now=100.0) == ("api.example", "pid")  # the trailing dot goes
    assert cache.lookup_source(10, "2001:db8::9", now=100.0) == ("api.example", "pid")
    assert cache.lookup_source(11, "10.0.0.9", now=100.0) == ("api.example", "host")
    assert cache.lookup(11, "10.0.0.10", now=100.0) == ""
    assert cache.lookup_source(11, "10.0.0.10", now=100.0) == ("", "")
    # Another process resolves another name to the same address: each process keeps its own, the host the last.
    _learn(cache, 20, _wire("cdn.example.", [_a("cdn.example.", "10.0.0.9")]), now=101.0)
    assert cache.lookup_source(10, "10.0.0.9", now=101.0) == ("api.example", "pid")
    assert cache.lookup_source(20, "10.0.0.9", now=101.0) == ("cdn.example", "pid")
    assert cache.lookup_source(30, "10.0.0.9", now=101.0) == ("cdn.example", "host")


def test_only_address_answers_of_successful_responses_teach() -> None:
    cache = DnsCache()
    _learn(cache, 1, _wire("q.example.", [], response=False), now=0.0)
    _learn(cache, 1, _wire("gone.example.", [_a("gone.example.", "10.0.0.1")], rcode=NXDOMAIN), now=0.0)
    # A CNAME chain: the CNAME record teaches nothing, the A record at its end is filed under the asked name.
    _learn(cache, 1, _wire("alias.example.", [_rr("alias.example.", CNAME, 300, _name("target.example.")),
                                              _a("target.example.", "10.0.0.2")]), now=0.0)
    assert cache.learned == 1
    assert cache.lookup(1, "10.0.0.1", now=0.0) == ""
    assert cache.lookup(1, "10.0.0.2", now=0.0) == "alias.example"
    assert cache.lookup(1, "target.example", now=0.0) == ""


def test_entries_expire_with_the_ttl_clamped() -> None:
    cache = DnsCache()
    _learn(cache, 1, _wire("short.example.", [_a("short.example.", "10.0.0.1", ttl=5)]), now=1000.0)
    _learn(cache, 1, _wire("long.example.", [_a("long.example.", "10.0.0.2", ttl=86400)]), now=1000.0)
    _learn(cache, 1, _wire("mid.example.", [_a("mid.example.", "10.0.0.3", ttl=120)]), now=1000.0)
    # A 5 s TTL lives MIN_TTL_S: a connection opened just after a short-TTL answer still gets the name.
    assert cache.lookup(1, "10.0.0.1", now=1000.0 + MIN_TTL_S) == "short.example"
    assert cache.lookup(2, "10.0.0.1", now=1000.0 + MIN_TTL_S + 1) == ""
    assert cache.lookup(1, "10.0.0.3", now=1000.0 + 120) == "mid.example"
    assert cache.lookup(1, "10.0.0.3", now=1000.0 + 121) == ""
    # A day-long TTL is cut to MAX_TTL_S: addresses get reused.
    assert cache.lookup(1, "10.0.0.2", now=1000.0 + MAX_TTL_S) == "long.example"
    assert cache.lookup(1, "10.0.0.2", now=1000.0 + MAX_TTL_S + 1) == ""


def test_bounded_oldest_written_goes_first() -> None:
    cache = DnsCache(max_entries=2)
    for i in range(3):
        _learn(cache, 1, _wire(f"n{i}.example.", [_a(f"n{i}.example.", f"10.0.1.{i}")]), now=0.0)
    assert [cache.lookup(1, f"10.0.1.{i}", now=0.0) for i in range(3)] == ["", "n1.example", "n2.example"]
    assert [cache.lookup(9, f"10.0.1.{i}", now=0.0) for i in range(3)] == ["", "n1.example", "n2.example"]
    # Learning an address again makes it the newest.
    _learn(cache, 1, _wire("n1.example.", [_a("n1.example.", "10.0.1.1")]), now=0.0)
    _learn(cache, 1, _wire("n3.example.", [_a("n3.example.", "10.0.1.3")]), now=0.0)
    assert cache.lookup(1, "10.0.1.1", now=0.0) == "n1.example"
    assert cache.lookup(1, "10.0.1.2", now=0.0) == ""
