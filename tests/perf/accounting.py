"""Overload accounting: run the real agent into overload and account for every record the kernel saw.

Used by tests/perf/test_overload.py (small, deterministic load) and benchmarks/bench_overload.py.

The identity checked, per record the BPF programs tried to deliver:

    RECORDS + DROP_RINGBUF                                         (kernel: delivered + refused)
      == stage processed + source dropped (raw channel full) + DROP_RINGBUF + left in the ring at close

"left in the ring at close" is measured here, not by the agent: the agent's source makes its last
drain when it stops, but the programs stay attached until Capture.close(), so records delivered in
between (other processes' exec/exit, TLS detach time, the pipeline's drain) are in RECORDS and nowhere
else. To measure them exactly this module wraps the agent's Capture.close(): detach every link first
(nothing more can be delivered), empty the ring and count what was there, then read the counters.
"""

from __future__ import annotations

import asyncio
import struct
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qtap_async.bpf import abi
from qtap_async.bpf.loader import Capture
from qtap_async.buffers.channel import Channel
from qtap_async.errors import ChannelClosed
from qtap_async.replay import NullSink
from qtap_async.topology import Agent, AgentOptions, StdoutWriter

BLASTER = Path(__file__).with_name("blaster.py")


class SlowWriter(StdoutWriter):
    """A sink that takes `delay_s` per batch without blocking the loop: backpressure reaches the raw
    channel, which then drops at the source (the stage blocks on the full output channel)."""

    def __init__(self, delay_s: float) -> None:
        super().__init__(out=NullSink())  # type: ignore[arg-type]
        self.delay_s = delay_s

    async def run(self, rx: Channel[list[Any]]) -> None:
        while True:
            try:
                events = await rx.recv()
            except ChannelClosed:
                break
            self.write(events)
            if self.delay_s:
                await asyncio.sleep(self.delay_s)


@dataclass
class Accounting:
    kernel_records: int = 0  # RECORDS read after every link was detached: final
    kernel_drop_ringbuf: int = 0
    kernel_drop_bytes: int = 0
    source_records: int = 0
    source_dropped_records: int = 0
    raw_channel_dropped_batches: int = 0
    stage_records: int = 0
    decode_errors: int = 0
    left_in_ring_at_close: int = 0
    left_in_ring_by_type: dict[str, int] = field(default_factory=dict)  # record type name -> count
    snapshot: dict[str, int] = field(default_factory=dict)  # what the agent itself reports at the end
    workload: str = ""

    @property
    def seen_by_kernel(self) -> int:
        return self.kernel_records + self.kernel_drop_ringbuf

    @property
    def accounted(self) -> int:
        return (self.stage_records + self.source_dropped_records + self.kernel_drop_ringbuf
                + self.left_in_ring_at_close)

    @property
    def unaccounted(self) -> int:
        return self.seen_by_kernel - self.accounted

    @property
    def agent_view_unaccounted(self) -> int:
        """The same identity with the agent's own counters only (what `Agent.snapshot()` can show)."""
        s = self.snapshot
        return s.get("qtap_kernel_records_total", 0) - s.get("qtap_source_records_total", 0)

    def as_dict(self) -> dict[str, Any]:
        d = {k: v for k, v in self.__dict__.items() if k not in ("snapshot", "left_in_ring_by_type")}
        for name, n in self.left_in_ring_by_type.items():
            d[f"left_in_ring_{name}"] = n
        d.update(seen_by_kernel=self.seen_by_kernel, accounted=self.accounted, unaccounted=self.unaccounted,
                 agent_view_unaccounted=self.agent_view_unaccounted)
        return d


def _type_name(raw: bytes) -> str:
    try:
        return abi.RecType(abi.HDR.unpack_from(raw)[0]).name.lower()
    except (ValueError, struct.error):
        return "malformed"


def _hook_close(cap: Capture, acc: Accounting) -> None:
    original = cap.close

    def close_counting() -> None:
        # Detach first: after this no program can deliver, so what the ring holds is final.
        for obj in cap.objects:
            obj.detach_all()
        if cap.ringbuf is not None:
            while batch := cap.ringbuf.consume():
                acc.left_in_ring_at_close += len(batch)
                for raw in batch:
                    name = _type_name(raw)
                    acc.left_in_ring_by_type[name] = acc.left_in_ring_by_type.get(name, 0) + 1
        k = cap.counters()
        acc.kernel_records = k["records"]
        acc.kernel_drop_ringbuf = k["drop_ringbuf"]
        acc.kernel_drop_bytes = k["drop_bytes"]
        original()

    cap.close = close_counting  # type: ignore[method-assign]


def run_accounted(messages: int, size: int, *, ring_buffer_bytes: int = 64 << 10, raw_queue_events: int = 4,
                  out_queue_events: int = 2, sink_delay_s: float = 0.002, tls: bool = False,
                  timeout_s: float = 120.0) -> Accounting:
    """Blast `messages` sends of `size` bytes over loopback from a child traced alone, through a small
    ring buffer, small queues and a slow sink; return the full accounting."""
    import os

    import uvloop

    from qtap_async.bpf.loader import CaptureSettings

    child = subprocess.Popen([sys.executable, str(BLASTER), str(messages), str(size)], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
    acc = Accounting(workload=f"{messages} sends x {size} B over loopback, one traced process")
    try:
        assert child.stdin is not None and child.stdout is not None
        if child.stdout.readline().strip() != "READY":
            raise RuntimeError("blaster did not start")
        opts = AgentOptions(
            tls=tls,
            raw_queue_events=raw_queue_events,
            out_queue_events=out_queue_events,
            capture=CaptureSettings(self_tgid=os.getpid(), target_tgid=child.pid,
                                    ring_buffer_bytes=ring_buffer_bytes),
        )
        agent = Agent(opts, writer=SlowWriter(sink_delay_s))
        error: list[BaseException] = []

        def main() -> None:
            try:
                uvloop.run(agent.run(install_signals=False))
            except BaseException as exc:
                error.append(exc)
                agent.attached.set()

        thread = threading.Thread(target=main, name="agent", daemon=True)
        thread.start()
        if not agent.attached.wait(timeout_s) or error:
            raise RuntimeError(f"agent did not attach: {error}")
        assert agent.capture is not None
        _hook_close(agent.capture, acc)
        child.stdin.write("go\n")
        child.stdin.flush()
        done = child.stdout.readline()
        if not done.startswith("DONE"):
            raise RuntimeError(f"blaster failed: {done!r}")
        agent.stop()
        thread.join(timeout_s)
        if thread.is_alive():
            raise RuntimeError("agent did not stop")
        if error:
            raise error[0]
    finally:
        if child.stdin is not None:
            child.stdin.close()
        child.wait(10)
    assert agent.source is not None and agent.raw is not None
    acc.source_records = agent.source.records
    acc.source_dropped_records = agent.source.dropped_records
    acc.raw_channel_dropped_batches = agent.raw.statistics().dropped_events
    acc.stage_records = agent.stage.records
    acc.decode_errors = agent.stage.decode_errors
    acc.snapshot = agent.snapshot()
    return acc
