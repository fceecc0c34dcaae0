"""`qtap inspect`'s socket I/O path line: what the agent would load here, from the real kernel probe."""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest

from qtap_async.bpf import socket_path
from qtap_async.bpf.features import HookSupport, detect
from qtap_async.bpf.ringbuf import READER_ENV
from qtap_async.inspect import gather, render, socket_path_report


@pytest.mark.bpf
def test_socket_path_on_this_kernel(monkeypatch: pytest.MonkeyPatch) -> None:
    f = detect()
    monkeypatch.delenv(socket_path.ENV, raising=False)
    expected = socket_path.SYSCALLS if socket_path.tracepoints_missing() else socket_path.SOCK
    sp = socket_path_report(f)
    assert sp.path == expected and sp.programs == socket_path.describe(expected)
    forced = socket_path_report(f, "syscalls")
    assert forced.path == socket_path.SYSCALLS and "forced" in forced.reason
    # The same kernel report with the sock probe failed: the agent falls back, and says so.
    refused = msgspec.structs.replace(f, hooks=[h if h.hook != "sock_length" else
                                                HookSupport("sock_length", False, None, False, "load refused")
                                                for h in f.hooks])
    fb = socket_path_report(refused)
    assert fb.path == socket_path.SYSCALLS and "load refused" in fb.reason
    assert socket_path_report(refused, "sock").path == ""  # forced but impossible: capture would not start


@pytest.mark.bpf
def test_the_ring_buffer_reader_is_reported(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv(READER_ENV, raising=False)
    assert "ring buffer reader: mmap (the ring's memory" in render(gather(str(tmp_path)))  # x86-64 here
    monkeypatch.setenv(READER_ENV, "libbpf")
    assert f"ring buffer reader: libbpf callbacks ({READER_ENV}=libbpf)" in render(gather(str(tmp_path)))
