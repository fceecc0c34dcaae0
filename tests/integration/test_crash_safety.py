"""Crash safety of the spool with the real agent (real BPF), a real Pulse and a dir object store.

- SIGKILL the agent while its spool holds undelivered events and objects; restart: every spooled item
  is delivered exactly once (checked by id against the frames read from the spool files).
- A corrupted spool segment: the bad frame is found by its CRC, skipped and counted; the rest arrives.
- A full disk under the spool (a small tmpfs mounted by the test): newer records are dropped and
  counted, the agent keeps running and delivers what it kept once the store is back.
- SIGKILL Pulse during ingestion: what it acknowledged is kept, what it did not is retried by the agent.
"""

from __future__ import annotations

import os
import random
import signal
import struct
import subprocess
import sys
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest

from qtap_async.sinks.base import EventRecord, StoredObject
from tests.integration.harness import free_port, start_http_server

pytestmark = pytest.mark.bpf

ROOT = Path(__file__).resolve().parents[2]
QTAP = [sys.executable, "-m", "cli.main"]
_HDR = struct.Struct("<II")

CLIENT = """
import http.client, sys
port, n, path = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
print("ready", flush=True)
sys.stdin.readline()
for i in range(n):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    c.request("GET", f"{path}?i={i}&n=64")
    c.getresponse().read()
    c.close()
print("done", flush=True)
sys.stdin.readline()
"""


# ---- peers ------------------------------------------------------------------------------------------


@dataclass
class Pulse:
    data: Path
    port: int
    token: str
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        log = (self.data.parent / "pulse.log").open("ab")
        self.proc = subprocess.Popen([*QTAP, "pulse", "serve", "--data-dir", str(self.data), "--listen",
                                      f"127.0.0.1:{self.port}", "--log-level", "warning"],
                                     cwd=ROOT, stdout=subprocess.DEVNULL, stderr=log)
        deadline = time.monotonic() + 120
        while True:
            assert self.proc.poll() is None, (self.data.parent / "pulse.log").read_text()[-2000:]
            try:
                if httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "pulse did not become ready"
            time.sleep(0.2)

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(30)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(60)

    def accepted(self) -> int:
        text = httpx.get(f"{self.url}/metrics", timeout=10).text
        return sum(int(float(line.split()[-1])) for line in text.splitlines()
                   if line.startswith("pulse_events_accepted_total"))

    def issue_ids(self, marker: str) -> list[str]:
        r = httpx.get(f"{self.url}/v1/query/issues", params={"limit": 1000},
                      headers={"authorization": f"Bearer {self.token}"}, timeout=30)
        assert r.status_code == 200, r.text
        return [row["id"] for row in r.json() if marker in row.get("summary", "")]


@pytest.fixture
def pulse(tmp_path: Path) -> Iterator[Pulse]:
    data = tmp_path / "pulse" / "data"
    data.parent.mkdir()
    out = subprocess.run([*QTAP, "pulse", "token", "create", "--data-dir", str(data), "--team", "crash"],
                         cwd=ROOT, capture_output=True, text=True, check=True, timeout=120)
    p = Pulse(data, free_port(), out.stdout.strip().split()[-1])
    try:
        yield p
    finally:
        p.stop()


@pytest.fixture
def server() -> Iterator[int]:
    proc, port = start_http_server()
    try:
        yield port
    finally:
        proc.kill()
        proc.wait()


class Client:
    """One process making ``n`` requests on fresh connections when told; the agent traces only it."""

    def __init__(self, port: int, n: int, path: str) -> None:
        self.proc = subprocess.Popen([sys.executable, "-c", CLIENT, str(port), str(n), path],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None and self.proc.stdout.readline().strip() == "ready"

    def run(self) -> None:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write("go\n")
        self.proc.stdin.flush()
        assert self.proc.stdout.readline().strip() == "done"

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait()


class Agent:
    def __init__(self, tmp: Path, config: Path, *args: str, tag: str = "a") -> None:
        self.err = tmp / f"agent-{tag}.log"
        with self.err.open("wb") as e:
            self.proc = subprocess.Popen([*QTAP, "run", "--no-tls", "--config", str(config),
                                          "--metrics-interval", "0.5", *args],
                                         cwd=ROOT, stdout=subprocess.DEVNULL, stderr=e)
        self.wait(lambda: "capture attached" in self.log(), "attach")

    def log(self) -> str:
        return self.err.read_text(errors="replace")

    def metrics(self) -> dict[str, int]:
        lines = [ln for ln in self.log().splitlines() if " metrics {" in ln]
        if not lines:
            return {}
        try:
            out: dict[str, int] = msgspec.json.decode(lines[-1].split(" metrics ", 1)[1])
        except msgspec.DecodeError:  # a line being written
            return msgspec.json.decode(lines[-2].split(" metrics ", 1)[1]) if len(lines) > 1 else {}
        return out

    def m(self, name: str, store: str) -> int:
        return int(self.metrics().get(f'{name}{{store="{store}"}}', 0))

    def wait(self, pred: Callable[[], bool], what: str, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while not pred():
            assert self.proc.poll() is None, f"agent exited ({what}):\n{self.log()[-3000:]}"
            assert time.monotonic() < deadline, f"timed out: {what}\n{self.metrics()}\n{self.log()[-2000:]}"
            time.sleep(0.2)

    def sigkill(self) -> None:
        self.proc.kill()
        self.proc.wait(30)

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(90)


def write_config(tmp: Path, pulse: Pulse, objects: Path | None, spool: Path, spool_bytes: int = 64 << 20) -> Path:
    common = ("check_on_start: false, retry: {initial: 0.05, maximum: 0.5, spool_after: 0.3}, "
              f"spool: {{dir: {spool}, max_bytes: {spool_bytes}}}, buffer: {{batch_max_events: 50}}")
    obj = (f"[{{type: dir, name: objs, path: {objects}, {common}}}]" if objects is not None
           else "[{type: disabled}]")
    cfg = tmp / "qpoint.yaml"
    cfg.write_text(f"""version: 2
services:
  event_stores:
    - {{type: pulse, name: pulse, url: "{pulse.url}", token: {{type: text, value: "{pulse.token}"}}, {common}}}
  object_stores: {obj}
stacks:
  default:
    plugins:
      - type: detect_errors
        config: {{rules: [{{name: every, expr: "http.res.status >= 200", severity: info}}]}}
tap:
  direction: egress
  http:
    stack: default
""")
    return cfg


def frames(directory: Path) -> list[bytes]:
    """The payloads of every intact frame of every segment (the spool's own layout: len, crc, payload)."""
    out = []
    for seg in sorted(directory.rglob("*.seg")):
        raw = seg.read_bytes()
        off = 0
        while off + _HDR.size <= len(raw):
            length, crc = _HDR.unpack_from(raw, off)
            payload = raw[off + _HDR.size: off + _HDR.size + length]
            if len(payload) < length or zlib.crc32(payload) != crc:
                break
            out.append(payload)
            off += _HDR.size + length
    return out


def spooled_event_ids(directory: Path, marker: str) -> list[str]:
    ids = []
    for payload in frames(directory):
        rec = msgspec.msgpack.decode(payload, type=EventRecord)
        ev: dict[str, Any] = msgspec.json.decode(rec.value)
        if marker in ev.get("summary", ""):
            ids.append(ev["id"])
    return ids


def spooled_digests(directory: Path) -> list[str]:
    return [msgspec.msgpack.decode(p, type=StoredObject).digest for p in frames(directory)]


def marker() -> str:
    return "/crash-" + "".join(random.choice("ghijklmnopqrstuvwxyz") for _ in range(10))


def fill_spool(tmp: Path, pulse: Pulse, server: int, n: int, objects: Path | None) -> tuple[Path, str, Client]:
    """Pulse down (and the object dir blocked): ``n`` transactions end up in the spool; then SIGKILL.
    The client stays (idle): the restarted agent traces it too, so nothing else adds events."""
    spool = tmp / "spool"
    cfg = write_config(tmp, pulse, objects, spool)
    path = marker()
    client = Client(server, n, path)
    agent = Agent(tmp, cfg, "--pid", str(client.proc.pid), tag="first")
    try:
        client.run()
        agent.wait(lambda: agent.m("qtap_sink_spool_depth_events", "event:pulse") >= n, "events spooled")
        if objects is not None:
            agent.wait(lambda: agent.m("qtap_sink_spool_depth_events", "object:objs") >= n, "objects spooled")
        assert agent.m("qtap_sink_delivered_events_total", "event:pulse") == 0
    except BaseException:
        client.close()
        raise
    finally:
        agent.sigkill()
    return cfg, path, client


# ---- the cases ----------------------------------------------------------------------------------------


def test_sigkill_with_a_full_spool_then_restart_delivers_each_item_once(tmp_path: Path, pulse: Pulse,
                                                                         server: int) -> None:
    n = 40
    blocker = tmp_path / "blocked"
    blocker.write_text("a file where the object directory's parent should be: every store attempt fails\n")
    objects = blocker / "objects"
    cfg, path, client = fill_spool(tmp_path, pulse, server, n, objects)
    ids = spooled_event_ids(tmp_path / "spool" / "event-pulse", path)
    digests = spooled_digests(tmp_path / "spool" / "object-objs")
    assert len(ids) == n == len(set(ids)), len(ids)
    assert len(digests) == n
    spooled = len(frames(tmp_path / "spool" / "event-pulse"))  # the issues and the connection events

    pulse.start()
    blocker.unlink()  # the object store works again
    agent = Agent(tmp_path, cfg, "--pid", str(client.proc.pid), tag="second")
    try:
        agent.wait(lambda: agent.m("qtap_sink_delivered_events_total", "event:pulse") >= n
                   and agent.m("qtap_sink_delivered_events_total", "object:objs") >= n, "spool delivered")
        agent.wait(lambda: agent.m("qtap_sink_spool_depth_events", "event:pulse") == 0, "event spool empty")
    finally:
        assert agent.stop() == 0
        client.close()
    final = agent.metrics()
    # Exactly once: as many deliveries as spooled items, and each spooled id/digest arrived.
    # Each object stored now also sends its object_ref event: n more events than were spooled.
    assert final['qtap_sink_delivered_events_total{store="event:pulse"}'] == spooled + n, (spooled, final)
    assert final['qtap_sink_delivered_events_total{store="object:objs"}'] == n, final
    assert pulse.accepted() == spooled + n
    assert sorted(pulse.issue_ids(path)) == sorted(ids)
    assert sorted(p.name for p in objects.iterdir()) == sorted(digests)
    assert "Traceback" not in agent.log()


def test_corrupt_spool_segment_is_skipped_counted_and_the_rest_delivered(tmp_path: Path, pulse: Pulse,
                                                                          server: int) -> None:
    n = 30
    cfg, path, client = fill_spool(tmp_path, pulse, server, n, None)
    segs = sorted((tmp_path / "spool").rglob("*.seg"))
    assert segs
    raw = bytearray(segs[0].read_bytes())
    length, _ = _HDR.unpack_from(raw, 0)
    raw[_HDR.size + length + _HDR.size + 3] ^= 0xFF  # a byte of the second frame's payload
    segs[0].write_bytes(bytes(raw))
    # Readable: the frames before the bad one (the reader here stops at it, as the spool does per segment).
    kept = spooled_event_ids(tmp_path / "spool" / "event-pulse", path)
    spooled = len(frames(tmp_path / "spool" / "event-pulse"))

    pulse.start()
    agent = Agent(tmp_path, cfg, "--pid", str(client.proc.pid), tag="second")
    try:
        agent.wait(lambda: agent.m("qtap_sink_spool_depth_events", "event:pulse") == 0
                   and agent.m("qtap_sink_dropped_spool_corrupt_events_total", "event:pulse") > 0, "drained")
    finally:
        assert agent.stop() == 0
        client.close()
    final = agent.metrics()
    lost = final['qtap_sink_dropped_spool_corrupt_events_total{store="event:pulse"}']
    delivered = final['qtap_sink_delivered_events_total{store="event:pulse"}']
    assert lost > 0 and delivered == spooled and pulse.accepted() == delivered, (spooled, final)
    assert set(kept) <= set(pulse.issue_ids(path))


def test_full_disk_under_the_spool_drops_newer_counts_and_keeps_running(tmp_path: Path, pulse: Pulse,
                                                                         server: int) -> None:
    if os.geteuid() != 0:
        pytest.fail("this test mounts a tmpfs: run it as root (as the bpf tests are)")
    mnt = tmp_path / "small"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=96k", "tmpfs", str(mnt)], check=True)
    try:
        cfg = write_config(tmp_path, pulse, None, mnt, spool_bytes=64 << 20)  # the limit is far above the disk
        path = marker()
        n = 300
        client = Client(server, n, path)
        agent = Agent(tmp_path, cfg, "--pid", str(client.proc.pid), tag="disk")
        try:
            client.run()
            agent.wait(lambda: agent.m("qtap_sink_dropped_spool_disk_full_events_total", "event:pulse") > 0,
                       "a disk-full drop")
            agent.wait(lambda: agent.m("qtap_sink_spool_depth_events", "event:pulse")
                       + agent.m("qtap_sink_dropped_spool_disk_full_events_total", "event:pulse") >= 3 * n
                       and agent.m("qtap_sink_queue_depth_events", "event:pulse") == 0, "all accounted for")
            kept = agent.m("qtap_sink_spool_depth_events", "event:pulse")
            assert "cannot write" in agent.log()
            pulse.start()  # the store is back: what the spool kept is delivered, the agent never stopped
            agent.wait(lambda: agent.m("qtap_sink_delivered_events_total", "event:pulse") >= kept
                       and agent.m("qtap_sink_spool_depth_events", "event:pulse") == 0, "spool drained")
        finally:
            code = agent.stop()
            client.close()
        assert code == 0
        final = agent.metrics()
        dropped = final['qtap_sink_dropped_spool_disk_full_events_total{store="event:pulse"}']
        delivered = final['qtap_sink_delivered_events_total{store="event:pulse"}']
        # Each transaction gives three events (connection open and close, the issue): all accounted for,
        # and everything the spool kept was delivered.
        spooled = final['qtap_sink_spooled_events_total{store="event:pulse"}']
        assert dropped > 0 and delivered > 0 and delivered + dropped == 3 * n, final
        assert delivered == spooled, final
        assert "Traceback" not in agent.log()
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_pulse_killed_during_ingestion_loses_no_acknowledged_batch(tmp_path: Path, pulse: Pulse,
                                                                   server: int) -> None:
    pulse.start()
    cfg = write_config(tmp_path, pulse, None, tmp_path / "spool")
    path = marker()
    n = 400
    client = Client(server, n, path)
    agent = Agent(tmp_path, cfg, "--pid", str(client.proc.pid), tag="pulse-kill")
    try:
        assert client.proc.stdin is not None
        client.proc.stdin.write("go\n")
        client.proc.stdin.flush()
        agent.wait(lambda: agent.m("qtap_sink_delivered_events_total", "event:pulse") >= 20, "first batches")
        acked_before_kill = agent.m("qtap_sink_delivered_events_total", "event:pulse")
        pulse.kill()  # mid-stream: batches in flight get no answer
        assert client.proc.stdout is not None and client.proc.stdout.readline().strip() == "done"
        agent.wait(lambda: agent.m("qtap_sink_errors_total", "event:pulse") > 0, "the agent noticed")
        pulse.start()
        agent.wait(lambda: agent.m("qtap_sink_delivered_events_total", "event:pulse") >= n
                   and agent.m("qtap_sink_spool_depth_events", "event:pulse") == 0
                   and agent.m("qtap_sink_queue_depth_events", "event:pulse") == 0, "everything delivered")
    finally:
        code = agent.stop()
        client.close()
    assert code == 0
    final = agent.metrics()
    assert final['qtap_sink_retried_events_total{store="event:pulse"}'] > 0 or \
        final['qtap_sink_spooled_events_total{store="event:pulse"}'] > 0, final
    ids = pulse.issue_ids(path)
    # Every transaction's issue is stored once (an unanswered batch may be sent twice: Pulse keys rows
    # by id, so a retry of a batch it had stored replaces the rows instead of adding to them).
    assert len(ids) == len(set(ids)) == n, (len(ids), len(set(ids)), acked_before_kill)
