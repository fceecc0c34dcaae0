"""Probe-point analysis: synthetic functions with known answers, then the real binaries of this machine,
each plan re-verified independently from the file bytes (tests/tls/verify.py)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from qtap_async.tls.libraries import GNUTLS_SPECS, GO_SPECS, OPENSSL_SPECS, analyze_file
from qtap_async.tls.model import FileKey, ProbePlan, TlsLibrary
from qtap_async.tls.probe_points import CalleeContract, Code, EntryFinding, FuncSpec, plan_go, plan_sysv

from .verify import check_plan, check_site_emulated

READ = FuncSpec("SSL_read", ("ssl", "buf", "num"), ("ssl", "buf", "num"), "read", "ret if ret > 0")
GO_WRITE = FuncSpec("w", ("c", "buf", "len", "cap"), ("c", "buf", "len"), "write", "len", abi="go")
GO_READ = FuncSpec("r", ("c", "buf", "len", "cap"), ("c", "buf", "len"), "read", "ret if ret > 0", abi="go")
BASE = 0x10000
INTERNAL = 0x11000
ERR_NEW = 0x12000
OTHER = 0x13000


def rel32(at: int, size: int, target: int) -> bytes:
    return (target - (at + size)).to_bytes(4, "little", signed=True)


def ssl_read_like(second: bytes = bytes.fromhex("4889e1"), err_call: int = ERR_NEW, after: bytes = b"") -> bytes:
    """sub rsp,0x18; test edx,edx; js err; <second>; movsxd rdx,edx; call INTERNAL; <after> test eax,eax;
    jle out; mov eax,[rsp]; out: add rsp,0x18; ret; err: call ERR_new; mov eax,-1; jmp out"""
    c = bytearray(bytes.fromhex("4883ec1885d2") + b"\x78\x00" + second + bytes.fromhex("4863d2"))
    c += b"\xe8" + rel32(BASE + len(c), 5, INTERNAL)
    c += after + bytes.fromhex("85c0") + b"\x7e\x03" + bytes.fromhex("8b0424")
    out = len(c)
    c += bytes.fromhex("4883c418c3")
    err = len(c)
    c[7] = err - 8
    c += b"\xe8" + rel32(BASE + len(c), 5, err_call) + bytes.fromhex("b8ffffffff")
    c += b"\xeb" + (out - (len(c) + 2)).to_bytes(1, "little", signed=True)
    return bytes(c)


NAMES = {ERR_NEW: "ERR_new@plt", INTERNAL: None, OTHER: "BIO_write@plt"}


def resolve(addr: int) -> str | None:
    return NAMES.get(addr)


def callee_code_push(addr: int) -> Code | None:
    return Code(addr, bytes.fromhex("41554154c3"), addr - 0x10000)


def no_callee(addr: int) -> Code | None:
    return None


def contract(ent: EntryFinding) -> CalleeContract | None:
    if ent.callee != INTERNAL:
        return None
    return CalleeContract("internal read", ("ssl", "buf", "num", "processed_ptr"), "*processed_ptr if ret > 0")


def plan(code: bytes, **kw: object) -> ProbePlan:
    args: dict[str, object] = {"callee_code": no_callee, "contract": contract, **kw}
    return plan_sysv(READ, Code(BASE, code, 0x400), resolve, args["callee_code"], args["contract"])  # type: ignore[arg-type]


def test_call_site_and_jle_return_for_openssl3_shape() -> None:
    code = ssl_read_like()
    p = plan(code)
    assert p.fast, p.reason
    entry, ret = p.sites
    assert (entry.role, entry.mnemonic, entry.vaddr - BASE) == ("entry", "call", code.index(b"\xe8"))
    assert entry.regs == {"ssl": "rdi", "buf": "rsi", "num": "rdx", "processed_ptr": "rcx"}
    assert entry.offset == 0x400 + entry.vaddr - BASE  # file offsets, not addresses
    assert (ret.role, ret.mnemonic, ret.regs) == ("return", "jle", {"ret": "eax"})  # the callee returns int
    assert p.ret_meaning == "callee" and "processed_ptr" in p.length


def test_writing_rsi_before_the_call_forces_the_slow_path() -> None:
    p = plan(ssl_read_like(second=bytes.fromhex("4889e6")))  # mov rsi, rsp
    assert not p.fast
    assert [s.role for s in p.sites] == ["entry", "uretprobe"]
    assert all(s.vaddr == BASE and s.mnemonic == "sub" and not s.emulated for s in p.sites)
    assert "rsi" in p.reason and "overwritten" in p.reason


def test_branch_to_a_path_with_io_forces_the_slow_path() -> None:
    p = plan(ssl_read_like(err_call=OTHER))
    assert not p.fast and "BIO_write" in p.reason


def test_unknown_callee_contract_forces_the_slow_path() -> None:
    p = plan(ssl_read_like(), contract=None)
    assert not p.fast and "contract" in p.reason


def test_rax_written_after_call_uses_callee_uretprobe_or_falls_back() -> None:
    code = ssl_read_like(after=bytes.fromhex("4889c0"))  # mov rax, rax: a write, so jle no longer proves
    slow = plan(code)
    assert not slow.fast and "rax" in slow.reason
    fast = plan(code, callee_code=callee_code_push)
    assert fast.fast
    assert (fast.sites[1].role, fast.sites[1].vaddr, fast.sites[1].mnemonic) == ("uretprobe", INTERNAL, "push")


def test_jump_landing_between_call_and_return_site_is_rejected() -> None:
    # call INTERNAL; mov ecx, 1 ; jle +0 ... a later jmp lands on the jle, so it can be reached without
    # the call: the jle is no return site.
    c = bytearray(bytes.fromhex("4883ec18"))
    c += b"\xe8" + rel32(BASE + len(c), 5, INTERNAL)
    c += bytes.fromhex("b901000000")
    jle_at = len(c)
    c += b"\x7e\x00" + bytes.fromhex("4883c418c3")
    c += b"\xeb" + (jle_at - (len(c) + 2)).to_bytes(1, "little", signed=True)
    p = plan(bytes(c))
    assert not p.fast and "lands" in p.reason


def test_first_instruction_emulated_probes_entry_and_cheap_uretprobe() -> None:
    p = plan(bytes.fromhex("554889e55dc3"))
    assert p.fast and [(s.role, s.vaddr, s.mnemonic) for s in p.sites] == [
        ("entry", BASE, "push"),
        ("uretprobe", BASE, "push"),
    ]
    assert p.ret_meaning == "function"


def test_endbr64_then_push_is_entry_plus_4() -> None:
    p = plan(bytes.fromhex("f30f1efa554889e55dc3"))
    assert p.fast
    assert [(s.role, s.vaddr - BASE, s.mnemonic) for s in p.sites] == [("entry", 4, "push"), ("uretprobe", 4, "push")]


def test_go_entry_skips_the_morestack_branch() -> None:
    # cmp rsp,[r14+0x10]; jbe more; push rbp; mov rbp,rsp; pop rbp; ret; int3 x4;
    # more: call runtime.morestack_noctxt; jmp entry
    c = bytearray(bytes.fromhex("493b6610") + b"\x76\x00" + bytes.fromhex("554889e55dc3cccccccc"))
    more = len(c)
    c[5] = more - 6
    c += b"\xe8" + rel32(BASE + len(c), 5, 0x3000)
    c += b"\xeb" + (0 - (len(c) + 2)).to_bytes(1, "little", signed=True)
    code = Code(BASE, bytes(c), 0x1000)
    names = {0x3000: "runtime.morestack_noctxt.abi0"}
    w = plan_go(GO_WRITE, code, names.get)
    assert w.fast and [(s.role, s.vaddr - BASE, s.mnemonic) for s in w.sites] == [("entry", 6, "push")]
    assert w.sites[0].regs == {"c": "rax", "buf": "rbx", "len": "rcx", "cap": "rdi"}
    r = plan_go(GO_READ, code, names.get)
    assert [(s.role, s.vaddr - BASE) for s in r.sites] == [("entry", 6), ("go_ret", 11)]
    assert not r.fast  # RET is single-stepped
    # Without knowing the branch target is morestack, the jbe cannot be proven: slow fallback.
    assert not plan_go(GO_WRITE, code, lambda a: None).fast


# ---------------------------------------------------------------------------------------------------
# Real binaries on this machine


def _ldconfig(name: str) -> str:
    out = subprocess.run(["ldconfig", "-p"], capture_output=True, text=True, check=True).stdout
    for line in out.splitlines():
        if line.strip().startswith(name + " ") and "x86-64" in line:
            return line.rsplit("=>", 1)[1].strip()
    pytest.fail(f"{name} not found by ldconfig -p")


def _analyze(path: str | Path) -> TlsLibrary:
    import os

    st = os.stat(path)
    lib = analyze_file(str(path), FileKey(st.st_dev, st.st_ino))
    assert lib is not None, f"{path}: no TLS library recognised"
    return lib


def _plans(lib: TlsLibrary) -> dict[str, ProbePlan]:
    return {p.function: p for p in lib.plans}


SPECS = {s.name: s for s in (*OPENSSL_SPECS, *GNUTLS_SPECS, *GO_SPECS)}


def verify(path: str, lib: TlsLibrary, plan: ProbePlan) -> None:
    size = next(f.size for f in lib.functions if f.name == plan.function) or 0x400
    check_plan(path, plan, SPECS[plan.function].regs(), size)


def test_debian_libssl3_fast_call_site_plans() -> None:
    path = _ldconfig("libssl.so.3")
    lib = _analyze(path)
    assert lib.kind == "openssl" and lib.linkage == "shared"
    plans = _plans(lib)
    assert set(plans) == {"SSL_read", "SSL_write", "SSL_read_ex", "SSL_write_ex"}
    for p in plans.values():
        verify(path, lib, p)
    r = plans["SSL_read"]
    # Debian's SSL_read starts `sub $0x18,%rsp` (single-stepped): the probe must move to the call.
    assert r.fast and r.sites[0].mnemonic == "call" and r.sites[0].offset > r.func_offset
    assert r.sites[0].regs["buf"] == "rsi" and r.sites[0].regs["processed_ptr"] == "rcx"
    assert r.ret_meaning == "callee" and "ssl_read_internal" in r.callee
    # SSL_read_ex forwards to the same internal function; both share one return probe.
    assert plans["SSL_read_ex"].sites[0].mnemonic == "call"
    assert plans["SSL_read_ex"].sites[-1] == r.sites[-1]
    assert plans["SSL_write"].sites[-1] == plans["SSL_write_ex"].sites[-1]
    assert plans["SSL_write"].sites[-1] != r.sites[-1]


def test_node_static_openssl() -> None:
    lib = _analyze("/usr/bin/node")
    assert lib.kind == "openssl" and lib.linkage == "static" and lib.version.startswith("3.")
    plans = _plans(lib)
    assert {"SSL_read", "SSL_write"} <= set(plans)
    for p in plans.values():
        verify("/usr/bin/node", lib, p)
        assert p.fast, p.reason
        # node's SSL_* start with `push %rbp`: Recipe 1, entry and uretprobe on the same instruction
        assert p.sites[0].offset == p.func_offset and p.sites[0].mnemonic == "push"
    # node is not PIE: file offsets differ from addresses, and the plan must carry file offsets.
    assert all(s.offset != s.vaddr for p in plans.values() for s in p.sites)


def test_gnutls() -> None:
    path = _ldconfig("libgnutls.so.30")
    lib = _analyze(path)
    assert lib.kind == "gnutls" and lib.version.count(".") == 2
    plans = _plans(lib)
    assert set(plans) == {"gnutls_record_send", "gnutls_record_recv"}
    for p in plans.values():
        verify(path, lib, p)
        assert p.fast, p.reason
    # send: `xor; xor; jmp send2` -> entry and uretprobe both on the jmp (rsp untouched before it)
    send = plans["gnutls_record_send"]
    assert [(s.role, s.mnemonic) for s in send.sites] == [("entry", "jmp"), ("uretprobe", "jmp")]
    # recv: two I/O exits (kTLS call, tail jump to the record layer), parameters moved between registers
    recv = plans["gnutls_record_recv"]
    entries = [s for s in recv.sites if s.role == "entry"]
    assert len(entries) == 2 and all(e.regs["data"] == "rdx" and e.regs["size"] == "rcx" for e in entries)
    assert sum(s.role == "uretprobe" for s in recv.sites) == 2


def test_gnutls_openssl_compat_layer_is_not_openssl() -> None:
    path = _ldconfig("libgnutls-openssl.so.27")
    import os

    st = os.stat(path)
    assert analyze_file(path, FileKey(st.st_dev, st.st_ino)) is None


@pytest.mark.parametrize("variant", ["plain", "stripped"])
def test_go_plans(go_binaries: dict[str, Path], variant: str) -> None:
    path = str(go_binaries[variant])
    lib = _analyze(path)
    assert lib.kind == "go" and lib.stripped is (variant == "stripped")
    plans = _plans(lib)
    w, r = plans["crypto/tls.(*Conn).Write"], plans["crypto/tls.(*Conn).Read"]
    for p in (w, r):
        verify(path, lib, p)
        check_site_emulated(path, p.sites[0])
        # The site is past the stack-check jbe (hit twice when the stack grows), never on it.
        assert p.sites[0].mnemonic == "push" and p.sites[0].regs["buf"] == "rbx"
    assert w.fast and [s.role for s in w.sites] == ["entry"]
    rets = [s for s in r.sites if s.role == "go_ret"]
    assert rets and all(s.mnemonic == "ret" and not s.emulated for s in rets)


def test_independent_verifier_rejects_a_wrong_return_site() -> None:
    """The re-verification must be able to fail: move SSL_read's return site past `mov (%rsp),%eax`."""
    import msgspec

    from .verify import _MD

    path = _ldconfig("libssl.so.3")
    r = _plans(_analyze(path))["SSL_read"]
    entry = r.sites[0]
    with open(path, "rb") as f:
        f.seek(entry.offset)
        insns = list(_MD.disasm(f.read(64), entry.offset))
    # first emulated branch after an instruction that writes eax
    wrote = False
    bad = None
    for i in insns[1:]:
        wrote = wrote or (i.mnemonic == "mov" and i.op_str.startswith("eax"))
        if wrote and i.mnemonic.startswith("j"):
            bad = i
            break
    assert bad is not None
    site = msgspec.structs.replace(entry, offset=bad.address, mnemonic=bad.mnemonic, role="return", regs={"ret": "rax"})
    wrong = msgspec.structs.replace(r, sites=[entry, site])
    with pytest.raises(AssertionError, match="writes rax"):
        check_plan(path, wrong, SPECS["SSL_read"].regs(), 0x80)
    # ... and a claim that rsi holds buf at a site after rsi was overwritten must fail too
    lying = msgspec.structs.replace(entry, regs={"buf": "rdx"})
    with pytest.raises(AssertionError, match="does not hold buf"):
        check_plan(path, msgspec.structs.replace(r, sites=[lying, r.sites[1]]), SPECS["SSL_read"].regs(), 0x80)


def test_go_ret_sites_are_every_ret_of_read(go_binaries: dict[str, Path]) -> None:
    from .verify import _MD

    path = str(go_binaries["stripped"])
    lib = _analyze(path)
    fn = next(f for f in lib.functions if f.name == "crypto/tls.(*Conn).Read")
    with open(path, "rb") as f:
        f.seek(fn.offset)
        code = f.read(fn.size)
    rets = {i.address for i in _MD.disasm(code, fn.offset) if i.mnemonic == "ret"}
    plan = _plans(lib)["crypto/tls.(*Conn).Read"]
    assert rets and {s.offset for s in plan.sites if s.role == "go_ret"} == rets


RECV = FuncSpec("recv", ("session", "data", "size"), ("session", "data", "size"), "read", "ret if ret > 0")
X1, X2 = 0x14000, 0x15000


def gnutls_recv_like(after_call: bytes = bytes.fromhex("4898")) -> bytes:
    """sub rsp,8; mov rcx,rdx; test edi,edi; je L2; mov rdx,rsi; call X1; <after_call>; add rsp,8; ret;
    L2: mov rdx,rsi; add rsp,8; jmp X2"""
    c = bytearray(bytes.fromhex("4883ec084889d185ff") + b"\x74\x00" + bytes.fromhex("4889f2"))
    c += b"\xe8" + rel32(BASE + len(c), 5, X1)
    c += after_call + bytes.fromhex("4883c408c3")
    c[10] = len(c) - 11
    c += bytes.fromhex("4889f24883c408")
    c += b"\xe9" + rel32(BASE + len(c), 5, X2)
    return bytes(c)


def test_io_exits_with_register_moves() -> None:
    code = gnutls_recv_like()
    p = plan_sysv(RECV, Code(BASE, code, 0), lambda a: None, callee_code_push, None)
    assert p.fast, p.reason
    entries = [s for s in p.sites if s.role == "entry"]
    rets = {s.vaddr: s for s in p.sites if s.role == "uretprobe"}
    assert [(e.mnemonic, e.regs) for e in entries] == [
        ("call", {"session": "rdi", "data": "rdx", "size": "rcx"}),
        ("jmp", {"session": "rdi", "data": "rdx", "size": "rcx"}),
    ]
    # cdqe after the call: only eax carries the value; a tail jump returns to our caller (+8)
    assert (rets[X1].regs, rets[X1].sp_delta) == ({"ret": "eax"}, 0)
    assert (rets[X2].regs, rets[X2].sp_delta) == ({"ret": "rax"}, 8)
    assert p.ret_meaning == "function"


def test_io_exits_rejects_rax_change_after_the_call() -> None:
    p = plan_sysv(
        RECV, Code(BASE, gnutls_recv_like(bytes.fromhex("b801000000")), 0), lambda a: None, callee_code_push, None
    )
    assert not p.fast and "changes rax" in p.reason


def test_io_exits_needs_emulated_callee_hook() -> None:
    p = plan_sysv(RECV, Code(BASE, gnutls_recv_like(), 0), lambda a: None, no_callee, None)
    assert not p.fast and "not emulated" in p.reason


def test_every_openssl_copy_on_this_machine() -> None:
    """Debian's libssl, node's static copy, and any OpenSSL bundled in the venv's wheels (pyarrow ships
    3.6 with SSL_write_ex2): every plan re-verified, and SSL_read/SSL_write fast on all of them."""
    import glob
    import sys

    paths = [_ldconfig("libssl.so.3"), "/usr/bin/node"]
    venv = os.path.dirname(os.path.dirname(sys.executable))
    paths += sorted(glob.glob(os.path.join(venv, "lib", "python3*", "site-packages", "pyarrow", "libarrow.so.*")))
    checked = 0
    for path in paths:
        lib = _analyze(path)
        assert lib.kind == "openssl", path
        plans = _plans(lib)
        for p in plans.values():
            verify(path, lib, p)
            checked += 1
        assert plans["SSL_read"].fast and plans["SSL_write"].fast, (path, plans["SSL_write"].reason)
    assert checked >= 8


def test_go_read_memmove_candidate(go_binaries: dict[str, Path]) -> None:
    """The cheaper Read point is offered as a candidate only, never used as a site."""
    from elftools.elf.elffile import ELFFile

    path = str(go_binaries["plain"])
    lib = _analyze(path)
    r = _plans(lib)["crypto/tls.(*Conn).Read"]
    assert len(r.candidates) == 1 and r.candidates[0] not in r.sites
    cand = r.candidates[0]
    check_site_emulated(path, cand)
    assert cand.regs == {"dst": "rax", "src": "rbx", "n": "rcx"}
    assert "dst = b.ptr via its entry spill slot (checked)" in r.reason
    with open(path, "rb") as f:
        symtab = ELFFile(f).get_section_by_name(".symtab")
        memmove = next(s["st_value"] for s in symtab.iter_symbols() if s.name == "runtime.memmove")
    from .verify import insn_at

    assert int(insn_at(path, cand.offset).op_str, 16) - cand.offset == memmove - cand.vaddr


def test_attachments_merge_shared_return_probes() -> None:
    from qtap_async.tls import attachments

    lib = _analyze(_ldconfig("libssl.so.3"))
    att = attachments(lib)
    sites = {(s.offset, s.role == "uretprobe") for p in lib.plans for s in p.sites}
    assert {(a.offset, a.retprobe) for a in att} == sites
    assert len(att) < sum(len(p.sites) for p in lib.plans)  # SSL_read and SSL_read_ex share one
    shared = [a for a in att if len(a.roles) > 1]
    assert shared and all(a.retprobe for a in shared)
    assert {"SSL_read:uretprobe", "SSL_read_ex:uretprobe"} in [set(a.roles) for a in shared]


def test_return_register_width_follows_the_c_type() -> None:
    """OpenSSL returns int (read eax: rax's upper half is garbage), GnuTLS ssize_t (rax)."""
    ssl = _analyze(_ldconfig("libssl.so.3"))
    for p in ssl.plans:
        assert all(s.regs == {"ret": "eax"} for s in p.sites if s.role != "entry"), p.function
    gnutls = _plans(_analyze(_ldconfig("libgnutls.so.30")))
    assert [s.regs["ret"] for s in gnutls["gnutls_record_send"].sites if s.role != "entry"] == ["rax"]
    # the kTLS path sign-extends an int (cltq): only eax carries it there
    assert sorted(s.regs["ret"] for s in gnutls["gnutls_record_recv"].sites if s.role != "entry") == ["eax", "rax"]
