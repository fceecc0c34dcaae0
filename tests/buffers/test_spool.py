import os
import stat
from pathlib import Path

import pytest

from qtap_async.buffers import Spool, SpoolError


def recs(n: int, size: int = 100, start: int = 0) -> list[bytes]:
    return [(b"%08d" % i).ljust(size, b".") for i in range(start, start + n)]


def drain(sp: Spool, batch: int = 7) -> list[bytes]:
    out: list[bytes] = []
    while sp.depth_events:
        got, pos = sp.read(batch, 1 << 20)
        out += got
        sp.ack(pos)
    return out


def test_in_order_across_segments_and_ack(tmp_path: Path) -> None:
    with Spool(tmp_path, max_bytes=1 << 20, segment_bytes=1000) as sp:
        data = recs(50)
        assert sp.append(data) == 50
        assert len(list(tmp_path.glob("*.seg"))) > 3
        assert (sp.depth_events, sp.depth_bytes) == (50, 5000)
        assert drain(sp) == data
        assert sp.depth_events == 0 and sp.depth_bytes == 0
        assert list(tmp_path.glob("*.seg")) == []
        assert sp.stats().acked_events == 50


def test_read_without_ack_redelivers(tmp_path: Path) -> None:
    with Spool(tmp_path, max_bytes=1 << 20) as sp:
        sp.append(recs(5))
        first, _ = sp.read(3, 1 << 20)
        again, pos = sp.read(3, 1 << 20)
        assert first == again == recs(3)
        sp.ack(pos)
        assert sp.read(10, 1 << 20)[0] == recs(2, start=3)


def test_byte_limit_on_read_returns_at_least_one(tmp_path: Path) -> None:
    with Spool(tmp_path, max_bytes=1 << 20) as sp:
        sp.append(recs(5, size=100))
        assert len(sp.read(10, 250)[0]) == 2
        assert len(sp.read(10, 10)[0]) == 1


def test_survives_restart_with_partial_ack(tmp_path: Path) -> None:
    data = recs(40)
    sp = Spool(tmp_path, max_bytes=1 << 20, segment_bytes=800)
    sp.append(data)
    got, pos = sp.read(15, 1 << 20)
    assert got == data[:15]
    sp.ack(pos)
    sp.close()
    sp2 = Spool(tmp_path, max_bytes=1 << 20, segment_bytes=800)
    assert sp2.depth_events == 25
    sp2.append(recs(3, start=40))
    assert drain(sp2) == data[15:] + recs(3, start=40)
    sp2.close()
    with Spool(tmp_path, max_bytes=1 << 20) as sp3:
        assert sp3.depth_events == 0


def test_numbering_continues_after_everything_was_delivered(tmp_path: Path) -> None:
    with Spool(tmp_path, max_bytes=1 << 20) as sp:
        sp.append(recs(3))
        drain(sp)
    with Spool(tmp_path, max_bytes=1 << 20) as sp:
        sp.append(recs(2, start=3))
    # a stale cursor must not hide the new records
    with Spool(tmp_path, max_bytes=1 << 20) as sp:
        assert drain(sp) == recs(2, start=3)


def test_torn_tail_is_cut(tmp_path: Path) -> None:
    with Spool(tmp_path, max_bytes=1 << 20) as sp:
        sp.append(recs(3))
    seg = sorted(tmp_path.glob("*.seg"))[-1]
    with open(seg, "ab") as f:
        f.write(b"\x40\x00\x00\x00\x00\x00\x00\x00partial")  # header says 64 bytes, 7 written
    with Spool(tmp_path, max_bytes=1 << 20) as sp:
        assert sp.depth_events == 3
        assert drain(sp) == recs(3)


def test_corrupt_frame_is_counted_and_skipped(tmp_path: Path) -> None:
    with Spool(tmp_path, max_bytes=1 << 20, segment_bytes=450) as sp:
        sp.append(recs(10))
    first = sorted(tmp_path.glob("*.seg"))[0]
    raw = bytearray(first.read_bytes())
    raw[8 + 100 + 8 + 5] ^= 0xFF  # payload of the second record
    first.write_bytes(bytes(raw))
    with Spool(tmp_path, max_bytes=1 << 20, segment_bytes=450) as sp:
        got = drain(sp)
        assert got[0] == recs(1)[0]
        assert set(got[1:]) <= set(recs(10)) and len(got) < 10
        assert sp.stats().corrupt_events == 10 - len(got)
        assert sp.stats().dropped_events == 10 - len(got)


def test_drop_oldest_when_full(tmp_path: Path) -> None:
    with Spool(tmp_path, max_bytes=8192, when_full="drop_oldest", segment_bytes=1024) as sp:
        data = recs(200)
        kept = sp.append(data)
        assert kept == 200
        st = sp.stats()
        assert sp.disk_bytes <= 8192
        assert st.dropped_events > 0
        assert st.dropped_events + sp.depth_events == 200
        assert st.dropped_bytes == st.dropped_events * 100
        got = drain(sp)
        assert got == data[-len(got):]  # the newest survive, in order


def test_drop_newest_when_full(tmp_path: Path) -> None:
    with Spool(tmp_path, max_bytes=8192, when_full="drop_newest", segment_bytes=1024) as sp:
        data = recs(200)
        kept = sp.append(data)
        assert 0 < kept < 200
        assert sp.stats().dropped_events == 200 - kept
        assert drain(sp) == data[:kept]  # the oldest survive


def test_drop_oldest_spares_records_in_flight(tmp_path: Path) -> None:
    with Spool(tmp_path, max_bytes=8192, when_full="drop_oldest", segment_bytes=1024) as sp:
        sp.append(recs(30))
        inflight, pos = sp.read(3, 1 << 20)
        sp.append(recs(100, start=30))
        sp.ack(pos)
        rest = drain(sp)
        assert inflight == recs(3)
        assert sp.stats().dropped_events + len(rest) + 3 == 130


def test_record_larger_than_the_spool_is_dropped(tmp_path: Path) -> None:
    with Spool(tmp_path, max_bytes=4096) as sp:
        assert sp.append([b"x" * 5000]) == 0
        assert sp.stats().dropped_bytes == 5000


def test_one_process_at_a_time(tmp_path: Path) -> None:
    with Spool(tmp_path, max_bytes=1 << 20), pytest.raises(SpoolError, match="in use"):
        Spool(tmp_path, max_bytes=1 << 20)


def test_directory_and_files_are_private(tmp_path: Path) -> None:
    d = tmp_path / "spool"
    d.mkdir(mode=0o777)
    os.chmod(d, 0o777)  # an existing, too-open directory is tightened
    with Spool(d, max_bytes=1 << 20) as sp:
        sp.append(recs(3))
        sp.ack(sp.read(1, 1 << 20)[1])
    assert stat.S_IMODE(d.stat().st_mode) == 0o700
    for f in d.iterdir():
        assert stat.S_IMODE(f.stat().st_mode) == 0o600, f.name


def test_write_error_drops_the_rest_of_the_batch_and_recovers(tmp_path: Path) -> None:
    """What a full disk does (the real full disk is in tests/integration/test_crash_safety.py)."""
    with Spool(tmp_path, max_bytes=1 << 20) as sp:
        sp.append(recs(2))
        real = sp._write_frame
        calls = {"n": 0}

        def failing(seg, frame):  # type: ignore[no-untyped-def]
            calls["n"] += 1
            if calls["n"] == 2:
                raise OSError(28, "No space left on device")
            real(seg, frame)

        sp._write_frame = failing  # type: ignore[method-assign]
        assert sp.append(recs(5)[2:]) == 1
        st = sp.stats()
        assert st.disk_full_events == 2 and st.dropped_events == 2 and st.depth_events == 3
        sp._write_frame = real  # type: ignore[method-assign]
        assert sp.append([b"after"]) == 1
        assert drain(sp) == [*recs(3), b"after"]
