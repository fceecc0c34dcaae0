"""Ordered byte streams from offset-tagged chunks.

Each data record names the offset of its first byte in its (connection, source, direction) stream and how
many bytes after its payload were not captured. Records of one stream can reach user space out of order
(two threads writing one socket on two CPUs) or not at all (ring buffer full). A StreamReassembler puts
chunks back in order, holds early chunks until the missing bytes arrive, and reports every hole as a gap
with its size: bytes are never glued across a hole.

Output segments are `bytes` (stream data, in order) or `Gap` (an int: that many bytes are missing, with
the reason: what the record said about its skipped bytes, or "lost" for a hole between records).
"""

from __future__ import annotations

from dataclasses import dataclass


class Gap(int):
    """A hole in a stream: `int(gap)` bytes are missing, for `gap.reason`."""

    reason: str

    def __new__(cls, n: int, reason: str) -> Gap:
        g = super().__new__(cls, n)
        g.reason = reason
        return g

    def __repr__(self) -> str:
        return f"Gap({int(self)}, {self.reason!r})"


Segment = bytes | int
LOST = "lost"

# Early chunks held per stream before the hole before them is declared a gap. Reordering in the ring
# buffer spans a few records (two threads writing one socket from two CPUs); a longer hole is a drop that
# will never fill, and holding more only costs memory (x every stream under overload).
DEFAULT_MAX_PENDING_BYTES = 256 << 10
DEFAULT_MAX_PENDING_CHUNKS = 8


@dataclass
class ReassemblyStats:
    gaps: int = 0
    gap_bytes: int = 0
    duplicate_bytes: int = 0
    reordered_chunks: int = 0


class StreamReassembler:
    """One direction of one connection."""

    __slots__ = ("_pending", "_pending_bytes", "max_pending_bytes", "max_pending_chunks", "next", "stats")

    def __init__(
        self,
        start: int | None = 0,
        *,
        max_pending_bytes: int = DEFAULT_MAX_PENDING_BYTES,
        max_pending_chunks: int = DEFAULT_MAX_PENDING_CHUNKS,
        stats: ReassemblyStats | None = None,
    ) -> None:
        # start=None: the stream was joined mid-way, the first chunk seen defines the start.
        self.next = start
        # Early chunks by offset; None until the first one (most streams never have one, and an empty dict
        # per direction of every idle connection adds up).
        self._pending: dict[int, tuple[bytes, int, str]] | None = None
        self._pending_bytes = 0
        self.max_pending_bytes = max_pending_bytes
        self.max_pending_chunks = max_pending_chunks
        self.stats = stats if stats is not None else ReassemblyStats()

    @property
    def pending_bytes(self) -> int:
        return self._pending_bytes

    def advance(self, offset: int, n: int) -> bool:
        """The common chunk, fully captured and exactly the next bytes with nothing held: taken (the caller
        delivers its payload as is) and True. Otherwise False, nothing changed: ``push`` it instead."""
        if offset != self.next or self._pending is not None:
            return False
        self.next = offset + n
        return True

    def push(self, offset: int, payload: bytes, skipped: int = 0, reason: str = "truncated") -> list[Segment]:
        """Add a chunk: `payload` at `offset`, then `skipped` bytes that were not captured (for `reason`)."""
        if self.next is None:
            self.next = offset
        out: list[Segment] = []
        if offset != self.next:
            if offset > self.next:
                pending = self._hold(offset, payload, skipped, reason)
                if len(pending) > self.max_pending_chunks or self._pending_bytes > self.max_pending_bytes:
                    self._skip_to_first_pending(out)
                    self._drain(out)
                return out
            payload, skipped = self._trim(offset, payload, skipped)
            if not payload and not skipped:
                return out
        self._emit(payload, skipped, reason, out)
        if self._pending:
            self._drain(out)
        return out

    def flush(self) -> list[Segment]:
        """The stream ended: deliver everything held, reporting the holes before it."""
        out: list[Segment] = []
        while self._pending:
            self._skip_to_first_pending(out)
            self._drain(out)
        return out

    def _trim(self, offset: int, payload: bytes, skipped: int) -> tuple[bytes, int]:
        # Part of the chunk is before what was already delivered (duplicate or overlap).
        assert self.next is not None
        behind = self.next - offset
        total = len(payload) + skipped
        if behind >= total:
            self.stats.duplicate_bytes += total
            return b"", 0
        self.stats.duplicate_bytes += behind
        if behind < len(payload):
            return payload[behind:], skipped
        return b"", skipped - (behind - len(payload))

    def _hold(self, offset: int, payload: bytes, skipped: int, reason: str) -> dict[int, tuple[bytes, int, str]]:
        pending = self._pending
        if pending is None:
            pending = self._pending = {}
        if offset in pending:
            old, old_skipped, _ = pending[offset]
            if len(old) + old_skipped >= len(payload) + skipped:
                self.stats.duplicate_bytes += len(payload) + skipped
                return pending
            self._pending_bytes -= len(old)
        pending[offset] = (payload, skipped, reason)
        self._pending_bytes += len(payload)
        self.stats.reordered_chunks += 1
        return pending

    def _emit(self, payload: bytes, skipped: int, reason: str, out: list[Segment]) -> None:
        assert self.next is not None
        if payload:
            out.append(payload)
            self.next += len(payload)
        if skipped:
            self._gap(skipped, reason, out)

    def _gap(self, n: int, reason: str, out: list[Segment]) -> None:
        assert self.next is not None
        last = out[-1] if out else None
        if isinstance(last, Gap) and last.reason == reason:
            out[-1] = Gap(last + n, reason)
        else:
            out.append(Gap(n, reason))
        self.next += n
        self.stats.gaps += 1
        self.stats.gap_bytes += n

    def _skip_to_first_pending(self, out: list[Segment]) -> None:
        assert self.next is not None and self._pending
        first = min(self._pending)
        if first > self.next:
            self._gap(first - self.next, LOST, out)

    def _drain(self, out: list[Segment]) -> None:
        # Deliver held chunks that are now in order (or overlap what was delivered).
        pending = self._pending
        if pending is None:
            return
        while pending:
            assert self.next is not None
            nxt = self.next
            if nxt in pending:
                payload, skipped, reason = pending.pop(nxt)
                self._pending_bytes -= len(payload)
                self._emit(payload, skipped, reason, out)
                continue
            first = min(pending)
            if first > nxt:
                return
            payload, skipped, reason = pending.pop(first)
            self._pending_bytes -= len(payload)
            payload, skipped = self._trim(first, payload, skipped)
            self._emit(payload, skipped, reason, out)
        self._pending = None  # all delivered: a dict keeps its grown table, so let it go
