"""The agent on a hostile wire: the real agent (real BPF) captures traffic built to break parsers, sent
over loopback to real servers (the HTTP/1.1 peer, and a TCP server that reads everything and answers
with bytes of its own). After each case the agent is alive, an ordinary request right after it is
captured correctly, and the case's own connection ended as a ``parse_error``, a ``gap``, an incomplete
transaction or a connection nothing was parsed on; never a traceback, RSS under the bound.

Loops are bounded in count and time; every address is 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import os
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

from tests.integration.harness import start_http_server

pytestmark = [pytest.mark.bpf, pytest.mark.timeout(900)]

ROOT = Path(__file__).resolve().parents[2]
CURL = "/usr/bin/curl"
# The agent's queues are bounded (raw + out channels, 64 MiB each by default) and its parsers keep at
# most a bounded head per stream: RSS may grow by this much over its idle size under attack.
RSS_BOUND = 384 << 20
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
                                          "--metrics-interval", "1"], cwd=ROOT, stdout=o, stderr=e)
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

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(120)


# ---- attacks: each returns the client ports of the connections it used -----------------------------


def _send(port: int, data: bytes, *, half_close: bool = True, read: bool = True) -> int:
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
    return local


def h2_frame(ftype: int, flags: int, stream: int, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload))[1:] + bytes([ftype, flags]) + struct.pack(">I", stream) + payload


PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
SETTINGS = h2_frame(4, 0, 0, b"")


def random_bytes(http: int, raw: int) -> list[int]:
    return [_send(http, os.urandom(64 << 10)), _send(raw, os.urandom(64 << 10))]


def huge_request_line(http: int, raw: int) -> list[int]:
    return [_send(http, b"GET /" + b"a" * (4 << 20) + b" HTTP/1.1\r\nHost: x\r\n\r\n")]


def header_flood(http: int, raw: int) -> list[int]:
    lines = b"".join(b"X-H%d: %d\r\n" % (i, i) for i in range(20_000))
    return [_send(http, b"GET /bytes?n=1 HTTP/1.1\r\nHost: x\r\n" + lines + b"\r\n")]


def chunk_overflow(http: int, raw: int) -> list[int]:
    head = b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    return [_send(http, head + b"FFFFFFFFFFFFFFFFFFFFFFFFFFFF\r\nabc\r\n0\r\n\r\n"),
            _send(http, head + b"-1\r\nabc\r\n0\r\n\r\n"),
            _send(http, head + b"1" * 5000 + b"\r\n")]


def h2_garbage_frames(http: int, raw: int) -> list[int]:
    return [_send(raw, PREFACE + SETTINGS + os.urandom(32 << 10)),
            _send(raw, PREFACE + SETTINGS + h2_frame(0xEE, 0xFF, 0x7FFFFFFF, os.urandom(16 << 10)))]


def hpack_table_size_bomb(http: int, raw: int) -> list[int]:
    # A dynamic table size update to 2^32-1 (5-bit prefix integer), then a literal with a 1 MiB value.
    size_update = b"\x3f" + b"\xe1\xff\xff\xff\x0f"
    big = b"\x40\x01x" + b"\x7f" + b"\x81\xff\x3f" + b"v" * (1 << 20)
    block = size_update + big
    frames = [h2_frame(1, 0x4 | 0x1, 1, block[:16384])]
    frames += [h2_frame(9, 0, 1, block[i:i + 16384]) for i in range(16384, len(block), 16384)]
    return [_send(raw, PREFACE + SETTINGS + b"".join(frames))]


def continuation_flood(http: int, raw: int) -> list[int]:
    frames = [h2_frame(1, 0, 1, b"\x82\x86\x84")]  # HEADERS without END_HEADERS
    frames += [h2_frame(9, 0, 1, b"\x40\x01a\x01b") for _ in range(20_000)]
    return [_send(raw, PREFACE + SETTINGS + b"".join(frames))]


def stream_id_exhaustion(http: int, raw: int) -> list[int]:
    frames = [h2_frame(1, 0x5, sid, b"\x82\x86\x84\x41\x01x") for sid in range(1, 40_001, 2)]
    frames.append(h2_frame(1, 0x5, 0x7FFFFFFF, b"\x82\x86\x84\x41\x01x"))
    frames.append(h2_frame(1, 0x5, 3, b"\x82\x86\x84\x41\x01x"))  # a reused, lower id
    return [_send(raw, PREFACE + SETTINGS + b"".join(frames))]


def settings_flood(http: int, raw: int) -> list[int]:
    one = h2_frame(4, 0, 0, struct.pack(">HI", 4, 65535) * 6)
    return [_send(raw, PREFACE + one * 20_000)]


def tls_lying_lengths(http: int, raw: int) -> list[int]:
    record = b"\x16\x03\x01\xff\xff" + b"\x01\xff\xff\xff" + os.urandom(200)  # record and handshake lie
    inner = b"\x01\x00\x00\x30" + b"\x03\x03" + os.urandom(32) + b"\xff" + os.urandom(9)  # session id 255
    return [_send(raw, record), _send(raw, b"\x16\x03\x01\x00\x34" + inner),
            _send(raw, b"\x16\x03\x01\x40\x00" + os.urandom(1 << 14) * 4)]


def half_open(http: int, raw: int) -> list[int]:
    socks, ports = [], []
    for i in range(200):
        s = socket.create_connection(("127.0.0.1", http if i % 2 else raw), timeout=10)
        s.sendall(b"GET /bytes?n=5 HTTP/1.1\r\nHost: x\r\nX-Partial: " if i % 2 else PREFACE)
        s.shutdown(socket.SHUT_WR)
        socks.append(s)
        ports.append(int(s.getsockname()[1]))
    time.sleep(1)
    for s in socks:
        s.close()
    return ports


def churn(http: int, raw: int) -> list[int]:
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


CASES: list[Callable[[int, int], list[int]]] = [
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


def outcome(events: list[dict[str, Any]], ports: set[int]) -> set[str]:
    """How the case's connections ended, from the agent's own events about them."""
    conns = {e["conn_id"] for e in events if e.get("type") == "connection"
             and (e.get("src_port") in ports or e.get("dst_port") in ports)}
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


def test_agent_survives_a_hostile_wire(peers: tuple[int, int], tmp_path: Path) -> None:
    http, raw = peers
    agent = Agent(tmp_path)
    results: dict[str, Any] = {}
    try:
        time.sleep(1)
        base = agent.rss()
        peak = base
        for case in CASES:
            ports = set(case(http, raw))
            # The ordinary request right after: captured, complete and correct.
            mark = f"after-{case.__name__}"
            subprocess.run([CURL, "-sS", "-o", "/dev/null", f"http://127.0.0.1:{http}/bytes?n=321&m={mark}"],
                           check=True, timeout=60)

            def ok(mark: str = mark) -> bool:
                return any(e.get("type") == "http_transaction" and mark in (e.get("path") or "")
                           and e.get("status") == 200 and e.get("response_body_size") == 321
                           and not e.get("incomplete") for e in agent.poll_events())

            agent.wait(ok, f"the request after {case.__name__}", timeout=240)
            peak = max(peak, agent.rss())
            if ports:
                agent.wait(lambda ports=ports: bool(outcome(agent.events, ports)), f"{case.__name__} accounted",
                           timeout=120)
            results[case.__name__] = sorted(outcome(agent.events, ports)) if ports else [f"{CHURNED[-1]} connections"]
            assert peak - base < RSS_BOUND, (case.__name__, peak, base)
            assert "Traceback" not in agent.log(), agent.log()[-4000:]
    finally:
        code = agent.stop()
    print("hostile wire outcomes:", msgspec.json.encode({"results": results, "rss_base": base,
                                                          "rss_peak": peak}).decode())
    assert code == 0, agent.log()[-3000:]
    log = agent.log()
    assert "Traceback" not in log and "internal error" not in log.lower(), log[-4000:]
    # No garbage case was taken for a good transaction.
    for name in ("random_bytes", "h2_garbage_frames", "tls_lying_lengths", "settings_flood"):
        assert "transaction" not in results[name], (name, results[name])
    lines = [ln for ln in log.splitlines() if " metrics {" in ln]
    assert lines, log[-2000:]
    final = msgspec.json.decode(lines[-1].split(" metrics ", 1)[1])  # the last counters line (every second)
    assert final.get("qtap_internal_errors_total", 0) == 0, final
