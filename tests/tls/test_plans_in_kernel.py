"""The plans, run by the real kernel: tracefs uprobe events (no BPF) at exactly the planned sites, on
private copies of Debian's libssl and libgnutls, fetching the registers each site names.

Checks what the analysis claims: the entry site sees the plaintext and length in the named registers,
every return fires with rsp = entry rsp + sp_delta, and ``ret`` has the documented meaning. Needs root
and tracefs (the kernel), not BPF: marked bpf so machines without them deselect it explicitly.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from qtap_async.tls.libraries import analyze_file
from qtap_async.tls.model import FileKey, ProbePlan, TlsLibrary

from .test_probe_points import _ldconfig
from .tracefs import UprobeEvents, available

pytestmark = pytest.mark.bpf

WORKLOAD = r"""
import ssl, sys
d = sys.argv[1]
srv_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER); srv_ctx.load_cert_chain(d + "/c.pem", d + "/k.pem")
cli_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT); cli_ctx.check_hostname = False
cli_ctx.verify_mode = ssl.CERT_NONE
cin, cout, sin, sout = ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO()
cli = cli_ctx.wrap_bio(cin, cout, server_side=False); srv = srv_ctx.wrap_bio(sin, sout, server_side=True)
for _ in range(20):
    for o in (cli, srv):
        try:
            o.do_handshake()
        except ssl.SSLWantReadError:
            pass
    sin.write(cout.read()); cin.write(sout.read())
maps = open("/proc/self/maps").read()
assert d + "/libssl.so.3" in maps, "private libssl copy not loaded"
for i in range(5):
    msg = b"qtap-plaintext-%d-" % i + b"x" * i
    cli.write(msg); sin.write(cout.read())
    assert srv.read(100) == msg
try:
    srv.read(10)
except ssl.SSLWantReadError:
    pass
"""


def _need_kernel() -> None:
    if not available():
        pytest.fail("needs root and tracefs uprobe_events (deselect with -m 'not bpf')")


def _cert(d: Path) -> None:
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            str(d / "k.pem"),
            "-out",
            str(d / "c.pem"),
            "-days",
            "1",
            "-subj",
            "/CN=localhost",
        ],
        check=True,
        capture_output=True,
    )


def _lib(path: Path) -> TlsLibrary:
    st = os.stat(path)
    lib = analyze_file(str(path), FileKey(st.st_dev, st.st_ino))
    assert lib is not None
    return lib


def _treg(reg: str) -> str:
    """tracefs register names: %ax, %si, %r8 ... (the 32-bit name maps to its 64-bit register)."""
    full = {"eax": "rax", "ecx": "rcx", "edx": "rdx", "esi": "rsi", "edi": "rdi"}.get(reg, reg)
    return "%" + (full[1:] if full.startswith("r") and not full[1:].isdigit() else full)


def _fetch(plan: ProbePlan, role: str, regs: dict[str, str]) -> str:
    parts = ["sp=%sp:x64"]
    for name, reg in regs.items():
        r = _treg(reg)
        if role != "entry":
            parts.append(f"ret={r}:s32" if reg.startswith("e") else f"ret={r}:s64")
        elif name == "buf":
            parts.append(f"buf=+0({r}):string")
        elif name in ("num", "size"):
            parts.append(f"{name}={r}:u64")
        elif name == "data":
            parts.append(f"data=+0({r}):u32")
    return " ".join(parts)


def _pairs(
    events: list[tuple[str, dict[str, str]]], kinds: dict[str, tuple[str, int | None]]
) -> list[tuple[str, dict[str, str], dict[str, str]]]:
    """(function, entry fields, return fields): each return paired with the pending entry of its plan,
    whose rsp must differ by exactly the site's sp_delta."""
    pending: dict[str, dict[str, str]] = {}
    out = []
    for name, fields in events:
        plan, delta = kinds[name]
        if delta is None:
            pending[plan] = fields
            continue
        entry = pending.pop(plan, None)
        if entry is None:
            continue  # a shared callee returning for a caller we do not probe: nothing to pair with
        assert int(fields["sp"], 16) - int(entry["sp"], 16) == delta, (name, entry, fields)
        out.append((plan, entry, fields))
    return out


def test_openssl_plans_in_the_kernel(tmp_path: Path) -> None:
    _need_kernel()
    _cert(tmp_path)
    lib_path = tmp_path / "libssl.so.3"
    shutil.copy(_ldconfig("libssl.so.3"), lib_path)
    plans = {p.function: p for p in _lib(lib_path).plans}
    kinds: dict[str, tuple[str, int | None]] = {}
    with UprobeEvents(str(lib_path)) as ev:
        for fn in ("SSL_write_ex", "SSL_read_ex"):
            for i, s in enumerate(plans[fn].sites):
                name = f"{fn.removeprefix('SSL_')}_{i}"
                ev.add(name, s.offset, s.role == "uretprobe", _fetch(plans[fn], s.role, s.regs))
                kinds[name] = (fn, None if s.role == "entry" else s.sp_delta)
        subprocess.run(
            [sys.executable, "-c", WORKLOAD, str(tmp_path)],
            check=True,
            timeout=120,
            env=dict(os.environ, LD_LIBRARY_PATH=str(tmp_path)),
        )
        events = ev.events()
    writes = [f for n, f in events if kinds[n] == ("SSL_write_ex", None)]
    assert [w["buf"] for w in writes][-5:] == [f'"qtap-plaintext-{i}-{"x" * i}"' for i in range(5)]
    assert all(int(w["num"]) == len(w["buf"]) - 2 for w in writes[-5:])
    pairs = _pairs(events, kinds)
    assert [int(r["ret"]) for fn, _e, r in pairs if fn == "SSL_write_ex"][-5:] == [1] * 5
    rets = [int(r["ret"]) for fn, _e, r in pairs if fn == "SSL_read_ex"]
    assert rets[-6:] == [1, 1, 1, 1, 1, -1]  # five records read, then WANT_READ (a negative int in eax)


def test_gnutls_plans_in_the_kernel(tmp_path: Path) -> None:
    _need_kernel()
    _cert(tmp_path)
    lib_path = tmp_path / "libgnutls.so.30"
    shutil.copy(os.path.realpath(_ldconfig("libgnutls.so.30")), lib_path)
    plans = {p.function: p for p in _lib(lib_path).plans}
    body = b"qtap-body-0123456789"
    response = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n" % len(body) + body
    server = (
        "import ssl, socket, sys\n"
        f"ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER); ctx.load_cert_chain('{tmp_path}/c.pem', '{tmp_path}/k.pem')\n"
        "s = socket.socket(); s.bind(('127.0.0.1', 0)); s.listen(1); print(s.getsockname()[1], flush=True)\n"
        "c, _ = s.accept(); t = ctx.wrap_socket(c, server_side=True); t.recv(4096)\n"
        f"t.sendall({response!r}); t.close()\n"
    )
    kinds: dict[str, tuple[str, int | None]] = {}
    with UprobeEvents(str(lib_path)) as ev:
        for fn, p in plans.items():
            for i, s in enumerate(p.sites):
                name = f"{fn.removeprefix('gnutls_record_')}_{i}"
                ev.add(name, s.offset, s.role == "uretprobe", _fetch(p, s.role, s.regs))
                kinds[name] = (fn, None if s.role == "entry" else s.sp_delta)
        srv = subprocess.Popen([sys.executable, "-c", server], stdout=subprocess.PIPE, text=True)
        try:
            assert srv.stdout is not None
            port = srv.stdout.readline().strip()
            got = subprocess.run(
                [
                    "wget",
                    "-q",
                    "-O",
                    "-",
                    "--tries=1",
                    "--timeout=30",
                    "--no-check-certificate",
                    f"https://127.0.0.1:{port}/x",
                ],
                capture_output=True,
                timeout=60,
                env=dict(os.environ, LD_LIBRARY_PATH=str(tmp_path)),
            )
        finally:
            srv.wait(30)
        events = ev.events()
    assert got.stdout == body
    pairs = _pairs(events, kinds)
    sends = [(e, r) for fn, e, r in pairs if fn == "gnutls_record_send"]
    assert sends and all(int(r["ret"]) == int(e["size"]) for e, r in sends)
    assert any(int(e["data"]) == int.from_bytes(b"GET ", "little") for e, _r in sends)
    recv_rets = [int(r["ret"]) for fn, _e, r in pairs if fn == "gnutls_record_recv"]
    assert sum(x for x in recv_rets if x > 0) == len(response)


GO_ECHO = """\
package main

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"fmt"
	"io"
	"math/big"
	"net"
	"time"
)

func main() {
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "x"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour)}
	der, _ := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	cert := tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
	a, b := net.Pipe()
	srv := tls.Server(a, &tls.Config{Certificates: []tls.Certificate{cert}})
	cli := tls.Client(b, &tls.Config{InsecureSkipVerify: true})
	done := make(chan bool)
	go func() {
		buf := make([]byte, 11)
		for i := 0; i < 5; i++ {
			io.ReadFull(srv, buf)
		}
		done <- true
	}()
	for i := 0; i < 5; i++ {
		fmt.Fprintf(cli, "qtap-go-%03d", i)
	}
	<-done
}
"""


def test_go_plans_in_the_kernel(tmp_path: Path) -> None:
    """Write's entry sees b (rbx) and len (rcx); Read's entry and RET sites pair by goroutine (r14)."""
    _need_kernel()
    import shutil as _sh

    go = _sh.which("go") or "/usr/local/go/bin/go"
    (tmp_path / "main.go").write_text(GO_ECHO)
    env = dict(os.environ, GOFLAGS="-mod=mod", CGO_ENABLED="0", GOTOOLCHAIN="local")
    env.setdefault("HOME", str(tmp_path))
    subprocess.run(
        [go, "build", "-o", "echo", "main.go"], cwd=tmp_path, env=env, check=True, capture_output=True, timeout=300
    )
    binary = tmp_path / "echo"
    plans = {p.function: p for p in _lib(binary).plans}
    w, r = plans["crypto/tls.(*Conn).Write"], plans["crypto/tls.(*Conn).Read"]
    with UprobeEvents(str(binary)) as ev:
        ev.add("w", w.sites[0].offset, False, "head=+0(%bx):u64 len=%cx:u64 g=%r14:x64")
        ev.add("re", r.sites[0].offset, False, "len=%cx:u64 g=%r14:x64")
        for i, s in enumerate(r.sites[1:]):
            ev.add(f"rr{i}", s.offset, False, "ret=%ax:s64 g=%r14:x64")
        subprocess.run([str(binary)], check=True, timeout=60)
        events = ev.events()
    heads = [int(f["head"]).to_bytes(8, "little") for n, f in events if n == "w" and f["len"] == "11"]
    assert heads == [f"qtap-go-{i:03d}".encode()[:8] for i in range(5)]
    pending: dict[str, dict[str, str]] = {}
    got = 0
    for name, f in events:
        if name == "re":
            pending[f["g"]] = f
        elif name.startswith("rr"):
            entry = pending.pop(f["g"])  # every RET pairs with a Read entry of the same goroutine
            assert int(f["ret"]) <= int(entry["len"])
            got += max(int(f["ret"]), 0)
    assert got == 5 * 11  # exactly the application bytes: the handshake does not go through Read


NODE_TLS = r"""
const tls = require('tls'), fs = require('fs');
const d = process.argv[1];  // with -e there is no script path in argv
const srv = tls.createServer({key: fs.readFileSync(d + '/k.pem'), cert: fs.readFileSync(d + '/c.pem')}, (s) => {
  let got = '';
  s.on('data', (b) => { got += b; if (got.length >= 55) { s.end(); srv.close(); } });
});
srv.listen(0, '127.0.0.1', () => {
  const c = tls.connect({port: srv.address().port, host: '127.0.0.1', rejectUnauthorized: false}, () => {
    for (let i = 0; i < 5; i++) c.write('qtap-nd-' + String(i).padStart(3, '0'));
  });
  c.on('data', () => {});
  c.on('end', () => c.destroy());
});
"""


def test_node_static_openssl_plans_in_the_kernel(tmp_path: Path) -> None:
    """node's SSL_* start with push: entry and uretprobe on the same instruction, paired at sp + 8."""
    _need_kernel()
    _cert(tmp_path)
    node = tmp_path / "node"
    shutil.copy(os.path.realpath(shutil.which("node") or "/usr/bin/node"), node)
    plans = {p.function: p for p in _lib(node).plans}
    kinds: dict[str, tuple[str, int | None]] = {}
    with UprobeEvents(str(node)) as ev:
        for fn, p in plans.items():
            for i, s in enumerate(p.sites):
                name = f"{fn.removeprefix('SSL_')}_{i}"
                fetch = "head=+0(%si):u64 num=%dx:u64 sp=%sp:x64" if s.role == "entry" else "ret=%ax:s32 sp=%sp:x64"
                ev.add(name, s.offset, s.role == "uretprobe", fetch)
                kinds[name] = (fn, None if s.role == "entry" else s.sp_delta)
        subprocess.run([str(node), "-e", NODE_TLS, str(tmp_path)], check=True, timeout=60)
        events = ev.events()
    pairs = _pairs(events, kinds)
    # node may coalesce the five writes into fewer SSL_write calls: check the bytes, not the call count
    app = [
        (fn, e, r)
        for fn, e, r in pairs
        if fn.startswith("SSL_write") and int(e["head"]).to_bytes(8, "little") == b"qtap-nd-"
    ]
    assert app and all(int(r["ret"]) == (int(e["num"]) if fn == "SSL_write" else 1) for fn, e, r in app)
    assert sum(int(e["num"]) for _fn, e, _r in app) == 55
    read_total = sum(int(r["ret"]) for fn, _e, r in pairs if fn == "SSL_read" and int(r["ret"]) > 0)
    read_ex = [int(r["ret"]) for fn, _e, r in pairs if fn == "SSL_read_ex"]
    assert read_total == 55 or (read_ex and read_total == 0), (read_total, read_ex)
