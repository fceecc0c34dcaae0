"""The agent on a hostile wire: the real agent (real BPF) captures traffic built to break parsers, sent
over loopback to real servers (the HTTP/1.1 peer, and a TCP server that reads everything and answers
with bytes of its own). After each case the agent is alive, an ordinary request right after it is
captured correctly, the case's own connections ended exactly as that case is expected to end (a
``parse_error`` of the named parser, a ``gap``, an incomplete transaction, or a connection nothing was
parsed on), and the agent's counters for it moved (``qtap_parse_errors_total{protocol}``, the stream
gaps, the bytes the kernel cut from over-long records); never a traceback, and RSS stays under a bound
computed from the agent's configured memory limits.

The random inputs are seeded: each case sends the same bytes every run, so its outcome is exact.
Loops are bounded in count and time; every address is 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import random
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest

from cli.run_cmd import RunFlags
from qtap_async.protocols.limits import DEFAULT_LIMITS
from qtap_async.telemetry import metrics
from qtap_async.topology.graph import AgentOptions
from tests.integration.harness import start_http_server

pytestmark = [pytest.mark.bpf, pytest.mark.timeout(900)]

ROOT = Path(__file__).resolve().parents[2]
CURL = "/usr/bin/curl"
RING_MIB = RunFlags().ring_buffer_mib  # passed to the agent explicitly below
# The most connections any case holds open at once (half_open's 200, plus the peers' own and curl's).
MAX_OPEN = 256
# The interpreter's own growth under load: allocator arenas, msgspec and asyncio buffers, the
# connection table's entries for the churn case's 50k connections (freed, not returned to the OS).
SLACK = 64 << 20


def rss_bound() -> int:
    """How far the agent's RSS may grow over its idle size, from its configured memory limits: both
    channels full (``raw_queue_bytes`` + ``out_queue_bytes``), the ring buffer touched end to end, and
    every connection open at once holding what ``protocols.limits.Limits`` lets a parser keep per
    direction (detection buffer, a header section, a body and an HPACK table), plus SLACK."""
    options, limits = AgentOptions(), DEFAULT_LIMITS
    per_direction = (limits.max_detect_bytes + limits.max_header_bytes + limits.max_body_bytes
                     + limits.max_hpack_table_bytes)
    return (options.raw_queue_bytes + options.out_queue_bytes + (RING_MIB << 20)
            + MAX_OPEN * 2 * per_direction + SLACK)


RSS_BOUND = rss_bound()
CHURN = 50_000
CHURN_MAX_S = 180.0
CHURNED: list[int] = []  # connections the churn case made (reported with the outcomes)


class SinkServer:
    """A real TCP server: reads whatever a client sends (discarding it) and answers each read with a few
    bytes, so both directions of the connection carry data."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(512)
        self.port = self.sock.getsockname()[1]
        self._stop = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._stop:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        conn.settimeout(30)
        with conn, contextlib.suppress(OSError):
            while data := conn.recv(65536):
                conn.sendall(b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"[: 1 + len(data) % 9])

    def close(self) -> None:
        self._stop = True
        self.sock.close()


class Agent:
    def __init__(self, tmp: Path) -> None:
        self.out, self.err = tmp / "stdout", tmp / "stderr"
        with self.out.open("wb") as o, self.err.open("wb") as e:
            self.proc = subprocess.Popen([sys.executable, "-m", "cli.main", "run", "--no-tls", "--level", "details",
                                          "--metrics-interval", "1",
                                          "--ring-buffer-mib", str(RING_MIB)], cwd=ROOT, stdout=o, stderr=e)
        self.wait(lambda: "capture attached" in self.log(), "attach")
        self._offset = 0
        self.events: list[dict[str, Any]] = []

    def log(self) -> str:
        return self.err.read_text(errors="replace")

    def rss(self) -> int:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise AssertionError("no VmRSS")

    def poll_events(self) -> list[dict[str, Any]]:
        with self.out.open("rb") as f:
            f.seek(self._offset)
            data = f.read()
        end = data.rfind(b"\n") + 1
        self._offset += end
        for line in data[:end].split(b"\n"):
            if line.strip():
                with contextlib.suppress(msgspec.DecodeError):
                    self.events.append(msgspec.json.decode(line))
        return self.events

    def wait(self, pred: Callable[[], bool], what: str, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while not pred():
            assert self.proc.poll() is None, f"agent died ({what}):\n{self.log()[-3000:]}"
            assert time.monotonic() < deadline, f"timed out: {what}\n{self.log()[-2000:]}"
            time.sleep(0.2)

    def counters(self) -> dict[str, int]:
        """The agent's newest counters line (it logs one every second)."""
        lines = [ln for ln in self.log().splitlines() if " metrics {" in ln]
        if not lines:
            return {}
        decoded: dict[str, int] = msgspec.json.decode(lines[-1].split(" metrics ", 1)[1])
        return decoded

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(120)


# ---- attacks: each returns the (client, server) ports of the connections it used ---------------------


Ends = tuple[int, int]  # (client port, server port) of one connection a case made


def _send(port: int, data: bytes, *, half_close: bool = True, read: bool = True) -> Ends:
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    local = int(s.getsockname()[1])
    with s, contextlib.suppress(OSError):
        s.sendall(data)
        if half_close:
            s.shutdown(socket.SHUT_WR)
        if read:
            s.settimeout(3)
            with contextlib.suppress(TimeoutError):
                while s.recv(65536):
                    pass
    return local, port


def h2_frame(ftype: int, flags: int, stream: int, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload))[1:] + bytes([ftype, flags]) + struct.pack(">I", stream) + payload


RNG = random.Random(18)  # the same "random" bytes every run
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
SETTINGS = h2_frame(4, 0, 0, b"")


def random_bytes(http: int, raw: int) -> list[Ends]:
    return [_send(http, RNG.randbytes(64 << 10)), _send(raw, RNG.randbytes(64 << 10))]


def huge_request_line(http: int, raw: int) -> list[Ends]:
    return [_send(http, b"GET /" + b"a" * (4 << 20) + b" HTTP/1.1\r\nHost: x\r\n\r\n")]


def header_flood(http: int, raw: int) -> list[Ends]:
    lines = b"".join(b"X-H%d: %d\r\n" % (i, i) for i in range(20_000))
    return [_send(http, b"GET /bytes?n=1 HTTP/1.1\r\nHost: x\r\n" + lines + b"\r\n")]


def chunk_overflow(http: int, raw: int) -> list[Ends]:
    head = b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    return [_send(http, head + b"FFFFFFFFFFFFFFFFFFFFFFFFFFFF\r\nabc\r\n0\r\n\r\n"),
            _send(http, head + b"-1\r\nabc\r\n0\r\n\r\n"),
            _send(http, head + b"1" * 5000 + b"\r\n")]


def h2_garbage_frames(http: int, raw: int) -> list[Ends]:
    return [_send(raw, PREFACE + SETTINGS + RNG.randbytes(32 << 10)),
            _send(raw, PREFACE + SETTINGS + h2_frame(0xEE, 0xFF, 0x7FFFFFFF, RNG.randbytes(16 << 10)))]


def hpack_table_size_bomb(http: int, raw: int) -> list[Ends]:
    # A dynamic table size update to 2^32-1 (5-bit prefix integer), then a literal with a 1 MiB value.
    size_update = b"\x3f" + b"\xe1\xff\xff\xff\x0f"
    big = b"\x40\x01x" + b"\x7f" + b"\x81\xff\x3f" + b"v" * (1 << 20)
    block = size_update + big
    frames = [h2_frame(1, 0x4 | 0x1, 1, block[:16384])]
    frames += [h2_frame(9, 0, 1, block[i:i + 16384]) for i in range(16384, len(block), 16384)]
    return [_send(raw, PREFACE + SETTINGS + b"".join(frames))]


def continuation_flood(http: int, raw: int) -> list[Ends]:
    frames = [h2_frame(1, 0, 1, b"\x82\x86\x84")]  # HEADERS without END_HEADERS
    frames += [h2_frame(9, 0, 1, b"\x40\x01a\x01b") for _ in range(20_000)]
    return [_send(raw, PREFACE + SETTINGS + b"".join(frames))]


def stream_id_exhaustion(http: int, raw: int) -> list[Ends]:
    frames = [h2_frame(1, 0x5, sid, b"\x82\x86\x84\x41\x01x") for sid in range(1, 40_001, 2)]
    frames.append(h2_frame(1, 0x5, 0x7FFFFFFF, b"\x82\x86\x84\x41\x01x"))
    frames.append(h2_frame(1, 0x5, 3, b"\x82\x86\x84\x41\x01x"))  # a reused, lower id
    return [_send(raw, PREFACE + SETTINGS + b"".join(frames))]


def settings_flood(http: int, raw: int) -> list[Ends]:
    one = h2_frame(4, 0, 0, struct.pack(">HI", 4, 65535) * 6)
    return [_send(raw, PREFACE + one * 20_000)]


def tls_lying_lengths(http: int, raw: int) -> list[Ends]:
    record = b"\x16\x03\x01\xff\xff" + b"\x01\xff\xff\xff" + RNG.randbytes(200)  # record and handshake lie
    inner = b"\x01\x00\x00\x30" + b"\x03\x03" + RNG.randbytes(32) + b"\xff" + RNG.randbytes(9)  # session id 255
    return [_send(raw, record), _send(raw, b"\x16\x03\x01\x00\x34" + inner),
            _send(raw, b"\x16\x03\x01\x40\x00" + RNG.randbytes(1 << 14) * 4)]


def half_open(http: int, raw: int) -> list[Ends]:
    socks: list[socket.socket] = []
    ports: list[Ends] = []
    for i in range(200):
        s = socket.create_connection(("127.0.0.1", http if i % 2 else raw), timeout=10)
        s.sendall(b"GET /bytes?n=5 HTTP/1.1\r\nHost: x\r\nX-Partial: " if i % 2 else PREFACE)
        s.shutdown(socket.SHUT_WR)
        socks.append(s)
        ports.append((int(s.getsockname()[1]), http if i % 2 else raw))
    time.sleep(1)
    for s in socks:
        s.close()
    return ports


def churn(http: int, raw: int) -> list[Ends]:
    deadline = time.monotonic() + CHURN_MAX_S
    n = 0
    while n < CHURN and time.monotonic() < deadline:
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # RST: no TIME_WAIT pile
        with contextlib.suppress(OSError):
            s.connect(("127.0.0.1", raw))
            if n % 10 == 0:
                s.send(b"GET / HTTP/1.1\r\n\r\n")
        s.close()
        n += 1
    assert n >= 10_000, n  # the time bound is a guard, not the expected end
    CHURNED.append(n)
    return []


CASES: list[Callable[[int, int], list[Ends]]] = [
    random_bytes, huge_request_line, header_flood, chunk_overflow, h2_garbage_frames, hpack_table_size_bomb,
    continuation_flood, stream_id_exhaustion, settings_flood, tls_lying_lengths, half_open, churn,
]


# ---- the run ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def peers() -> Iterator[tuple[int, int]]:
    proc, http = start_http_server()
    raw = SinkServer()
    try:
        yield http, raw.port
    finally:
        raw.close()
        proc.kill()
        proc.wait()


def outcome(events: list[dict[str, Any]], ends: set[Ends]) -> set[str]:
    """How the case's connections ended, from the agent's own events about them. A connection is the
    case's when both its ports are (the host's other traffic reuses ephemeral ports)."""
    pairs = {frozenset(e) for e in ends}
    conns = {e["conn_id"] for e in events if e.get("type") == "connection"
             and frozenset((e.get("src_port"), e.get("dst_port"))) in pairs}
    seen = set()
    for e in events:
        if e.get("conn_id") not in conns:
            continue
        t = e.get("type")
        if t == "parse_error":
            seen.add(f"parse_error:{e.get('protocol')}")
        elif t == "gap":
            seen.add("gap")
        elif t == "http_transaction":
            seen.add("incomplete" if e.get("incomplete") else "transaction")
        elif t == "connection" and e.get("event") == "close" and e.get("protocol") in ("", "unknown", None):
            seen.add("not_parsed")
    return seen


P_HTTP1 = metrics.PARSE_ERRORS.key(protocol="http1")
P_HTTP2 = metrics.PARSE_ERRORS.key(protocol="http2")
P_TLS = metrics.PARSE_ERRORS.key(protocol="tls")
GAPS = metrics.STREAM_GAPS.name
CUT = metrics.KERNEL["truncated_bytes"].name  # payload the kernel cut from records over the chunk size
CLOSED = metrics.CONNECTIONS_CLOSED.name
OPENED = metrics.CONNECTIONS_OPENED.name
RING_DROPS = metrics.KERNEL["drop_ringbuf"].name
H1 = metrics.TRANSACTIONS.key(protocol="http/1.1")
H2C = metrics.TRANSACTIONS.key(protocol="h2c")


class Expect(msgspec.Struct, frozen=True):
    """How a case's connections must end (exactly), and the least each counter must move by."""

    outcome: frozenset[str]
    counters: dict[str, int]


def _e(outcome: set[str], **counters: int) -> Expect:
    return Expect(frozenset(outcome), counters)


_HEAD_CUT = {"gap", "incomplete", "parse_error:http1"}
# Each case as the agent really reports it: the outcome from its events about the case's connections, and
# the least each counter moves by (as measured; the counters are host-wide, so other traffic only adds).
# Over loopback the agent sees both ends of a connection, so most errors are counted once per end.
EXPECTED: dict[str, Expect] = {
    # Nothing detected on either connection: closed with protocol unknown; no parser ran, none counted.
    "random_bytes": _e({"not_parsed"}, **{CLOSED: 2}),
    # The kernel cuts the 4 MiB head (a gap), the parser gives up at max_header_bytes, the exchange is incomplete.
    "huge_request_line": _e(_HEAD_CUT, **{P_HTTP1: 3, GAPS: 1, CUT: 3 << 20}),
    "header_flood": _e(_HEAD_CUT, **{P_HTTP1: 2, GAPS: 1, CUT: 128 << 10}),
    "chunk_overflow": _e({"incomplete", "parse_error:http1"}, **{P_HTTP1: 6}),
    "h2_garbage_frames": _e({"parse_error:http2"}, **{P_HTTP2: 6}),
    "hpack_table_size_bomb": _e({"gap", "parse_error:http2"}, **{P_HTTP2: 2, GAPS: 1, CUT: 512 << 10}),
    "continuation_flood": _e({"gap", "parse_error:http2"}, **{P_HTTP2: 3, GAPS: 1, CUT: 128 << 10}),
    # Streams up to max_concurrent_streams are parsed (incomplete: no response), the rest refused.
    "stream_id_exhaustion": _e({"gap", "incomplete", "parse_error:http2"},
                               **{P_HTTP2: 5, GAPS: 1, CUT: 128 << 10, H2C: DEFAULT_LIMITS.max_concurrent_streams}),
    "settings_flood": _e({"gap", "parse_error:http2"}, **{P_HTTP2: 3, GAPS: 1, CUT: 512 << 10}),
    # The lying ClientHellos are tls parse errors; the records nothing recognises end not parsed.
    "tls_lying_lengths": _e({"not_parsed", "parse_error:tls"}, **{P_TLS: 2}),
    # 100 partial HTTP/1 heads (incomplete transactions) and 100 bare h2 prefaces (cut short: http2 errors).
    "half_open": _e({"incomplete", "parse_error:http2"}, **{P_HTTP2: 100, H1: 100, CLOSED: 200}),
    "churn": _e(set(), **{OPENED: CHURN, CLOSED: CHURN}),  # replaced by the count it made
}


def moves(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    return {k: v - before.get(k, 0) for k, v in after.items() if isinstance(v, int) and v != before.get(k, 0)}


def short_of(expect: Expect, moved: dict[str, int]) -> dict[str, tuple[int, int]]:
    """The counters that have not moved enough yet: name -> (moved, needed)."""
    return {k: (moved.get(k, 0), n) for k, n in expect.counters.items() if moved.get(k, 0) < n}


def test_agent_survives_a_hostile_wire(peers: tuple[int, int], tmp_path: Path) -> None:
    assert [c.__name__ for c in CASES] == list(EXPECTED)
    http, raw = peers
    agent = Agent(tmp_path)
    results: dict[str, Any] = {}
    failures: dict[str, Any] = {}
    try:
        agent.wait(lambda: bool(agent.counters()), "the first counters line")
        base = agent.rss()
        peak = base
        for case in CASES:
            name = case.__name__
            expect = EXPECTED[name]
            before = agent.counters()
            ports = set(case(http, raw))
            # The ordinary request right after: captured, complete and correct.
            mark = f"after-{name}"
            subprocess.run([CURL, "-sS", "-o", "/dev/null", f"http://127.0.0.1:{http}/bytes?n=321&m={mark}"],
                           check=True, timeout=60)

            def ok(mark: str = mark) -> bool:
                return any(e.get("type") == "http_transaction" and mark in (e.get("path") or "")
                           and e.get("status") == 200 and e.get("response_body_size") == 321
                           and not e.get("incomplete") for e in agent.poll_events())

            agent.wait(ok, f"the request after {name}", timeout=240)
            peak = max(peak, agent.rss())
            if name == "churn":  # its count is the connections it made (bounded in time, checked above)
                expect = _e(set(), **{OPENED: CHURNED[-1], CLOSED: CHURNED[-1]})

            def accounted(ports: set[Ends] = ports, want: frozenset[str] = expect.outcome) -> bool:
                return outcome(agent.poll_events(), ports) >= want

            def counted(expect: Expect = expect, before: dict[str, int] = before) -> bool:
                return not short_of(expect, moves(before, agent.counters()))

            # Bounded waits for its events and its counters (a few metrics lines); the check below says
            # what is missing when one ran out.
            with contextlib.suppress(AssertionError):
                agent.wait(accounted, f"{name} accounted", timeout=120)
            with contextlib.suppress(AssertionError):
                agent.wait(counted, f"{name} counted", timeout=60)
            assert agent.proc.poll() is None, f"agent died ({name}):\n{agent.log()[-3000:]}"
            moved = moves(before, agent.counters())
            seen = outcome(agent.poll_events(), ports) if ports else set()
            results[name] = {"outcome": sorted(seen), "moved": moved}
            # A ring buffer that overflowed under the machine's load makes a gap of its own: allowed only then.
            allowed = expect.outcome | ({"gap"} if moved.get(RING_DROPS, 0) else set())
            if not expect.outcome <= seen <= allowed or short_of(expect, moved):
                failures[name] = {"outcome": sorted(seen), "expected": sorted(expect.outcome),
                                  "short": short_of(expect, moved), "moved": moved}
            assert peak - base < RSS_BOUND, (name, peak, base, RSS_BOUND)
            assert "Traceback" not in agent.log(), agent.log()[-4000:]
    finally:
        code = agent.stop()
    print("hostile wire outcomes:", msgspec.json.encode({"results": results, "rss_base": base, "rss_peak": peak,
                                                          "rss_bound": RSS_BOUND}).decode())
    assert not failures, failures
    assert code == 0, agent.log()[-3000:]
    log = agent.log()
    assert "Traceback" not in log and "internal error" not in log.lower(), log[-4000:]
    final = agent.counters()  # the last counters line (every second)
    assert final, log[-2000:]
    assert final.get(metrics.INTERNAL_ERRORS.name, 0) == 0, final
