"""Find SSL_read/SSL_write in a BoringSSL that is linked statically and stripped (grpcio's cygrpc.so).

No symbol names them, so they are recognised by what BoringSSL's own source makes stable:

- Every ``OPENSSL_PUT_ERROR(SSL, reason)`` in ssl/ssl_lib.cc compiles to ``ERR_put_error(16, 0, reason,
  "<...>/ssl/ssl_lib.cc", line)``: a ``lea rcx, [rip + X]`` to that one file-name string, with ``edi = 16``
  (ERR_LIB_SSL) and ``edx = reason`` loaded before the call. BoringSSL never renumbers reason codes
  (they are ABI in include/openssl/ssl.h), while line numbers move every release, so only reasons are
  used. Functions are bounded by .eh_frame_hdr.
- SSL_write raises, in this order of source, SHOULD_NOT_HAVE_BEEN_CALLED (QUIC), UNINITIALIZED,
  SSL_HANDSHAKE_FAILURE and BAD_LENGTH: no other function of ssl_lib.cc raises all four.
- ssl_read_impl (static) raises UNINITIALIZED and SSL_HANDSHAKE_FAILURE but not BAD_LENGTH.
- SSL_peek raises only SHOULD_NOT_HAVE_BEEN_CALLED and calls ssl_read_impl, then memcpy. SSL_read is
  SSL_peek inlined (in every grpcio build tested) plus consuming the bytes it copied: after its memcpy it
  stores to memory (``pending_app_data = pending_app_data.subspan(ret)``), SSL_peek does not. A build whose
  SSL_read calls SSL_peek out of line raises no ssl_lib.cc error itself: it is reported, not recognised.

Any mismatch (no candidate, two candidates) raises BoringSslSignatureError with what was seen: never a
guess. The found functions then go through the same probe planning as exported OpenSSL functions.
"""

from __future__ import annotations

import bisect
import contextlib
import re
import struct
from dataclasses import dataclass, field
from functools import lru_cache

import capstone  # type: ignore[import-untyped]

from qtap_async.errors import BoringSslSignatureError
from qtap_async.tls.elf import ElfImage

SSL_LIB_FILE = b"/ssl/ssl_lib.cc\0"
"""Suffix of the __FILE__ string BoringSSL's ssl_lib.cc passes to ERR_put_error (path prefix varies by build)."""
ERR_LIB_SSL = 16
# Reason codes from BoringSSL include/openssl/ssl.h and err.h (stable numbers).
ERR_R_SHOULD_NOT_HAVE_BEEN_CALLED = 66
SSL_R_BAD_LENGTH = 111
SSL_R_SSL_HANDSHAKE_FAILURE = 215
SSL_R_UNINITIALIZED = 226
WRITE_REASONS = frozenset({ERR_R_SHOULD_NOT_HAVE_BEEN_CALLED, SSL_R_UNINITIALIZED, SSL_R_SSL_HANDSHAKE_FAILURE,
                           SSL_R_BAD_LENGTH})
READ_IMPL_REASONS = frozenset({SSL_R_UNINITIALIZED, SSL_R_SSL_HANDSHAKE_FAILURE})
_LEA_RCX_RIP = re.compile(rb"\x48\x8d\x0d", re.S)
_MAX_FUNC = 0x4000


@dataclass(frozen=True, slots=True)
class _Insn:
    addr: int
    mnemonic: str
    op_str: str
    next: int

    @property
    def target(self) -> int | None:
        """Target of a direct call (capstone prints it as a bare hex address)."""
        if self.mnemonic == "call" and self.op_str.startswith("0x"):
            return int(self.op_str, 16)
        return None

    @property
    def barrier(self) -> bool:
        return self.mnemonic == "call" or self.mnemonic.startswith(("j", "ret"))


@dataclass
class _Func:
    start: int
    end: int
    reasons: set[int] = field(default_factory=set)
    insns: list[_Insn] = field(default_factory=list)


@lru_cache(maxsize=1)
def _cs() -> capstone.Cs:
    # No operand details: text is all this needs, and skipping them makes the decode ~5x faster than
    # tls.x86.decode (a few dozen functions of a 12 MB library are decoded per analysis).
    return capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64)


def _decode(code: bytes, addr: int) -> list[_Insn]:
    return [_Insn(a, m, o, a + n) for a, n, m, o in _cs().disasm_lite(code, addr)]


@dataclass(frozen=True)
class BoringFunctions:
    """Where SSL_read and SSL_write start (link-time addresses) and how they were recognised."""

    read: int
    read_size: int
    write: int
    write_size: int
    evidence: list[str]


def ssl_lib_string(img: ElfImage) -> int | None:
    """Virtual address of the ssl_lib.cc file-name string, or None (not BoringSSL's libssl)."""
    data = img.section_data(".rodata")
    base = img.section_addr(".rodata")
    if data is None or base is None:
        return None
    i = data.find(SSL_LIB_FILE)
    if i < 0:
        return None
    return base + data.rfind(b"\0", 0, i) + 1


def is_boringssl(img: ElfImage) -> bool:
    """BoringSSL's ssl_lib.cc is compiled in (OpenSSL's file is ssl_lib.c, without the final c)."""
    return ssl_lib_string(img) is not None


def _error_sites(img: ElfImage, target: int) -> dict[int, _Func]:
    """Functions of .text holding a ``lea rcx, [rip + X]`` to ``target``, keyed by start."""
    text = img.section_data(".text")
    taddr = img.section_addr(".text")
    if text is None or taddr is None:
        raise BoringSslSignatureError("no .text section")
    starts = img.function_starts()
    if not starts:
        raise BoringSslSignatureError("no .eh_frame_hdr function table to bound functions")
    out: dict[int, _Func] = {}
    for m in _LEA_RCX_RIP.finditer(text):
        p = m.start()
        if p + 7 > len(text) or taddr + p + 7 + struct.unpack_from("<i", text, p + 3)[0] != target:
            continue
        i = bisect.bisect_right(starts, taddr + p) - 1
        if i < 0 or i + 1 >= len(starts):
            continue
        start, end = starts[i], starts[i + 1]
        if start not in out and end - start <= _MAX_FUNC:
            out[start] = _Func(start, end)
    return out


def _fill(img: ElfImage, fn: _Func, target: int) -> None:
    """Decode ``fn`` and collect the reason codes of its ERR_put_error(ERR_LIB_SSL, ..., ssl_lib.cc) calls."""
    fn.insns = _decode(img.read_vaddr(fn.start, fn.end - fn.start), fn.start)
    for k, ins in enumerate(fn.insns):
        if not (ins.mnemonic == "lea" and ins.op_str.startswith("rcx, [rip + ")):
            continue
        disp = ins.op_str.removeprefix("rcx, [rip + ").rstrip("]")
        try:
            if ins.next + int(disp, 16) != target:
                continue
        except ValueError:
            continue
        # The argument moves sit between the previous call/branch and the next call, in any order.
        lo = k
        while lo > 0 and not fn.insns[lo - 1].barrier and k - lo < 8:
            lo -= 1
        regs: dict[str, int] = {}
        for j in range(lo, min(len(fn.insns), k + 8)):
            other = fn.insns[j]
            if other.mnemonic == "call":
                break
            dst, _, src = other.op_str.partition(", ")
            if other.mnemonic == "mov" and dst in ("edi", "edx"):
                with contextlib.suppress(ValueError):  # a register source: not an argument constant
                    regs[dst] = int(src, 0)
        if regs.get("edi") == ERR_LIB_SSL and "edx" in regs:
            fn.reasons.add(regs["edx"])


def _direct_calls(fn: _Func) -> list[_Insn]:
    return [i for i in fn.insns if i.target is not None]


def _stores_after_memcpy(fn: _Func, read_impl: int) -> bool | None:
    """After the first direct call that follows the call to ssl_read_impl (the memcpy), does the function
    write memory? None when there is no such call."""
    calls = _direct_calls(fn)
    idx = next((n for n, c in enumerate(calls) if c.target == read_impl), None)
    if idx is None or idx + 1 >= len(calls):
        return None
    memcpy = calls[idx + 1]
    for ins in fn.insns:
        if ins.addr <= memcpy.addr:
            continue
        dst = ins.op_str.partition(", ")[0]
        if ins.mnemonic in ("mov", "add", "sub") and "[" in dst and "rsp" not in dst and "rip" not in dst:
            return True
    return False


def find(img: ElfImage) -> BoringFunctions:
    """SSL_read and SSL_write of a BoringSSL compiled into ``img`` (see the module docstring)."""
    target = ssl_lib_string(img)
    if target is None:
        raise BoringSslSignatureError("no ssl/ssl_lib.cc string: not BoringSSL's libssl")
    funcs = _error_sites(img, target)
    for fn in funcs.values():
        _fill(img, fn, target)
    evidence = [f"{len(funcs)} functions raise ssl_lib.cc errors"]
    writes = [f for f in funcs.values() if f.reasons >= WRITE_REASONS]
    if len(writes) != 1:
        raise BoringSslSignatureError(
            f"SSL_write signature (reasons {sorted(WRITE_REASONS)}) matched {len(writes)} functions "
            f"({', '.join(hex(f.start) for f in writes) or 'none'}) among {len(funcs)} raising ssl_lib.cc errors")
    write = writes[0]
    evidence.append(f"SSL_write at {write.start:#x}: the only one raising reasons {sorted(WRITE_REASONS)}")
    impls = [f for f in funcs.values() if f.reasons >= READ_IMPL_REASONS and SSL_R_BAD_LENGTH not in f.reasons]
    if len(impls) != 1:
        raise BoringSslSignatureError(
            f"ssl_read_impl signature (reasons {sorted(READ_IMPL_REASONS)}, not {SSL_R_BAD_LENGTH}) matched "
            f"{len(impls)} functions ({', '.join(hex(f.start) for f in impls) or 'none'})")
    impl = impls[0]
    evidence.append(f"ssl_read_impl at {impl.start:#x}")
    peeks = [f for f in funcs.values() if f.reasons == {ERR_R_SHOULD_NOT_HAVE_BEEN_CALLED}
             and any(c.target == impl.start for c in _direct_calls(f))]
    shapes = {f.start: _stores_after_memcpy(f, impl.start) for f in peeks}
    reads = [f for f in peeks if shapes[f.start]]
    if len(reads) != 1:
        raise BoringSslSignatureError(
            f"SSL_read signature (raises only reason {ERR_R_SHOULD_NOT_HAVE_BEEN_CALLED}, calls ssl_read_impl at "
            f"{impl.start:#x}, then memcpy, then consumes) matched {len(reads)} functions; candidates: "
            + (", ".join(f"{a:#x} stores-after-copy={s}" for a, s in shapes.items()) or "none"))
    read = reads[0]
    evidence.append(f"SSL_read at {read.start:#x}: calls ssl_read_impl, copies, then consumes pending data"
                    + (f" (SSL_peek at {', '.join(hex(f.start) for f in peeks if f is not read)} does not)"
                       if len(peeks) > 1 else ""))
    return BoringFunctions(read.start, read.end - read.start, write.start, write.end - write.start, evidence)
