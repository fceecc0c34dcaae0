"""The Java agent's channel: frames in (as Hooks.java writes them), raw records out, the pid from the kernel."""

from __future__ import annotations

import os
import socket
from pathlib import Path

from qtap_async.bpf import abi
from qtap_async.events.kernel import JavaData
from qtap_async.sources.decode import decode
from qtap_async.tls.java_channel import FRAME, JavaChannel


def _frame(payload: bytes, *, stream: int = 7, offset: int = 0, direction: int = 0, version: int = 1) -> bytes:
    return FRAME.pack(FRAME.size - 4 + len(payload), version, 2, direction, 33, 123456789, stream, offset, 0,
                      8443) + payload


def _connect(ch: JavaChannel, root: Path) -> socket.socket:
    inside = ch.listen_in(root)
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(str(root / inside.lstrip("/")))
    return s


def test_frames_become_records_with_the_peer_pid(tmp_path: Path) -> None:
    (tmp_path / "tmp").mkdir()
    ch = JavaChannel(name="test.sock")
    try:
        s = _connect(ch, tmp_path)
        assert ch.drain() == []
        # One frame split across two writes, then a second frame: records come out whole and in order.
        f1, f2 = _frame(b"GET / HTTP/1.1\r\n"), _frame(b"\r\n", offset=16)
        s.sendall(f1[:10])
        assert ch.drain() == []
        s.sendall(f1[10:] + f2)
        recs = [decode(r) for r in ch.drain()]
        assert recs == [
            JavaData(123456789, 7, os.getpid(), 33, 0, 0, 2, 0, 8443, b"GET / HTTP/1.1\r\n"),
            JavaData(123456789, 7, os.getpid(), 33, 16, 0, 2, 0, 8443, b"\r\n"),
        ]
        assert ch.stats.frames == 2 and ch.stats.bytes == 18
        assert ch.clients() == {os.getpid(): next(iter(ch.clients().values()))}
        s.close()
    finally:
        ch.close()
    assert not (tmp_path / "tmp" / "test.sock").exists()


def test_a_bad_frame_closes_that_jvm_only(tmp_path: Path) -> None:
    (tmp_path / "tmp").mkdir()
    ch = JavaChannel(name="test.sock")
    try:
        bad, good = _connect(ch, tmp_path), _connect(ch, tmp_path)
        ch.drain()
        bad.sendall(_frame(b"x", version=9))
        good.sendall(_frame(b"ok"))
        recs = ch.drain()
        assert len(recs) == 1 and decode(recs[0]).payload == b"ok"  # type: ignore[union-attr]
        assert ch.stats.bad_frames == 1 and len(ch.clients()) == 1
        assert bad.recv(1) == b""  # closed by qtap
    finally:
        ch.close()


def test_record_header_is_the_kernel_one() -> None:
    raw = _frame(b"abc")
    assert FRAME.size == 44  # Hooks.HEADER
    assert abi.JAVA_DATA.size == abi.HDR.size + 14 and raw.endswith(b"abc")
