"""A bounded, durable, ordered on-disk queue of byte records (the spool in front of a sink that is down).

Layout of a spool directory::

    lock                       flock'ed by the one process using the spool
    cursor                     JSON: the first segment still needed and how far into it was delivered
    0000000000000001.seg ...   append-only segments of frames: u32 length, u32 crc32, payload

Records are read in the order they were appended; ``read`` does not consume, ``ack`` does (after the sink
took them), so a crash between the two re-delivers (at-least-once). Writes are flushed to the kernel after
every ``append`` (they survive an agent crash or restart); ``fsync=True`` also survives a power loss.

The directory is created 0700 and its files 0600 (they hold captured events and objects). When the disk
under the spool is full (ENOSPC, quota), the record being written and the rest of its batch are dropped and
counted as ``disk_full`` (the partial frame is cut off again), and the next append tries again.

When the spool is full, ``drop_oldest`` deletes the oldest whole segment not being delivered (segments are
at most 1/16 of the size limit), ``drop_newest`` refuses the incoming record; either way every dropped record
and byte is counted. A torn frame at the tail (a crash mid-write) is cut off at start-up; a frame whose crc
does not match ends its segment and the records lost there are counted as corrupt.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import struct
import zlib
from collections import deque
from collections.abc import Sequence
from pathlib import Path
from typing import BinaryIO, Literal

import msgspec

from qtap_async.errors import QtapError

SpoolWhenFull = Literal["drop_oldest", "drop_newest"]

log = logging.getLogger("qtap.spool")
_HDR = struct.Struct("<II")
_SUFFIX = ".seg"


class SpoolError(QtapError):
    """The spool directory cannot be used (in use by another process, not writable...)."""


class SpoolPosition(msgspec.Struct, frozen=True, gc=False):
    """Where a read ended: segment ``seq``, byte ``offset`` in it, and what was consumed of it so far."""

    seq: int
    offset: int
    records: int
    payload: int


class _Cursor(msgspec.Struct):
    seq: int = 0
    offset: int = 0
    records: int = 0
    payload: int = 0


class _Segment:
    __slots__ = ("path", "payload", "records", "seq", "size")

    def __init__(self, seq: int, path: Path) -> None:
        self.seq = seq
        self.path = path
        self.records = 0  # frames in the file
        self.payload = 0  # payload bytes of those frames
        self.size = 0  # file bytes


class SpoolStats(msgspec.Struct, frozen=True, gc=False):
    depth_events: int
    depth_bytes: int
    disk_bytes: int
    appended_events: int
    appended_bytes: int
    acked_events: int
    acked_bytes: int
    dropped_events: int
    dropped_bytes: int
    corrupt_events: int
    disk_full_events: int = 0
    disk_full_bytes: int = 0


class Spool:
    def __init__(
        self,
        directory: str | os.PathLike[str],
        max_bytes: int,
        when_full: SpoolWhenFull = "drop_oldest",
        segment_bytes: int | None = None,
        fsync: bool = False,
    ) -> None:
        if max_bytes < 4096:
            raise ValueError("spool max_bytes must be at least 4096")
        self.directory = Path(directory)
        self.max_bytes = max_bytes
        self.when_full: SpoolWhenFull = when_full
        self.segment_bytes = segment_bytes or min(16 << 20, max(64 << 10, max_bytes // 16))
        self.fsync = fsync
        try:
            self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            os.chmod(self.directory, 0o700)  # an existing directory too: the records are captured traffic
            self._lock_fd = os.open(self.directory / "lock", os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise SpoolError(f"spool {self.directory}: {exc.strerror or exc}") from exc
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(self._lock_fd)
            raise SpoolError(f"spool {self.directory} is in use by another process") from exc
        self._segments: deque[_Segment] = deque()
        self._writer: BinaryIO | None = None  # unbuffered, open on self._segments[-1] when not None
        self._head = _Cursor()  # consumed part of self._segments[0]
        self._inflight: SpoolPosition | None = None
        self._disk = 0
        self.depth_events = 0
        self.depth_bytes = 0
        self.appended_events = 0
        self.appended_bytes = 0
        self.acked_events = 0
        self.acked_bytes = 0
        self.dropped_events = 0
        self.dropped_bytes = 0
        self.corrupt_events = 0
        self.disk_full_events = 0
        self.disk_full_bytes = 0
        self._disk_full = False  # in a disk-full episode (logged once per episode)
        self._load()

    # -------------------------------------------------------------------------------------------- start-up
    def _load(self) -> None:
        seqs = sorted(int(p.name[: -len(_SUFFIX)]) for p in self.directory.glob("*" + _SUFFIX)
                      if p.name[: -len(_SUFFIX)].isdigit())
        cursor = _Cursor()
        cursor_path = self.directory / "cursor"
        if cursor_path.exists():
            with contextlib.suppress(msgspec.DecodeError, OSError):
                cursor = msgspec.json.decode(cursor_path.read_bytes(), type=_Cursor)
        for seq in seqs:
            path = self._path(seq)
            if seq < cursor.seq:  # fully delivered before the last stop
                path.unlink(missing_ok=True)
                continue
            seg = _Segment(seq, path)
            self._scan(seg)
            self._segments.append(seg)
            self._disk += seg.size
        if self._segments and self._segments[0].seq == cursor.seq:
            head = self._segments[0]
            if cursor.offset <= head.size:
                self._head = _Cursor(cursor.seq, cursor.offset, cursor.records, cursor.payload)
        elif self._segments:
            self._head = _Cursor(self._segments[0].seq, 0, 0, 0)
        else:  # keep numbering upward so an old cursor never covers new segments
            self._head = _Cursor(max([cursor.seq, *seqs]), 0, 0, 0)
        self.depth_events = sum(s.records for s in self._segments) - self._head.records
        self.depth_bytes = sum(s.payload for s in self._segments) - self._head.payload
        self._drop_consumed_head()

    def _scan(self, seg: _Segment) -> None:
        """Count the frames of a segment; cut off a torn frame at its end."""
        good = 0
        with open(seg.path, "r+b") as f:
            size = os.fstat(f.fileno()).st_size
            while good + _HDR.size <= size:
                length, _ = _HDR.unpack(f.read(_HDR.size))
                if good + _HDR.size + length > size:
                    break
                f.seek(length, os.SEEK_CUR)
                good += _HDR.size + length
                seg.records += 1
                seg.payload += length
            if good < size:
                f.truncate(good)
        seg.size = good

    def _path(self, seq: int) -> Path:
        return self.directory / f"{seq:016d}{_SUFFIX}"

    # -------------------------------------------------------------------------------------------- writing
    def _open_segment(self) -> _Segment:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        seq = self._segments[-1].seq + 1 if self._segments else max(self._head.seq, 0) + 1
        seg = _Segment(seq, self._path(seq))
        fd = os.open(seg.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        self._writer = open(fd, "ab", buffering=0)  # noqa: SIM115 - kept open across calls
        if not self._segments:
            self._head = _Cursor(seq, 0, 0, 0)
        self._segments.append(seg)
        return seg

    def append(self, payloads: Sequence[bytes]) -> int:
        """Append records in order; returns how many were kept (the others were dropped and counted)."""
        kept = 0
        for index, payload in enumerate(payloads):
            need = _HDR.size + len(payload)
            if need > self.max_bytes or not self._make_room(need):
                self.dropped_events += 1
                self.dropped_bytes += len(payload)
                continue
            try:
                seg = self._segments[-1] if self._writer is not None else None
                if seg is None or seg.size >= self.segment_bytes:
                    seg = self._open_segment()
                self._write_frame(seg, _HDR.pack(len(payload), zlib.crc32(payload)) + payload)
            except OSError as exc:
                self._on_disk_full(payloads[index:], exc)
                break
            seg.records += 1
            seg.payload += len(payload)
            seg.size += need
            self._disk += need
            self.depth_events += 1
            self.depth_bytes += len(payload)
            self.appended_events += 1
            self.appended_bytes += len(payload)
            kept += 1
        if kept and self._writer is not None:
            if self._disk_full:
                log.info("spool %s: writing again after a full disk", self.directory)
                self._disk_full = False
            if self.fsync:
                with contextlib.suppress(OSError):
                    os.fsync(self._writer.fileno())
        return kept

    def _write_frame(self, seg: _Segment, frame: bytes) -> None:
        """One whole frame or none: a short or failed write is cut off again (OSError raised)."""
        assert self._writer is not None
        try:
            written = self._writer.write(frame)
            if written != len(frame):
                raise OSError(28, "short write (disk full?)")
        except OSError:
            with contextlib.suppress(OSError):
                os.ftruncate(self._writer.fileno(), seg.size)
            raise

    def _on_disk_full(self, rest: Sequence[bytes], exc: OSError) -> None:
        self.disk_full_events += len(rest)
        self.disk_full_bytes += sum(len(p) for p in rest)
        self.dropped_events += len(rest)
        self.dropped_bytes += sum(len(p) for p in rest)
        if not self._disk_full:
            log.warning("spool %s: cannot write (%s); newer records are dropped and counted until it can",
                        self.directory, exc.strerror or exc)
            self._disk_full = True

    def _make_room(self, need: int) -> bool:
        while self._disk + need > self.max_bytes:
            if self.when_full == "drop_newest" or not self._drop_oldest_segment():
                return False
        return True

    def _drop_oldest_segment(self) -> bool:
        """Delete the oldest segment whose records are not being delivered right now."""
        index = 0
        if self._inflight is not None:
            index = 1  # the head segment has a read in flight: its records are (being) delivered
        if index >= len(self._segments):
            return False
        seg = self._segments[index]
        if self._writer is not None and seg is self._segments[-1]:
            # The segment being written is the only candidate: start a new one so this one can go.
            if seg.records == 0:
                return False
            self._open_segment()
        consumed_records = self._head.records if index == 0 else 0
        consumed_payload = self._head.payload if index == 0 else 0
        lost_records = seg.records - consumed_records
        lost_payload = seg.payload - consumed_payload
        self.dropped_events += lost_records
        self.dropped_bytes += lost_payload
        self.depth_events -= lost_records
        self.depth_bytes -= lost_payload
        if index == 0:
            self._remove_head_segment()
            self._save_cursor()
        else:
            del self._segments[index]
            self._disk -= seg.size
            seg.path.unlink(missing_ok=True)
        return True

    # -------------------------------------------------------------------------------------------- reading
    def read(self, max_events: int, max_bytes: int) -> tuple[list[bytes], SpoolPosition]:
        """The oldest records not yet acked (at least one if any), without consuming them."""
        out: list[bytes] = []
        if not self._segments:
            return out, SpoolPosition(self._head.seq, self._head.offset, self._head.records, self._head.payload)
        nbytes = 0
        cur = _Cursor(self._head.seq, self._head.offset, self._head.records, self._head.payload)
        for seg in list(self._segments):
            if seg.seq < cur.seq:
                continue
            if seg.seq > cur.seq:
                cur = _Cursor(seg.seq, 0, 0, 0)
            if cur.records >= seg.records:
                continue
            with open(seg.path, "rb") as f:
                f.seek(cur.offset)
                while cur.records < seg.records and len(out) < max_events:
                    hdr = f.read(_HDR.size)
                    if len(hdr) < _HDR.size:
                        self._corrupt(seg, cur)
                        break
                    length, crc = _HDR.unpack(hdr)
                    if out and nbytes + length > max_bytes:
                        break
                    payload = f.read(length)
                    if len(payload) < length or zlib.crc32(payload) != crc:
                        self._corrupt(seg, cur)
                        break
                    out.append(payload)
                    nbytes += length
                    cur.offset += _HDR.size + length
                    cur.records += 1
                    cur.payload += length
            if len(out) >= max_events or (out and nbytes >= max_bytes):
                break
            if cur.records < seg.records:
                break  # stopped by the byte limit inside this segment
        pos = SpoolPosition(cur.seq, cur.offset, cur.records, cur.payload)
        if out:
            self._inflight = pos
        return out, pos

    def _corrupt(self, seg: _Segment, cur: _Cursor) -> None:
        """The rest of ``seg`` from ``cur`` is unreadable: shrink the segment to what was read, count the loss."""
        lost = seg.records - cur.records
        self.corrupt_events += lost
        self.dropped_events += lost
        self.dropped_bytes += seg.payload - cur.payload
        self.depth_events -= lost
        self.depth_bytes -= seg.payload - cur.payload
        seg.records = cur.records
        seg.payload = cur.payload
        if self._writer is not None and seg is self._segments[-1]:
            self._writer.close()  # never append behind unreadable bytes
            self._writer = None

    def ack(self, pos: SpoolPosition) -> None:
        """Everything up to ``pos`` (from ``read``) was delivered: forget it."""
        self._inflight = None
        while self._segments and self._segments[0].seq < pos.seq:
            self._forget_head()
        if not self._segments or self._segments[0].seq != pos.seq:
            return  # that segment was dropped meanwhile
        if pos.records <= self._head.records:
            return
        self.depth_events -= pos.records - self._head.records
        self.depth_bytes -= pos.payload - self._head.payload
        self.acked_events += pos.records - self._head.records
        self.acked_bytes += pos.payload - self._head.payload
        self._head = _Cursor(pos.seq, pos.offset, pos.records, pos.payload)
        self._drop_consumed_head()
        self._save_cursor()

    def _forget_head(self) -> None:
        """The head segment was delivered up to its end: count the rest as acked and delete it."""
        seg = self._segments[0]
        self.depth_events -= seg.records - self._head.records
        self.depth_bytes -= seg.payload - self._head.payload
        self.acked_events += seg.records - self._head.records
        self.acked_bytes += seg.payload - self._head.payload
        self._remove_head_segment()

    def _remove_head_segment(self) -> None:
        seg = self._segments.popleft()
        if self._writer is not None and not self._segments:  # it was the segment being written
            self._writer.close()
            self._writer = None
        self._disk -= seg.size
        seg.path.unlink(missing_ok=True)
        self._head = _Cursor(self._segments[0].seq if self._segments else seg.seq, 0, 0, 0)

    def _drop_consumed_head(self) -> None:
        """Delete head segments that are fully delivered; when that was the segment being written, the
        next append starts a fresh one."""
        while self._segments and self._head.records >= self._segments[0].records:
            self._remove_head_segment()

    def _save_cursor(self) -> None:
        tmp = self.directory / "cursor.tmp"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with open(fd, "wb") as f:
                f.write(msgspec.json.encode(self._head))
            os.replace(tmp, self.directory / "cursor")
        except OSError as exc:
            # A full disk: the cursor on disk stays behind, so a crash now re-delivers (at least once).
            log.warning("spool %s: cannot save the cursor (%s)", self.directory, exc.strerror or exc)

    # ---------------------------------------------------------------------------------------------- misc
    def __len__(self) -> int:
        return self.depth_events

    @property
    def disk_bytes(self) -> int:
        return self._disk

    def stats(self) -> SpoolStats:
        return SpoolStats(
            depth_events=self.depth_events,
            depth_bytes=self.depth_bytes,
            disk_bytes=self._disk,
            appended_events=self.appended_events,
            appended_bytes=self.appended_bytes,
            acked_events=self.acked_events,
            acked_bytes=self.acked_bytes,
            dropped_events=self.dropped_events,
            dropped_bytes=self.dropped_bytes,
            corrupt_events=self.corrupt_events,
            disk_full_events=self.disk_full_events,
            disk_full_bytes=self.disk_full_bytes,
        )

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        if self._lock_fd >= 0:
            os.close(self._lock_fd)  # releases the flock
            self._lock_fd = -1

    def __enter__(self) -> Spool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
