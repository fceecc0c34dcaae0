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
