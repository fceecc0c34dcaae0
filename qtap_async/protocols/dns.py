"""DNS messages (RFC 1035): UDP datagrams and TCP length-prefixed streams.

Names follow compression pointers (bounded: a pointer must point backwards and at most 128 labels
are followed, so loops end). Answers of type A, AAAA, CNAME (and NS, PTR, DNAME, MX, TXT) are
decoded; other types keep their rdata as hex.
"""

from __future__ import annotations

import ipaddress
import struct

from qtap_async.errors import ProtocolError
from qtap_async.events.dns import DnsAnswer, DnsMessage
from qtap_async.events.parse_error import ParseError
from qtap_async.protocols.limits import Limits

__all__ = ["DnsTcpConnection", "parse_dns_datagram", "parse_dns_message"]

_HDR = struct.Struct(">HHHHHH")
_RR = struct.Struct(">HHIH")
_QT = struct.Struct(">HH")

TYPES = {1: "A", 2: "NS", 5: "CNAME", 6: "SOA", 12: "PTR", 15: "MX", 16: "TXT", 28: "AAAA", 33: "SRV",
         39: "DNAME", 41: "OPT", 43: "DS", 46: "RRSIG", 47: "NSEC", 48: "DNSKEY", 64: "SVCB", 65: "HTTPS",
         255: "ANY", 257: "CAA"}
RCODES = {0: "NOERROR", 1: "FORMERR", 2: "SERVFAIL", 3: "NXDOMAIN", 4: "NOTIMP", 5: "REFUSED",
          6: "YXDOMAIN", 7: "YXRRSET", 8: "NXRRSET", 9: "NOTAUTH", 10: "NOTZONE"}


def _tname(t: int) -> str:
    return TYPES.get(t) or f"TYPE{t}"


def _name(msg: bytes, pos: int) -> tuple[str, int]:
    """Read a possibly compressed name at ``pos``; returns (name, position after it)."""
    labels: list[str] = []
    end = -1
    hops = 0
    n = len(msg)
    while True:
        if pos >= n:
            raise ProtocolError("name past the end of the message")
        ln = msg[pos]
        if ln == 0:
            pos += 1
            break
        if ln & 0xC0 == 0xC0:
            if pos + 1 >= n:
                raise ProtocolError("truncated compression pointer")
            ptr = ((ln & 0x3F) << 8) | msg[pos + 1]
            if end < 0:
                end = pos + 2
            if ptr >= pos:
                raise ProtocolError("compression pointer does not point backwards")
            pos = ptr
            hops += 1
            if hops > 128:
                raise ProtocolError("compression pointer loop")
            continue
        if ln & 0xC0:
            raise ProtocolError("unsupported label type")
        if pos + 1 + ln > n:
            raise ProtocolError("label past the end of the message")
        labels.append(msg[pos + 1 : pos + 1 + ln].decode("ascii", "backslashreplace"))
        if len(labels) > 128:
            raise ProtocolError("name too long")
        pos += 1 + ln
    return (".".join(labels) + "." if labels else "."), (end if end >= 0 else pos)


def _rdata(msg: bytes, typ: int, start: int, length: int) -> str:
    rd = msg[start : start + length]
    if typ == 1 and length == 4:
        return ".".join(str(b) for b in rd)
    if typ == 28 and length == 16:
        return str(ipaddress.IPv6Address(rd))
    if typ in (2, 5, 12, 39):
        return _name(msg, start)[0]
    if typ == 15 and length >= 3:
        return f"{int.from_bytes(rd[:2], 'big')} {_name(msg, start + 2)[0]}"
    if typ == 16:
        parts = []
        i = 0
        while i < length:
            ln = rd[i]
            parts.append(rd[i + 1 : i + 1 + ln].decode("utf-8", "replace"))
            i += 1 + ln
        return "".join(parts)
    return rd.hex()


def parse_dns_message(msg: bytes, *, transport: str = "udp", direction: int | None = None,
                      ts_ns: int = 0) -> DnsMessage | ParseError:
    """Parse one DNS message; never raises."""
    try:
        if len(msg) < 12:
            raise ProtocolError("shorter than a DNS header")
        ident, flags, qd, an, _ns, _ar = _HDR.unpack_from(msg, 0)
        pos = 12
        qname = qtype = None
        for i in range(qd):
            name, pos = _name(msg, pos)
            if pos + 4 > len(msg):
                raise ProtocolError("truncated question")
            t, _cls = _QT.unpack_from(msg, pos)
            pos += 4
            if i == 0:
                qname, qtype = name, _tname(t)
        answers = []
        for _ in range(an):
            name, pos = _name(msg, pos)
            if pos + 10 > len(msg):
                raise ProtocolError("truncated resource record")
            t, _cls, ttl, rdlen = _RR.unpack_from(msg, pos)
            pos += 10
            if pos + rdlen > len(msg):
                raise ProtocolError("rdata past the end of the message")
            answers.append(DnsAnswer(name=name, type=_tname(t), ttl=ttl, data=_rdata(msg, t, pos, rdlen)))
            pos += rdlen
        rc = flags & 0xF
        return DnsMessage(
            id=ident,
            is_response=bool(flags & 0x8000),
            opcode=(flags >> 11) & 0xF,
            rcode=RCODES.get(rc) or f"RCODE{rc}",
            truncated=bool(flags & 0x0200),
            qname=qname,
            qtype=qtype,
            qdcount=qd,
            answers=answers,
            transport=transport,
            direction=direction,
            ts_ns=ts_ns,
        )
    except (ProtocolError, ValueError, IndexError, struct.error) as e:
        return ParseError(reason=f"dns: {e}", direction=direction, offset=0, ts_ns=ts_ns, protocol="dns")


def parse_dns_datagram(data: bytes | memoryview, *, direction: int | None = None,
                       ts_ns: int = 0) -> DnsMessage | ParseError:
    """Parse a DNS message carried in one UDP datagram."""
    return parse_dns_message(bytes(data), transport="udp", direction=direction, ts_ns=ts_ns)


class DnsTcpConnection:
    """DNS over TCP: each direction is a sequence of (2-byte length, message)."""

    protocol = "dns"
    switch_to = None

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.bufs = [b"", b""]
        self.first_ts = [0, 0]
        self.offsets = [0, 0]
        self.dead = [False, False]

    def feed(self, direction: int, data: bytes, ts: int) -> list[object]:
        if self.dead[direction]:
            return []
        buf = self.bufs[direction]
        if not buf:
            self.first_ts[direction] = ts
        buf += data
        out: list[object] = []
        pos = 0
        while len(buf) - pos >= 2:
            ln = (buf[pos] << 8) | buf[pos + 1]
            if len(buf) - pos - 2 < ln:
                break
            msg = buf[pos + 2 : pos + 2 + ln]
            r = parse_dns_message(msg, transport="tcp", direction=direction,
                                  ts_ns=self.first_ts[direction] if pos == 0 else ts)
            if isinstance(r, ParseError):
                r = ParseError(reason=r.reason, direction=direction, offset=self.offsets[direction] + pos,
                               ts_ns=ts, protocol="dns")
            out.append(r)
            pos += 2 + ln
        self.offsets[direction] += pos
        self.bufs[direction] = buf[pos:]
        if pos:
            self.first_ts[direction] = ts
        return out

    def gap(self, direction: int, nbytes: int, ts: int) -> list[object]:
        if self.dead[direction]:
            return []
        # length prefixes cannot be found again after a hole: stop reading this direction
        self.dead[direction] = True
        self.bufs[direction] = b""
        return [ParseError(reason=f"gap of {nbytes} bytes: DNS message framing lost", direction=direction,
                           offset=self.offsets[direction], ts_ns=ts, protocol="dns")]

    def close(self, ts: int) -> list[object]:
        out: list[object] = []
        for d in (0, 1):
            if self.bufs[d] and not self.dead[d]:
                out.append(ParseError(reason="connection closed inside a DNS message", direction=d,
                                      offset=self.offsets[d], ts_ns=ts, protocol="dns"))
            self.dead[d] = True
            self.bufs[d] = b""
        return out
