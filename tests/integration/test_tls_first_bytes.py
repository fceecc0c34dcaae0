"""Issue 16: processes started after the agent have every TLS byte captured from their first write.

Each client makes its one HTTP/2 request as soon as it starts (no warm-up, nothing waits for the agent),
from 20 fresh processes; every request must come out as an http_transaction of that pid with complete
request headers (HPACK decoded from the connection's first byte). Clients: a Go crypto/tls program,
node, and a statically linked OpenSSL program, all built or found by the tests. The server is nghttpd.

Ways of being covered in time, each tested: the held-exec mode (a never-analysed file is stopped at exec
until attached), the PATH pre-attach at start-up, and the on-disk analysis cache of a restarted agent.
"""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from qtap_async.events.kernel import Data
from qtap_async.tls.exec_hold import kernel_key_of
from qtap_async.tls.manager import TlsOptions
from qtap_async.topology import AgentOptions
from tests.integration.harness import PEERS, AgentHarness, free_port, wait_port

pytestmark = pytest.mark.bpf

NGHTTPD = shutil.which("nghttpd") or "/usr/bin/nghttpd"
NODE = shutil.which("node") or "/usr/bin/node"
RUNS = 20


@pytest.fixture(scope="module")
def h2_server(tmp_path_factory: pytest.TempPathFactory, cert: tuple[str, str]) -> Iterator[int]:
    root = tmp_path_factory.mktemp("www")
    (root / "hello.txt").write_bytes(b"first bytes\n")
    port = free_port()
    proc = subprocess.Popen([NGHTTPD, "-d", str(root), str(port), cert[1], cert[0]],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_port(port)
        yield port
    finally:
        proc.kill()
        proc.wait()


@pytest.fixture(scope="module")
def goh2(tmp_path_factory: pytest.TempPathFactory) -> str:
    go = shutil.which("go") or "/usr/local/go/bin/go"
    out = tmp_path_factory.mktemp("goh2") / "goh2"
    env = dict(os.environ, GOFLAGS="-mod=mod", CGO_ENABLED="0")
    subprocess.run([go, "build", "-o", str(out), "."], cwd=PEERS / "goh2", env=env, check=True, timeout=300)
    return str(out)


@pytest.fixture(scope="module")
def static_openssl(tmp_path_factory: pytest.TempPathFactory) -> str:
    out = tmp_path_factory.mktemp("h2c") / "tls_h2_client"
    subprocess.run(["gcc", "-O1", "-static", "-o", str(out), str(PEERS / "tlsh2c" / "tls_h2_client.c"),
                    "-lssl", "-lcrypto", "-lpthread"], check=True, capture_output=True, timeout=300)
    return str(out)


def _fresh_copy(src: str, tmp_path: Path) -> str:
    """A file no agent has seen: a new inode, so neither the cache nor an earlier test's probes know it."""
    dst = tmp_path / f"fresh-{os.path.basename(src)}"
    shutil.copy2(src, dst)
    return str(dst)


def _hpack_literal(name: str, value: str) -> bytes:
    """Literal header field without indexing, new name, no Huffman (RFC 7541 6.2.2); short strings only."""
    n, v = name.encode(), value.encode()
    assert len(n) < 127 and len(v) < 127
    return b"\x00" + bytes([len(n)]) + n + bytes([len(v)]) + v


def _h2_request(port: int, run: int) -> bytes:
    block = b"".join(_hpack_literal(k, v) for k, v in (
        (":method", "GET"), (":scheme", "https"), (":path", "/hello.txt"), (":authority", f"127.0.0.1:{port}"),
        ("user-agent", "static-openssl-h2"), ("x-qtap-run", str(run))))
    settings = struct.pack(">I", 0)[1:] + b"\x04\x00" + struct.pack(">I", 0)
    headers = struct.pack(">I", len(block))[1:] + b"\x01\x05" + struct.pack(">I", 1) + block
    return b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + settings + headers


def _node_js(port: int, run: int) -> str:
    return (
        "const t = process.hrtime.bigint(); const http2 = require('http2');"
        f"const c = http2.connect('https://127.0.0.1:{port}', {{rejectUnauthorized: false}});"
        f"const r = c.request({{':path': '/hello.txt', 'x-qtap-run': '{run}'}});"
        "let n = 0, st = 0; r.on('response', h => { st = h[':status']; }); r.on('data', d => { n += d.length; });"
        "r.on('end', () => { console.log(st, n, String(t)); c.close(); }); r.end();"
    )


def _run_client(kind: str, exe: str, port: int, run: int, tmp_path: Path) -> tuple[int, int]:
    """Start one fresh client process; returns (pid, ns from just before the spawn to its request)."""
    if kind == "go":
        argv = [exe, f"https://127.0.0.1:{port}/hello.txt", str(run)]
    elif kind == "node":
        argv = [exe, "-e", _node_js(port, run)]
    else:
        req = tmp_path / f"req{run}.bin"
        req.write_bytes(_h2_request(port, run))
        argv = [exe, "127.0.0.1", str(port), str(req)]
    t0 = time.monotonic_ns()
    p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = p.communicate(timeout=60)
    assert p.returncode == 0, (kind, out, err)
    fields = out.split()
    if kind != "openssl":
        assert fields[0] == b"200", out
    return p.pid, int(fields[2]) - t0


def _http(h: AgentHarness, **match: Any) -> list[dict[str, Any]]:
    return [e for e in h.events() if isinstance(e, dict) and e.get("type") == "http_transaction"
            and all(e.get(k) == v for k, v in match.items())]


H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


class PlaintextByPid:
    """Every TLS plaintext byte each process sent, straight from the kernel records (by the pid in the record
    header, whatever connection it was filed under)."""

    def __init__(self, h: AgentHarness) -> None:
        self.sent: dict[int, bytearray] = {}
        self.conn_ids: dict[int, set[int]] = {}
        ct = h.agent.conntrack
        inner = ct.handle

        def handle(rec: Any) -> list[Any]:
            if isinstance(rec, Data) and rec.source != 0 and rec.dir == 0:
                self.sent.setdefault(rec.pid, bytearray()).extend(rec.payload)
                self.conn_ids.setdefault(rec.pid, set()).add(rec.conn_id)
            return inner(rec)

        ct.handle = handle  # type: ignore[method-assign]


def _events_of(h: AgentHarness, tap: PlaintextByPid, pid: int) -> list[Any]:
    ids = tap.conn_ids.get(pid, set())
    return [e for e in h.events() if (e.get("conn_id") if isinstance(e, dict) else getattr(e, "conn_id", None)) in ids]


def _frame_kinds(data: bytes) -> list[int]:
    """The frame types after the client preface, in order (a frame cut short at the end counts)."""
    pos, kinds = len(H2_PREFACE), []
    while pos + 9 <= len(data):
        kinds.append(data[pos + 3])
        pos += 9 + int.from_bytes(data[pos:pos + 3], "big")
    return kinds


def _check_all_captured(h: AgentHarness, port: int, runs: list[tuple[int, int]], tap: PlaintextByPid) -> None:
    pids = {pid for pid, _ in runs}
    # 1. The probes saw each process's first TLS write: its plaintext starts with the HTTP/2 preface and
    # the HEADERS frame of stream 1 follows (after SETTINGS and maybe WINDOW_UPDATE). Go writes the
    # HEADERS frame in a write of its own after the preface, so the wait is for the frame, not for bytes.
    def headers_seen(pid: int) -> bool:
        return 1 in _frame_kinds(bytes(tap.sent.get(pid, b"")))

    assert h.wait_for(lambda: all(headers_seen(p) for p in pids)), (
        f"no plaintext from pids {sorted(p for p in pids if p not in tap.sent)}; frame kinds seen: "
        f"{ {p: _frame_kinds(bytes(tap.sent[p])) for p in sorted(pids) if p in tap.sent and not headers_seen(p)} }")
    for pid in pids:
        data = bytes(tap.sent[pid])
        assert data.startswith(H2_PREFACE), (pid, data[:64])
    # 2. The agent's output: one h2 transaction per pid, headers complete (HPACK decoded from the start).
    def reported() -> set[int]:
        return {e["pid"] for e in _http(h, dst_port=port, direction="egress")}

    # A connection filed under another's conn_id (kernel socket memory reused: issue 19) shows here.
    assert h.wait_for(lambda: reported() >= pids), (
        f"missing pids: {sorted(pids - reported())}; their conn ids: "
        f"{ {p: sorted(tap.conn_ids.get(p, ())) for p in sorted(pids - reported())} }; "
        f"conn ids reported: {sorted({e['conn_id'] for e in _http(h, dst_port=port, direction='egress')})}; "
        f"events of the first missing: {_events_of(h, tap, min(pids - reported(), default=0))}")
    by_pid = {e["pid"]: e for e in _http(h, dst_port=port, direction="egress") if e["pid"] in pids}
    for i, (pid, _delay) in enumerate(runs):
        tx = by_pid[pid]
        assert not tx.get("incomplete"), tx
        assert (tx["protocol"], tx["method"], tx["path"], tx["status"], tx["stream_id"]) == (
            "h2", "GET", "/hello.txt", 200, 1), tx
        assert tx["authority"] == f"127.0.0.1:{port}", tx
        headers = {k.lower(): v for k, v in tx["request_headers"].items()} if isinstance(
            tx["request_headers"], dict) else {k.lower(): v for k, v in tx["request_headers"]}
        assert headers.get("x-qtap-run") == str(i), headers


CLIENTS = ["go", "node", "openssl"]


@pytest.fixture
def client_exe(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, str]:
    kind: str = request.param
    if kind == "go":
        return kind, _fresh_copy(request.getfixturevalue("goh2"), tmp_path)
    if kind == "openssl":
        return kind, _fresh_copy(request.getfixturevalue("static_openssl"), tmp_path)
    return kind, NODE


@pytest.mark.parametrize("client_exe", CLIENTS, indirect=True)
def test_held_exec_captures_first_request_of_fresh_processes(
    client_exe: tuple[str, str], h2_server: int, tmp_path: Path
) -> None:
    kind, exe = client_exe
    opts = AgentOptions(http_level="details", tls_options=TlsOptions(
        state_dir=str(tmp_path / "state"), preattach_path=False, hold_exec=True,
        hold_children_of=os.getpid()))
    with AgentHarness(opts, record=False) as h:
        tap = PlaintextByPid(h)
        runs = [_run_client(kind, exe, h2_server, i, tmp_path) for i in range(RUNS)]
        _check_all_captured(h, h2_server, runs, tap)
        assert h.agent.tls is not None and h.agent.tls.hold is not None
        stats = h.agent.tls.hold.stats
        assert h.agent.tls.hold.held_pids() == []
        snap = h.agent.snapshot()
        assert snap["qtap_tls_exec_held_total"] == stats.held and snap["qtap_tls_exec_released_by_timeout_total"] == 0
    print(f"{kind}: spawn-to-request ms: first {runs[0][1] / 1e6:.1f}, others max "
          f"{max(d for _, d in runs[1:]) / 1e6:.1f}; holds {stats.held}, max hold {stats.hold_ns_max / 1e6:.1f} ms")
    if kind != "node":  # node may be known already (analysed through another test's state): fresh copies not
        assert stats.held >= 1 and stats.released >= 1 and stats.released_by_timeout == 0


def test_path_preattach_covers_first_run(goh2: str, h2_server: int, tmp_path: Path) -> None:
    bindir = tmp_path / "bin"
    bindir.mkdir()
    exe = shutil.copy2(goh2, bindir / "goh2")
    opts = AgentOptions(http_level="details", tls_options=TlsOptions(
        state_dir=str(tmp_path / "state"), preattach_path=True, path_dirs=(str(bindir),)))
    with AgentHarness(opts, record=False) as h:
        assert h.agent.tls is not None
        assert h.wait_for(lambda: h.agent.tls is not None and h.agent.tls.stats.path.done, 60)
        assert h.agent.tls.stats.path.tls == 1
        tap = PlaintextByPid(h)
        runs = [_run_client("go", str(exe), h2_server, i, tmp_path) for i in range(RUNS)]
        _check_all_captured(h, h2_server, runs, tap)


def test_restarted_agent_attaches_from_the_disk_cache(goh2: str, h2_server: int, tmp_path: Path) -> None:
    exe = _fresh_copy(goh2, tmp_path)
    state = str(tmp_path / "state")
    # First agent: sees the binary once (held at exec, so a process that exits at once is still analysed)
    # and keeps its analysis on disk.
    first = AgentOptions(tls_options=TlsOptions(state_dir=state, preattach_path=False, hold_exec=True,
                                                hold_children_of=os.getpid()))
    with AgentHarness(first, record=False) as h:
        p = subprocess.Popen([exe, f"https://127.0.0.1:{h2_server}/hello.txt", "x"], stdout=subprocess.PIPE)
        assert h.agent.tls is not None
        assert h.wait_for(lambda: any(s.path.endswith(os.path.basename(exe)) and s.attached
                                      for s in h.agent.tls.statuses()) if h.agent.tls else False)
        p.communicate(timeout=60)
    assert oct(os.stat(state).st_mode & 0o777) == "0o700"
    # Second agent: no PATH scan, no hold; the cache alone must cover the first run.
    second = AgentOptions(http_level="details", tls_options=TlsOptions(state_dir=state, preattach_path=False))
    with AgentHarness(second, record=False) as h:
        assert h.agent.tls is not None and h.agent.tls.stats.restored >= 1
        assert any(s.path == exe and s.attached for s in h.agent.tls.statuses())
        tap = PlaintextByPid(h)
        runs = [_run_client("go", exe, h2_server, i, tmp_path) for i in range(3)]
        _check_all_captured(h, h2_server, runs, tap)


def test_held_exec_never_holds_the_agents_own_children(tmp_path: Path) -> None:
    """With no parent filter (as in production), an exec whose parent is the agent's process runs untouched:
    the agent waits for some of its helpers, and one held would wait for it in turn. The same kind of file
    run from a shell (a grandchild) is held as usual."""
    own = _fresh_copy("/bin/true", tmp_path)
    via_shell = str(tmp_path / "fresh-true-in-shell")
    shutil.copy2("/bin/true", via_shell)
    opts = AgentOptions(tls_options=TlsOptions(state_dir=str(tmp_path / "state"), preattach_path=False,
                                               hold_exec=True))
    with AgentHarness(opts, record=False) as h:
        assert h.agent.tls is not None and h.agent.tls.hold is not None
        hold = h.agent.tls.hold
        held: list[tuple[int, int]] = []
        inner = hold.on_held

        async def on_held(pid: int, kdev: int, ino: int) -> None:
            held.append((kdev, ino))
            await inner(pid, kdev, ino)

        hold.on_held = on_held  # type: ignore[method-assign]
        subprocess.run([own], check=True, timeout=30)
        # "; true" keeps the shell from exec'ing its last command in place: it stays the parent.
        subprocess.run(["sh", "-c", f'"{via_shell}"; true'], check=True, timeout=30)
        assert h.wait_for(lambda: kernel_key_of(via_shell) in held), held
        assert kernel_key_of(own) not in held, held
