from __future__ import annotations

import itertools
import random

from hypothesis import given, settings
from hypothesis import strategies as st

from qtap_async.transforms.reassembly import Segment, StreamReassembler


def _flatten(segments: list[Segment]) -> tuple[bytes, int, list[Segment]]:
    data = b"".join(s for s in segments if isinstance(s, bytes))
    gaps = sum(s for s in segments if isinstance(s, int))
    return data, gaps, segments


def _chunks(stream: bytes, cuts: list[int]) -> list[tuple[int, bytes]]:
    points = sorted({c % (len(stream) + 1) for c in cuts} | {0, len(stream)})
    return [(a, stream[a:b]) for a, b in itertools.pairwise(points) if b > a]


def test_in_order() -> None:
    r = StreamReassembler()
    assert r.push(0, b"abc") == [b"abc"]
    assert r.push(3, b"def") == [b"def"]


def test_out_of_order_is_held_then_delivered() -> None:
    r = StreamReassembler()
    assert r.push(3, b"def") == []
    assert r.push(0, b"abc") == [b"abc", b"def"]
    assert r.stats.reordered_chunks == 1


def test_truncation_is_a_gap_not_glue() -> None:
    r = StreamReassembler()
    assert r.push(0, b"abc", skipped=5) == [b"abc", 5]
    assert r.push(8, b"xyz") == [b"xyz"]
    assert r.stats.gaps == 1 and r.stats.gap_bytes == 5


def test_missing_chunk_reported_at_flush() -> None:
    r = StreamReassembler()
    r.push(0, b"ab")
    assert r.push(10, b"kl") == []
    assert r.flush() == [8, b"kl"]


def test_pending_limit_forces_gap() -> None:
    r = StreamReassembler(max_pending_chunks=2)
    r.push(0, b"a")
    assert r.push(5, b"f") == []
    assert r.push(6, b"g") == []
    out = r.push(7, b"h")  # third held chunk: the hole at 1..5 is given up
    assert out == [4, b"f", b"g", b"h"]


def test_duplicates_and_overlaps_are_trimmed() -> None:
    r = StreamReassembler()
    r.push(0, b"abcdef")
    assert r.push(2, b"cd") == []
    assert r.push(4, b"efgh") == [b"gh"]
    assert r.stats.duplicate_bytes == 4


def test_midstream_start() -> None:
    r = StreamReassembler(start=None)
    assert r.push(1000, b"x") == [b"x"]
    assert r.next == 1001


@settings(max_examples=300, deadline=None)
@given(st.binary(min_size=1, max_size=2000), st.lists(st.integers(0, 5000), max_size=30), st.randoms())
def test_any_split_and_reordering_reassembles_the_same_stream(stream: bytes, cuts: list[int],
                                                              rnd: random.Random) -> None:
    chunks = _chunks(stream, cuts)
    rnd.shuffle(chunks)
    r = StreamReassembler(max_pending_chunks=10_000, max_pending_bytes=1 << 30)
    out: list[Segment] = []
    for off, data in chunks:
        out += r.push(off, data)
    out += r.flush()
    data, gaps, _ = _flatten(out)
    assert data == stream and gaps == 0


@settings(max_examples=300, deadline=None)
@given(st.binary(min_size=1, max_size=2000), st.lists(st.integers(0, 5000), max_size=30), st.randoms())
def test_the_in_order_fast_path_takes_exactly_what_push_would_deliver_as_is(stream: bytes, cuts: list[int],
                                                                           rnd: random.Random) -> None:
    chunks = _chunks(stream, cuts)
    rnd.shuffle(chunks)
    fast, slow = (StreamReassembler(max_pending_chunks=10_000, max_pending_bytes=1 << 30) for _ in range(2))
    out: list[Segment] = []
    taken = 0
    for off, data in chunks:  # as conntrack does: advance first, push when it declines
        expected = slow.push(off, data)
        if fast.advance(off, len(data)):
            assert expected == [data]  # push would have delivered this chunk alone and unchanged
            out.append(data)
            taken += 1
        else:
            out += fast.push(off, data)
        assert fast.next == slow.next and fast.pending_bytes == slow.pending_bytes
    out += fast.flush()
    assert b"".join(s for s in out if isinstance(s, bytes)) == stream
    assert taken >= (1 if chunks[0][0] == 0 else 0)  # a first chunk at offset 0 is always in order


def test_the_fast_path_declines_while_chunks_are_held() -> None:
    r = StreamReassembler()
    assert r.advance(0, 3)
    assert r.push(6, b"ghi") == []  # early: held
    assert not r.advance(3, 3)  # in order, but the held chunk must come out after it: push does that
    assert r.push(3, b"def") == [b"def", b"ghi"] and r.advance(9, 1)
    assert not r.advance(20, 1) and r.next == 10  # out of order: declined, nothing changed


@settings(max_examples=300, deadline=None)
@given(st.binary(min_size=2, max_size=2000), st.lists(st.integers(0, 5000), min_size=1, max_size=30),
       st.randoms(), st.data())
def test_dropped_chunks_are_reported_as_gaps_of_their_exact_size(stream: bytes, cuts: list[int],
                                                                 rnd: random.Random, data: st.DataObject) -> None:
    chunks = _chunks(stream, cuts)
    drop = data.draw(st.sets(st.integers(0, len(chunks) - 1), max_size=len(chunks) - 1))
    kept = [c for i, c in enumerate(chunks) if i not in drop]
    rnd.shuffle(kept)
    r = StreamReassembler(max_pending_chunks=10_000, max_pending_bytes=1 << 30)
    out: list[Segment] = []
    for off, d in kept:
        out += r.push(off, d)
    out += r.flush()
    # Rebuild the stream with holes as zero bytes: every kept byte sits at its true offset.
    rebuilt = bytearray()
    for s in out:
        rebuilt += s if isinstance(s, bytes) else b"\0" * s
    expected = bytearray(stream)
    for i, (off, d) in enumerate(chunks):
        if i in drop and off + len(d) <= len(rebuilt):
            expected[off : off + len(d)] = b"\0" * len(d)
    # Chunks dropped at the very end are invisible until the connection closes: truncate to what we saw.
    assert bytes(rebuilt) == bytes(expected[: len(rebuilt)])
    dropped_inside = sum(len(d) for i, (off, d) in enumerate(chunks) if i in drop and off + len(d) <= len(rebuilt))
    assert sum(s for s in out if isinstance(s, int)) == dropped_inside


def test_a_stream_without_reordering_keeps_no_pending_table() -> None:
    r = StreamReassembler(0)
    assert r.push(0, b"abc") == [b"abc"] and r._pending is None
    assert r.push(6, b"ghi") == [] and r._pending is not None  # early: held
    assert r.push(3, b"def") == [b"def", b"ghi"]
    assert r._pending is None and r.pending_bytes == 0  # all delivered: the table is let go
    assert r.push(9, b"j") == [b"j"] and r.flush() == []
