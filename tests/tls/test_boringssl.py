"""Signature-based SSL_read/SSL_write discovery on real, stripped grpcio builds (cygrpc.so from PyPI wheels),
re-checked independently from the bytes, then run by the kernel (tracefs uprobes, no BPF) under a real gRPC
TLS exchange: the found functions receive (ssl, buf, num) and return what SSL_read/SSL_write return."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from qtap_async.tls import boringssl
from qtap_async.tls.elf import ElfImage
from qtap_async.tls.libraries import analyze_file
from qtap_async.tls.model import FileKey, TlsLibrary

from .grpcio_wheels import VERSIONS, cygrpc
from .tracefs import UprobeEvents, available
from .verify import check_plan

PEERS = Path(__file__).resolve().parents[1] / "integration" / "peers"
ALL = ("installed", *VERSIONS)


def _lib(path: str) -> TlsLibrary:
    st = os.stat(path)
    lib = analyze_file(path, FileKey(st.st_dev, st.st_ino))
    assert lib is not None
    return lib


@pytest.mark.parametrize("version", ALL)
def test_grpcio_boringssl_found_with_fast_plans(version: str) -> None:
    path = cygrpc(version)
    with ElfImage.open(path) as img:
        assert not img.has_section(".symtab") and "SSL_read" not in img.find_functions(["SSL_read"])
        starts = set(img.function_starts())
    t0 = time.perf_counter()
    lib = _lib(path)
    ms = (time.perf_counter() - t0) * 1000
    assert ms < 5000, f"grpcio {version}: analysis took {ms:.0f} ms"
    assert (lib.kind, lib.stripped) == ("boringssl", True), lib
    assert {f.name for f in lib.functions} == {"SSL_read", "SSL_write"}
    assert all(p.fast for p in lib.plans) and {p.function for p in lib.plans} == {"SSL_read", "SSL_write"}
    for f in lib.functions:
        # A function start .eh_frame_hdr knows, i.e. the found offsets are whole functions, not mid-code.
        assert f.vaddr in starts, f
    for plan in lib.plans:
        size = next(f.size for f in lib.functions if f.name == plan.function)
        check_plan(path, plan, {"ssl": "rdi", "buf": "rsi", "num": "rdx"}, size)
        # Every site lies inside the function found.
        assert all(plan.func_offset <= s.offset < plan.func_offset + size for s in plan.sites), plan
    assert any("found by code signature" in n for n in lib.notes)


def test_signature_mismatch_is_reported_not_guessed(tmp_path: Path) -> None:
    """A real cygrpc.so whose SSL_write no longer raises BAD_LENGTH (its `mov edx, 0x6f` patched): no
    probes at all, and a note saying which signature failed."""
    bad = tmp_path / "cygrpc-patched.so"
    shutil.copy(cygrpc("installed"), bad)
    _patched_cygrpc(bad)
    lib = _lib(str(bad))
    assert lib.kind == "boringssl" and lib.plans == [] and lib.functions == []
    (note,) = lib.notes
    assert "not probed" in note and "SSL_write signature" in note and "matched 0 functions" in note, note


def test_not_boringssl_is_not_matched() -> None:
    """OpenSSL's own libssl has ssl_lib.c, not ssl_lib.cc: the signature path never claims it."""
    from .test_probe_points import _ldconfig

    with ElfImage.open(_ldconfig("libssl.so.3")) as img:
        assert not boringssl.is_boringssl(img)


def _fetch(role: str) -> str:
    if role == "entry":
        return "sp=%sp:x64 ssl=%di:x64 num=%dx:u64 head=+0(%si):u64"
    return "sp=%sp:x64 ret=%ax:s32"


@pytest.mark.bpf
def test_found_functions_behave_as_ssl_read_and_write_in_the_kernel(tmp_path: Path) -> None:
    if not available():
        pytest.fail("needs root and tracefs uprobe_events (deselect with -m 'not bpf')")
    import grpc  # type: ignore[import-untyped]

    # A private copy of the grpc package: only these processes map the probed file.
    shutil.copytree(os.path.dirname(grpc.__file__), tmp_path / "grpc")
    (lib_path,) = (tmp_path / "grpc" / "_cython").glob("cygrpc*.so")
    plans = {p.function: p for p in _lib(str(lib_path)).plans}
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(tmp_path / "k.pem"),
                    "-out", str(tmp_path / "c.pem"), "-days", "1", "-subj", "/CN=localhost", "-addext",
                    "subjectAltName=IP:127.0.0.1"], check=True, capture_output=True)
    env = dict(os.environ, PYTHONPATH=str(tmp_path))
    peer = [sys.executable, str(PEERS / "grpc_peer.py")]
    kinds: dict[str, tuple[str, int | None]] = {}
    with UprobeEvents(str(lib_path)) as ev:
        for fn, plan in plans.items():
            for i, s in enumerate(plan.sites):
                name = f"{fn.removeprefix('SSL_')}_{i}"
                ev.add(name, s.offset, s.role == "uretprobe", _fetch(s.role))
                kinds[name] = (fn, None if s.role == "entry" else s.sp_delta)
        srv = subprocess.Popen([*peer, "server", "--tls", str(tmp_path / "c.pem"), str(tmp_path / "k.pem")],
                               stdout=subprocess.PIPE, text=True, env=env)
        try:
            assert srv.stdout is not None
            port = srv.stdout.readline().split()[1]
            out = subprocess.run([*peer, "client", port, "--tls", str(tmp_path / "c.pem")], capture_output=True,
                                 text=True, check=True, timeout=60, env=env)
            assert out.stdout.splitlines()[0] == "echo:hello"
        finally:
            srv.kill()
            srv.wait()
        events = ev.events()
    # Pair each return with the entry of its function whose rsp differs by the site's sp_delta (threads of
    # two processes interleave; their stacks do not coincide).
    pending: dict[tuple[str, int], dict[str, str]] = {}
    pairs: list[tuple[str, dict[str, str], dict[str, str]]] = []
    for name, fields in events:
        fn, delta = kinds[name]
        sp = int(fields["sp"], 16)
        if delta is None:
            pending[(fn, sp)] = fields
        else:
            entry = pending.pop((fn, sp - delta), None)
            assert entry is not None, (name, fields)
            pairs.append((fn, entry, fields))
    writes = [(e, int(r["ret"])) for fn, e, r in pairs if fn == "SSL_write"]
    reads = [(e, int(r["ret"])) for fn, e, r in pairs if fn == "SSL_read"]
    assert writes and reads
    preface = int.from_bytes(b"PRI * HT", "little")
    # The client's first plaintext is the HTTP/2 connection preface, passed as buf.
    assert any(int(e["head"], 0) == preface for e, _ in writes), [e["head"] for e, _ in writes[:4]]
    # SSL_write: all of num written (grpc's BIO pair never blocks a write) or a failure.
    assert all(ret == int(e["num"]) or ret <= 0 for e, ret in writes), writes
    # SSL_read: never more than num, and some reads carry data.
    assert all(ret <= int(e["num"]) for e, ret in reads) and any(ret > 0 for _, ret in reads), reads
    # Reads and writes are on the same SSL objects (each side reads and writes its one connection).
    assert {e["ssl"] for e, r in reads if r > 0} <= {e["ssl"] for e, _ in writes}


def _patched_cygrpc(dst: Path) -> None:
    """Overwrite ``dst`` (a copy of cygrpc.so) so its SSL_write raises reason 112 where BAD_LENGTH (111) was."""
    with ElfImage.open(str(dst)) as img:
        found = boringssl.find(img)
        off = img.vaddr_to_offset(found.write)
    data = bytearray(dst.read_bytes())
    at = data.find(b"\xba" + boringssl.SSL_R_BAD_LENGTH.to_bytes(4, "little"), off, off + found.write_size)
    assert at > 0, "no `mov edx, 111` in SSL_write"
    data[at + 1] = 0x70
    dst.write_bytes(bytes(data))


def test_qtap_inspect_shows_boringssl_fast_and_a_mismatch_reason(tmp_path: Path) -> None:
    """`qtap inspect` on two processes importing grpc: one from an intact copy (boringssl, both functions on
    the fast path), one whose SSL_write signature was broken (NOT attachable, with the reason)."""
    import grpc  # type: ignore[import-untyped]

    procs = []
    try:
        for name in ("good", "bad"):
            shutil.copytree(os.path.dirname(grpc.__file__), tmp_path / name / "grpc")
            if name == "bad":
                (so,) = (tmp_path / name / "grpc" / "_cython").glob("cygrpc*.so")
                _patched_cygrpc(so)
            p = subprocess.Popen([sys.executable, "-c", "import grpc, sys, time; print('up', flush=True); "
                                  "time.sleep(120)"], stdout=subprocess.PIPE, text=True,
                                 env=dict(os.environ, PYTHONPATH=str(tmp_path / name)))
            assert p.stdout is not None and p.stdout.readline() == "up\n"
            procs.append(p)
        root = Path(__file__).resolve().parents[2]
        r = subprocess.run([sys.executable, "-m", "cli.main", "inspect", "--state-dir", str(tmp_path / "state")],
                           cwd=root, capture_output=True, text=True, timeout=300)
    finally:
        for p in procs:
            p.kill()
            p.wait()
    lines = r.stdout.splitlines()
    good = [i for i, line in enumerate(lines) if f"{tmp_path}/good/grpc/_cython/cygrpc" in line]
    bad = [i for i, line in enumerate(lines) if f"{tmp_path}/bad/grpc/_cython/cygrpc" in line]
    assert good and bad, r.stdout
    assert "[boringssl , shared, 1 processes] attachable; fast: SSL_write,SSL_read; slow: -" in lines[good[0]], (
        lines[good[0]])
    assert "[boringssl , shared, 1 processes] NOT attachable; fast: -; slow: -" in lines[bad[0]], lines[bad[0]]
    assert lines[bad[0] + 1].startswith("    reason: not probed: SSL_read/SSL_write not recognised without symbols: "
                                        "SSL_write signature"), lines[bad[0] + 1]
