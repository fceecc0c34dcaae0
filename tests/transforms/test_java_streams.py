"""Java plaintext streams tied to conntrack's connections (real Conntrack, records as the channel makes them)."""

from __future__ import annotations

from qtap_async.bpf import abi
from qtap_async.events.kernel import ConnClose, ConnOpen, JavaData
from qtap_async.transforms.conntrack import Conntrack

PID = 4242


def _open(conn_id: int, lport: int, rport: int, pid: int = PID) -> ConnOpen:
    return ConnOpen(1, conn_id, pid, pid, 0, 2, 1, False, lport, rport, "127.0.0.1", "127.0.0.1", 9, "java")


def _chunk(stream: int, payload: bytes, *, lport: int = 0, rport: int = 443, offset: int = 0,
           pid: int = PID, direction: int = 0) -> JavaData:
    return JavaData(5, stream, pid, 1, offset, direction, 2 if lport == 0 else 1, lport, rport, payload)


def _feed(ct: Conntrack, *recs: object) -> None:
    for r in recs:
        ct.handle(r)  # type: ignore[arg-type]


def test_socket_stream_goes_to_the_connection_with_both_ports() -> None:
    ct = Conntrack()
    _feed(ct, _open(1, 50000, 443), _open(2, 50001, 443))
    _feed(ct, _chunk(9, b"GET /", lport=50001), _chunk(9, b" HTTP/1.1", lport=50001, offset=5))
    c = ct.conns[2]
    assert c.tls and 2 * 0 + abi.SOURCE_JAVA * 2 in c.streams  # the Java stream of direction send
    assert ct.java.stats.chunks == 2 and ct.java.stats.unmatched == 0


def test_engine_stream_needs_a_unique_candidate() -> None:
    ct = Conntrack()
    _feed(ct, _open(1, 50000, 443), _open(2, 50001, 443))
    _feed(ct, _chunk(9, b"x"))  # two connections to :443 of that process, neither tied yet: not guessed
    assert ct.java.stats.ambiguous == 1 and ct.java.stats.chunks == 0
    ct2 = Conntrack()
    _feed(ct2, _open(1, 50000, 443), _open(2, 50001, 8443))
    _feed(ct2, _chunk(9, b"x"), _chunk(10, b"y", rport=8443))
    assert ct2.java.stats.chunks == 2
    assert abi.SOURCE_JAVA * 2 in ct2.conns[1].streams and abi.SOURCE_JAVA * 2 in ct2.conns[2].streams


def test_other_processes_and_closed_connections() -> None:
    ct = Conntrack()
    _feed(ct, _open(1, 50000, 443))
    _feed(ct, _chunk(9, b"x", pid=PID + 1))  # a JVM reports only its own connections
    assert ct.java.stats.unmatched == 1
    _feed(ct, _chunk(9, b"x"), ConnClose(6, 1, PID, 0, 0, 1), _chunk(9, b"y", offset=1))
    assert ct.java.stats.chunks == 1 and ct.java.stats.late == 1
