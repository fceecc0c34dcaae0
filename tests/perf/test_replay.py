"""Record file format and replay: round trips, refusal of foreign files, fixtures against their live run."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import msgspec
import pytest
from typer.testing import CliRunner

from cli.main import app
from qtap_async.bpf import abi
from qtap_async.replay import (
    MAGIC,
    RecordFile,
    RecordFileError,
    RecordWriter,
    comparable,
    is_transaction,
    replay,
)

DATA = Path(__file__).resolve().parents[1] / "data"
FIXTURES = sorted(DATA.glob("*.qrec"))


def _hdr(rtype: int, conn_id: int, ts: int = 1000, pid: int = 4242) -> bytes:
    return abi.HDR.pack(rtype, abi.ABI_VERSION, 0, ts, conn_id, pid, pid)


def _open(conn_id: int, lport: int, rport: int) -> bytes:
    return abi.conn_open_record(1000, conn_id, 4242, lport=lport, rport=rport, role=abi.Role.CONNECT,
                                comm=b"client")


def _data(conn_id: int, direction: int, offset: int, payload: bytes, ts: int) -> bytes:
    return abi.data_record(ts, conn_id, 4242, payload, direction=direction, offset=offset)


def _close(conn_id: int, sent: int, received: int) -> bytes:
    return _hdr(2, conn_id, 9000) + abi.CONN_CLOSE.pack(sent, received, 1000, 0, 0)[32:]


def synthetic_http1(n: int) -> list[bytes]:
    req = b"GET /item HTTP/1.1\r\nHost: example.test\r\n\r\n"
    resp = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
    recs = [_open(7, 40000, 8080)]
    for i in range(n):
        recs.append(_data(7, 0, i * len(req), req, 2000 + 10 * i))
        recs.append(_data(7, 1, i * len(resp), resp, 2005 + 10 * i))
    recs.append(_close(7, n * len(req), n * len(resp)))
    return recs


def test_write_then_parse_returns_the_same_records_meta_and_trailer() -> None:
    recs = synthetic_http1(3)
    buf = io.BytesIO()
    w = RecordWriter(buf, {"workload": "unit"})
    w.write_batch(recs[:2])
    w.write_batch(recs[2:])
    w.close({"records": len(recs)})
    rf = RecordFile.parse(buf.getvalue())
    assert rf.records == recs
    assert rf.meta == {"workload": "unit"}
    assert rf.trailer == {"records": len(recs)}
    assert (rf.format_version, rf.abi_version) == (1, abi.ABI_VERSION)


def test_a_cut_recording_keeps_its_complete_records() -> None:
    recs = synthetic_http1(2)
    buf = io.BytesIO()
    RecordWriter(buf).write_batch(recs)
    raw = buf.getvalue()[:-10]  # killed mid-record: no end mark, no trailer, last record partial
    rf = RecordFile.parse(raw)
    assert rf.records == recs[:-1]
    assert rf.trailer is None


def test_foreign_files_are_refused() -> None:
    with pytest.raises(RecordFileError, match="magic"):
        RecordFile.parse(b"PCAP" + bytes(20))
    buf = io.BytesIO()
    RecordWriter(buf, abi_version=abi.ABI_VERSION + 1).close()
    with pytest.raises(RecordFileError, match="ABI"):
        RecordFile.parse(buf.getvalue())
    assert buf.getvalue().startswith(MAGIC)


def test_replay_runs_the_whole_pipeline_on_synthetic_records() -> None:
    sink = io.BytesIO()
    r = replay(synthetic_http1(5), level="details", sink=sink, batch_records=3, keep_events=True)
    assert r.records == 12 and r.decode_errors == 0 and r.internal_errors == 0
    assert r.transactions == 5
    lines = [json.loads(x) for x in sink.getvalue().splitlines()]
    assert len(lines) == r.events
    tx = [e for e in lines if e.get("type") == "http_transaction"]
    got = [(e["method"], e["path"], e["status"], e["response_body_size"]) for e in tx]
    assert got == [("GET", "/item", 200, 2)] * 5
    assert all(e["request_headers"] for e in tx)  # details level keeps headers


def test_replay_counts_malformed_records_instead_of_failing() -> None:
    recs = synthetic_http1(1)
    r = replay([recs[0], b"\x03\x00" + bytes(10), *recs[1:]])
    assert r.decode_errors == 1 and r.transactions == 1


def _events(events: list[Any]) -> list[dict[str, Any]]:
    return [comparable(e) for e in events]


@pytest.mark.parametrize("path", FIXTURES, ids=[p.stem for p in FIXTURES])
def test_fixture_replay_yields_what_the_live_run_emitted(path: Path) -> None:
    rf = RecordFile.load(path)
    assert rf.trailer is not None and "events" in rf.trailer
    live = rf.trailer["events"]
    r = replay(rf.records, level=rf.meta["level"], keep_events=True)
    assert r.decode_errors == 0 and r.internal_errors == 0
    live_tx = [e for e in _events(live) if e.get("type") == "http_transaction"]
    replay_tx = [e for e in _events(r.captured) if is_transaction(e)]
    assert len(live_tx) > 0
    assert replay_tx == live_tx
    # Connection events too, in the same order, except the ones for connections still open at the end
    # (the live run closed them at shutdown time, replay at the last record's time).
    def conns(evs: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
        return [(e["event"], e["conn_id"], e.get("bytes_sent"), e.get("bytes_received")) for e in evs
                if e.get("type") == "connection" and e.get("reason") != "shutdown"]
    assert conns(_events(r.captured)) == conns(_events(live))
    assert rf.trailer["records"] == len(rf.records)


def test_fixtures_are_small() -> None:
    assert FIXTURES, "tests/data/*.qrec fixtures are missing (benchmarks/make_fixtures.py records them)"
    assert sum(p.stat().st_size for p in FIXTURES) < 4 << 20


def test_cli_replay_prints_one_json_line_per_event(tmp_path: Path) -> None:
    f = tmp_path / "x.qrec"
    with f.open("wb") as out:
        w = RecordWriter(out)
        w.write_batch(synthetic_http1(4))
        w.close()
    res = CliRunner().invoke(app, ["replay", str(f), "--level", "summary", "--stats"])
    assert res.exit_code == 0, res.output
    lines = [msgspec.json.decode(x) for x in res.stdout.splitlines() if x.startswith("{")]
    tx = [e for e in lines if e.get("type") == "http_transaction"]
    assert len(tx) == 4 and "request_headers" not in tx[0]  # summary level: no headers


def test_cli_replay_refuses_a_foreign_file(tmp_path: Path) -> None:
    f = tmp_path / "bad.qrec"
    f.write_bytes(b"not a recording")
    res = CliRunner().invoke(app, ["replay", str(f)])
    assert res.exit_code == 1
    assert "bad magic" in res.output
