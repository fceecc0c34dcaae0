"""Runs the real agent (real BPF programs) in a background thread and records what it reports.

`RecordingSession` stands in for the protocol layer and keeps every reassembled byte of each
connection, so tests can compare streams byte for byte with what the peers really sent.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
import uvloop

from qtap_async.events.connection import ConnectionEvent
from qtap_async.topology import Agent, AgentOptions, StdoutWriter
from qtap_async.transforms.conntrack import Connection

PEERS = Path(__file__).parent / "peers"


@dataclass
class Recorded:
    conn_id: int
    layer: int
    data: dict[int, bytearray] = field(default_factory=lambda: {0: bytearray(), 1: bytearray()})
    gaps: dict[int, int] = field(default_factory=lambda: {0: 0, 1: 0})
    closed: bool = False


class RecordingSession:
    def __init__(self, rec: Recorded) -> None:
        self.rec = rec

    @property
    def protocol(self) -> str:
        return "recorded"

    def feed(self, direction: Any, data: bytes | memoryview, ts_ns: int) -> list[Any]:
        self.rec.data[int(direction)] += data
        return []

    def gap(self, direction: Any, nbytes: int, ts_ns: int) -> list[Any]:
        self.rec.gaps[int(direction)] += nbytes
        return []

    def close(self, ts_ns: int) -> list[Any]:
        self.rec.closed = True
        return []

    def park(self) -> bool:
        return False


class ListWriter(StdoutWriter):
    def __init__(self) -> None:
        super().__init__(out=None)
        self.events: list[Any] = []
        self.lock = threading.Lock()

    def write(self, events: list[Any]) -> None:
        with self.lock:
            self.events.extend(events)
        self.written += len(events)


class AgentHarness:
    def __init__(self, options: AgentOptions | None = None, *, record: bool = True,
                 session_factory: Callable[[Connection, int], Any] | None = None) -> None:
        self.recorded: dict[tuple[int, int], Recorded] = {}
        self.writer = ListWriter()
        if record:
            factory: Callable[[Connection, int], Any] | None = self._recording_factory
        else:
            factory = session_factory
        kwargs: dict[str, Any] = {"writer": self.writer}
        if factory is not None or record:
            kwargs["session_factory"] = factory
        self.agent = Agent(options, **kwargs)
        self._thread: threading.Thread | None = None
        self.error: BaseException | None = None

    def _recording_factory(self, conn: Connection, layer: int) -> RecordingSession:
        rec = Recorded(conn.conn_id, layer)
        self.recorded[(conn.conn_id, layer)] = rec
        return RecordingSession(rec)

    def _main(self) -> None:
        try:
            uvloop.run(self.agent.run(install_signals=False))
        except BaseException as exc:  # surfaced by start()/stop()
            self.error = exc
            self.agent.attached.set()

    def start(self) -> AgentHarness:
        self._thread = threading.Thread(target=self._main, name="agent", daemon=True)
        self._thread.start()
        if not self.agent.attached.wait(60):
            raise RuntimeError("agent did not attach within 60 s")
        if self.error is not None:
            raise self.error
        return self

    def stop(self) -> None:
        self.agent.stop()
        if self._thread is not None:
            self._thread.join(60)
            if self._thread.is_alive():
                raise RuntimeError("agent did not stop within 60 s")
        if self.error is not None:
            raise self.error

    def __enter__(self) -> AgentHarness:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- queries ---------------------------------------------------------------------------------
    def events(self) -> list[Any]:
        with self.writer.lock:
            return list(self.writer.events)

    def connections(self, event: str = "close", **match: Any) -> list[ConnectionEvent]:
        out = []
        for e in self.events():
            if isinstance(e, ConnectionEvent) and e.event == event and all(
                getattr(e, k) == v for k, v in match.items()
            ):
                out.append(e)
        return out

    def wait_for(self, pred: Callable[[], bool], timeout: float = 20.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if pred():
                return True
            time.sleep(0.05)
        return pred()


def start_http_server(*args: str) -> tuple[subprocess.Popen[str], int]:
    proc = subprocess.Popen([sys.executable, str(PEERS / "http_server.py"), *args], stdout=subprocess.PIPE,
                            text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line.startswith("PORT "):
        proc.kill()
        raise RuntimeError(f"test server did not start: {line!r}")
    return proc, int(line.split()[1])


@contextlib.contextmanager
def dns_server(addr: str, *, system_resolver: bool = False) -> Iterator[subprocess.Popen[str]]:
    """The test DNS server (peers/dns_server.py) on addr:53; with system_resolver, /etc/resolv.conf points
    glibc at it until the block ends (then it is put back as it was)."""
    proc = subprocess.Popen([sys.executable, str(PEERS / "dns_server.py"), addr, "53"], stdout=subprocess.PIPE,
                            text=True)
    resolv = Path("/etc/resolv.conf")
    saved = resolv.read_bytes() if resolv.exists() else None
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "READY"
        if system_resolver:
            resolv.write_text(f"nameserver {addr}\noptions attempts:1 timeout:2\n")
        yield proc
    finally:
        if system_resolver and saved is not None:
            resolv.write_bytes(saved)
        proc.kill()
        proc.wait()


def free_port() -> int:
    """A TCP port on 127.0.0.1 nothing listens on right now."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float = 10.0) -> None:
    """Wait until something accepts connections on 127.0.0.1:port."""
    import socket

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port}")


def to_builtins(events: list[Any]) -> list[Any]:
    return [msgspec.to_builtins(e) for e in events]
