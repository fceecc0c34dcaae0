"""Recognise the TLS implementation inside one ELF file and plan its probes.

`analyze_file` is what discovery calls once per (dev, ino, size, mtime); it never raises for a file that
simply is not TLS (returns None) and raises ElfFormatError only for unreadable/non-ELF files.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Callable
from typing import Literal

from qtap_async.errors import BoringSslSignatureError, GoBinaryError
from qtap_async.tls import boringssl, golang
from qtap_async.tls.elf import ElfImage, Symbol
from qtap_async.tls.model import FileKey, GoConnOffsets, LibraryKind, ProbePlan, TlsFunction, TlsLibrary
from qtap_async.tls.probe_points import (
    CalleeContract,
    Code,
    EntryFinding,
    FuncSpec,
    fallback_plan,
    find_entry,
    plan_go,
    plan_sysv,
)
from qtap_async.tls.x86 import ARG_REGS, decode

# OpenSSL's SSL_read/SSL_write/_ex return C int: read the return as eax.
OPENSSL_SPECS = (
    FuncSpec("SSL_write", ("ssl", "buf", "num"), ("ssl", "buf", "num"), "write", "ret if ret > 0", ret_reg="eax"),
    FuncSpec("SSL_read", ("ssl", "buf", "num"), ("ssl", "buf", "num"), "read", "ret if ret > 0", ret_reg="eax"),
    FuncSpec(
        "SSL_write_ex",
        ("ssl", "buf", "num", "written"),
        ("ssl", "buf", "num", "written"),
        "write",
        "*written if ret == 1",
        ret_reg="eax",
    ),
    FuncSpec(
        "SSL_read_ex",
        ("ssl", "buf", "num", "readbytes"),
        ("ssl", "buf", "num", "readbytes"),
        "read",
        "*readbytes if ret == 1",
        ret_reg="eax",
    ),
)
# gnutls_record_send/recv return ssize_t: rax.
GNUTLS_SPECS = (
    FuncSpec("gnutls_record_send", ("session", "data", "size"), ("session", "data", "size"), "write", "ret if ret > 0"),
    FuncSpec("gnutls_record_recv", ("session", "data", "size"), ("session", "data", "size"), "read", "ret if ret > 0"),
)
GO_WRITE = "crypto/tls.(*Conn).Write"
GO_READ = "crypto/tls.(*Conn).Read"
GO_SPECS = (
    FuncSpec(GO_WRITE, ("c", "buf", "len", "cap"), ("c", "buf", "len"), "write", "len", abi="go"),
    FuncSpec(GO_READ, ("c", "buf", "len", "cap"), ("c", "buf", "len"), "read", "ret if ret > 0", abi="go"),
)
# Markers that a file exporting SSL_read is OpenSSL/BoringSSL itself (gnutls' libgnutls-openssl
# compatibility layer exports SSL_read too, on top of gnutls_record_recv, which we probe anyway).
_OPENSSL_MARKERS = ("OPENSSL_init_ssl", "SSL_library_init", "SSL_CTX_set_options", "SSL_get_rbio")
_DEFAULT_FUNC_SIZE = 0x400
_OPENSSL_VERSION_RE = re.compile(rb"OpenSSL (\d+\.\d+\.\d+[a-z]?)(?:-[\w.]+)? ")


def _code_for(img: ElfImage, vaddr: int, size: int) -> Code:
    size = size or _DEFAULT_FUNC_SIZE
    return Code(vaddr, img.read_vaddr(vaddr, size), img.vaddr_to_offset(vaddr))


def _callee_code_factory(img: ElfImage) -> Callable[[int], Code | None]:
    def callee_code(addr: int) -> Code | None:
        target = addr
        plt = img.plt_names()
        if addr in plt:
            # A PLT call to a function this same file defines binds to that definition (barring
            # LD_PRELOAD-style interposition of a TLS library's internal entry point).
            sym = img.find_functions([plt[addr]], tables=(".dynsym",)).get(plt[addr])
            if sym is None:
                return None
            target = sym.value
        try:
            # The whole callee when .eh_frame_hdr bounds it (needed to hook past its first instruction).
            return _code_for(img, target, min(img.function_extent(target) or 32, 0x4000))
        except Exception:
            return None

    return callee_code


def needed_libs(img: ElfImage) -> list[str]:
    """DT_NEEDED names, from the raw .dynamic entries (d_tag, d_val) and the string table it links to."""
    dyn = img.section(".dynamic")
    if dyn is None or dyn.type == 8:
        return []
    strtab = img.section_at(dyn.link).data()
    out: list[str] = []
    for tag, val in struct.iter_unpack("<qQ", dyn.data()[: dyn.size // 16 * 16]):
        if tag == 0:
            break
        if tag == 1 and val < len(strtab):
            end = strtab.find(b"\0", val)
            out.append(strtab[val:end].decode("utf-8", "replace"))
    return out


def _openssl_version(img: ElfImage) -> str:
    data = img.section_data(".rodata")
    if data is not None:
        i = data.find(b"OpenSSL ")
        while i >= 0:
            m = _OPENSSL_VERSION_RE.match(data, i)
            if m:
                return m.group(1).decode()
            i = data.find(b"OpenSSL ", i + 1)
    # Shared libssl keeps its version string in libcrypto; its symbol versions still give the series.
    vers = _verdefs(img)
    best = [v for v in vers if v.startswith("OPENSSL_")]
    if best:
        return best[-1].removeprefix("OPENSSL_").replace("_", ".") + " (symbol version)"
    return ""


def _verdefs(img: ElfImage) -> list[str]:
    from elftools.elf.gnuversions import GNUVerDefSection

    out: list[str] = []
    raw = img.section(".gnu.version_d")
    if raw is None:
        return out
    for sec in (img.elf.get_section(img.sections_index(raw)),):
        if isinstance(sec, GNUVerDefSection):
            for verdef, auxiter in sec.iter_versions():
                for aux in auxiter:
                    if verdef["vd_flags"] == 0:  # skip the file's own base version
                        out.append(str(aux.name))
                    break
    return out


def openssl_version_from_libcrypto(path: str) -> str:
    try:
        with ElfImage.open(path) as img:
            data = img.section_data(".rodata")
    except Exception:
        return ""
    if data is None:
        return ""
    m = _OPENSSL_VERSION_RE.search(data)
    return m.group(1).decode() if m else ""


def _gnutls_version(img: ElfImage) -> str:
    """gnutls_check_version(NULL) returns the VERSION string: the first rip-relative lea in it."""
    sym = img.find_functions(["gnutls_check_version"]).get("gnutls_check_version")
    if sym is None:
        return ""
    for insn in decode(img.read_vaddr(sym.value, min(sym.size or 64, 128)), sym.value):
        if insn.mnemonic == "lea" and "rip" in insn.op_str:
            m = re.search(r"\[rip \+ (0x[0-9a-f]+)\]", insn.op_str)
            if m:
                try:
                    s = img.read_vaddr(insn.next + int(m.group(1), 16), 32).split(b"\0", 1)[0]
                except Exception:
                    return ""
                if re.fullmatch(rb"\d+\.\d+\.\d+", s):
                    return s.decode()
            return ""
    return ""


def _openssl_contract(
    img: ElfImage, funcs: dict[str, Symbol], resolve: Callable[[int], str | None]
) -> Callable[[str], Callable[[EntryFinding], CalleeContract | None]]:
    """Contract proof for OpenSSL 1.1.1/3.x's ssl_{read,write}_internal(s, buf, num, size_t *processed).

    SSL_read_ex(s, buf, num, readbytes) forwards its four arguments unchanged to that internal function
    (checked here by the same straight-line walk); when SSL_read's forwarding call goes to the very same
    address, that callee is ssl_read_internal and rcx at the call holds &readbytes. Its return is > 0 on
    success with *processed set (documented SSL_read_ex semantics: 1 on success). Same for write.
    """
    # direction -> (callee address, proving function, number of forwarded arguments). OpenSSL 3.3+ adds
    # SSL_write_ex2(s, buf, num, flags, written): ssl_write_internal then takes the count pointer in r8.
    targets: dict[str, tuple[int, str, int]] = {}
    for direction, ex, nargs in (
        ("read", "SSL_read_ex", 4),
        ("write", "SSL_write_ex2", 5),
        ("write", "SSL_write_ex", 4),
    ):
        sym = funcs.get(ex) or img.find_functions([ex]).get(ex)
        if sym is None or direction in targets:
            continue
        code = _code_for(img, sym.value, sym.size)
        ent = find_entry(code, ARG_REGS[:nargs], resolve, goal="call")
        if ent.site is not None and ent.kind == "call" and ent.callee is not None:
            targets[direction] = (ent.callee, ex, nargs)

    def for_direction(direction: str) -> Callable[[EntryFinding], CalleeContract | None]:
        def contract(ent: EntryFinding) -> CalleeContract | None:
            proven = targets.get(direction)
            if ent.callee is None or proven is None or proven[0] != ent.callee:
                return None
            _callee, ex, nargs = proven
            what = "readbytes" if direction == "read" else "written"
            params = (
                ("ssl", "buf", "num", "processed_ptr")
                if nargs == 4
                else ("ssl", "buf", "num", "flags", "processed_ptr")
            )
            return CalleeContract(
                description=f"ssl_{direction}_internal({', '.join(params[:-1])}, size_t *{what}) -> int "
                f"(> 0: success); proven: {ex} forwards its {nargs} arguments to the same address",
                params=params,
                length="*processed_ptr if ret > 0 (pointer saved at the entry site)",
            )

        return contract

    return for_direction


def _unify_callee_uretprobes(plans: list[ProbePlan]) -> list[ProbePlan]:
    """When one plan returns through a uretprobe on callee X, make every plan whose entry calls X use it.

    Otherwise both that uretprobe and the other plan's in-function return site would fire for one call.
    """
    import msgspec

    by_callee: dict[str, ProbePlan] = {}
    for p in plans:
        if p.ret_meaning == "callee" and p.sites[-1].role == "uretprobe":
            by_callee[p.callee.split(":", 1)[0]] = p
    out: list[ProbePlan] = []
    for p in plans:
        key = p.callee.split(":", 1)[0]
        donor = by_callee.get(key)
        if donor is not None and p is not donor and p.ret_meaning == "callee" and p.sites[-1].role == "return":
            p = msgspec.structs.replace(
                p,
                sites=[*p.sites[:-1], donor.sites[-1]],
                reason=p.reason + f"; return switched to the callee uretprobe shared with {donor.function}, "
                "so one call fires one return probe",
            )
        out.append(p)
    return out


def _plan_c_library(
    img: ElfImage, specs: tuple[FuncSpec, ...], funcs: dict[str, Symbol], kind: LibraryKind
) -> tuple[list[TlsFunction], list[ProbePlan]]:
    resolve = img.symbol_at
    callee_code = _callee_code_factory(img)
    contract = _openssl_contract(img, funcs, resolve) if kind == "openssl" else None
    tfuncs: list[TlsFunction] = []
    plans: list[ProbePlan] = []
    for spec in specs:
        sym = funcs.get(spec.name)
        if sym is None:
            continue
        code = _code_for(img, sym.value, sym.size)
        tfuncs.append(TlsFunction(spec.name, sym.value, code.file_offset, sym.size))
        try:
            plans.append(plan_sysv(spec, code, resolve, callee_code, contract(spec.direction) if contract else None))
        except Exception as e:  # an analysis bug must not lose the library: fall back, say why
            plans.append(fallback_plan(spec, code, f"analysis error: {type(e).__name__}: {e}"))
    return tfuncs, _unify_callee_uretprobes(plans)


def analyze_file(path: str, key: FileKey, display_path: str | None = None) -> TlsLibrary | None:
    """Identify and plan one file. ``path`` is where to open it (e.g. /proc/PID/root/usr/lib/...)."""
    with ElfImage.open(path) as img:
        return analyze_image(img, key, display_path or path)


def analyze_image(img: ElfImage, key: FileKey, display_path: str) -> TlsLibrary | None:
    is_exec = (
        img.elf.header["e_type"] == "ET_EXEC"
        or not img.has_section(".dynsym")
        or (img.elf.header["e_type"] == "ET_DYN" and img.has_section(".interp"))
    )
    linkage: str = "static" if is_exec else "shared"
    try:
        gover = golang.go_version(img)
    except (GoBinaryError, Exception):
        gover = None
    if gover is not None:
        return _analyze_go(img, key, display_path, gover)

    names = [s.name for s in OPENSSL_SPECS] + list(_OPENSSL_MARKERS) + [s.name for s in GNUTLS_SPECS]
    funcs = img.find_functions(names)
    notes: list[str] = []
    if "SSL_read" in funcs and "SSL_write" in funcs:
        if not any(m in funcs for m in _OPENSSL_MARKERS) or any("gnutls" in n for n in needed_libs(img)):
            return None  # gnutls' OpenSSL compatibility layer: its I/O goes through gnutls_record_*
        boring = img.has_symbol_prefix("BORINGSSL_") or img.has_symbol_prefix("BORINGSSL_", ".symtab")
        kind: LibraryKind = "boringssl" if boring else "openssl"
        version = "" if boring else _openssl_version(img)
        tfuncs, plans = _plan_c_library(img, OPENSSL_SPECS, funcs, kind)
        return TlsLibrary(
            key=key,
            path=display_path,
            kind=kind,
            version=version,
            linkage="static" if linkage == "static" else "shared",
            functions=tfuncs,
            plans=plans,
            stripped=not img.has_section(".symtab"),
            notes=notes,
        )
    if "SSL_read" not in funcs and boringssl.is_boringssl(img):
        return _analyze_stripped_boringssl(img, key, display_path, linkage)
    if img.has_section(".symtab"):
        rust = _analyze_rustls(img, key, display_path, linkage)
        if rust is not None:
            return rust
    if "gnutls_record_send" in funcs and "gnutls_record_recv" in funcs:
        tfuncs, plans = _plan_c_library(img, GNUTLS_SPECS, funcs, "gnutls")
        return TlsLibrary(
            key=key,
            path=display_path,
            kind="gnutls",
            version=_gnutls_version(img),
            linkage="static" if linkage == "static" else "shared",
            functions=tfuncs,
            plans=plans,
            stripped=not img.has_section(".symtab"),
            notes=notes,
        )
    return None


def _analyze_stripped_boringssl(img: ElfImage, key: FileKey, display_path: str, linkage: str) -> TlsLibrary:
    """BoringSSL compiled in without SSL_read/SSL_write symbols: found by code signatures (tls.boringssl).
    When they do not match, the library is still reported, with no probes and the reason as a note."""
    tfuncs: list[TlsFunction] = []
    plans: list[ProbePlan] = []
    notes: list[str] = []
    try:
        found = boringssl.find(img)
    except BoringSslSignatureError as e:
        notes.append(f"not probed: SSL_read/SSL_write not recognised without symbols: {e}")
    else:
        funcs = {"SSL_read": Symbol("SSL_read", found.read, found.read_size),
                 "SSL_write": Symbol("SSL_write", found.write, found.write_size)}
        tfuncs, plans = _plan_c_library(img, OPENSSL_SPECS, funcs, "boringssl")
        notes.append("SSL_read/SSL_write found by code signature: " + "; ".join(found.evidence))
    return TlsLibrary(key=key, path=display_path, kind="boringssl", version="", linkage="static"
                      if linkage == "static" else "shared", functions=tfuncs, plans=plans,
                      stripped=not img.has_section(".symtab"), notes=notes)


# rustls 0.22/0.23 (legacy symbol mangling, what stable rustc emits): the plaintext enters through
# <ConnectionCommon<T> as PlaintextSink>::write (one copy per T: client and server) behind Writer::write's
# dyn call, and leaves through <Reader as io::Read>::read. Both return io::Result<usize> in rax:rdx
# (rax 0 = Ok, rdx = bytes). Stripped binaries (no .symtab) are not recognised.
_RUSTLS_WRITE_RE = re.compile(
    rb"_ZN\d+_\$LT\$rustls\.\.conn\.\.ConnectionCommon\$LT\$T\$GT\$\$u20\$as\$u20\$rustls\.\.conn\.\."
    rb"connection\.\.PlaintextSink\$GT\$5write17h[0-9a-f]{16}E")
_RUSTLS_READ_RE = re.compile(
    rb"_ZN\d+_\$LT\$rustls\.\.conn\.\.connection\.\.Reader\$u20\$as\$u20\$std\.\.io\.\.Read\$GT\$4read17h"
    rb"[0-9a-f]{16}E")
RUSTLS_WRITE = "<rustls::conn::ConnectionCommon<T> as PlaintextSink>::write"
RUSTLS_READ = "<rustls::conn::connection::Reader as std::io::Read>::read"


def _rust_plan(function: str, code: Code, regs: dict[str, str]) -> ProbePlan:
    """Entry + uretprobe on one site (Recipes 1 and 2); fallback to the single-stepped entry otherwise."""
    from qtap_async.tls.probe_points import _site, find_early_site

    first = code.insns[0]
    if first.emulated:
        site, how = first, f"first instruction `{first.mnemonic} {first.op_str}` is emulated (Recipe 1)"
    else:
        want = {"ssl": "rdi", "buf": "rsi", "len": "rdx"}
        early = find_early_site(code, want, ("ssl", "buf", "len"))
        if early is not None and early[1] == want:
            site, how = early[0], f"first emulated instruction at +{early[0].addr - code.start:#x} (Recipe 2)"
        else:
            site, how = first, f"first instruction `{first.mnemonic}` is single-stepped: classic entry + uretprobe"
    sites = [_site(code, site, "entry", regs), _site(code, site, "uretprobe", {"ret": "rax", "len": "rdx"}, sp_delta=8)]
    return ProbePlan(
        function=function,
        func_offset=code.file_offset,
        sites=sites,
        fast=site.emulated,
        reason=how + "; returns io::Result<usize> in rax:rdx (rax 0 = Ok, rdx = bytes)",
        ret_meaning="function",
        length="rdx if rax == 0",
    )


def _analyze_rustls(img: ElfImage, key: FileKey, display_path: str, linkage: str) -> TlsLibrary | None:
    sec = img.section(".symtab")
    if sec is None:
        return None
    strtab = img.section_at(sec.link).data()
    if b"rustls..conn.." not in strtab:
        return None
    writes = sorted({m.group().decode() for m in _RUSTLS_WRITE_RE.finditer(strtab)})
    reads = sorted({m.group().decode() for m in _RUSTLS_READ_RE.finditer(strtab)})
    if not writes or not reads:
        return None
    syms = img.find_functions([*writes, *reads], tables=(".symtab",))
    tfuncs: list[TlsFunction] = []
    plans: list[ProbePlan] = []
    notes: list[str] = []
    for mangled in [*writes, *reads]:
        sym = syms.get(mangled)
        if sym is None:
            continue
        is_read = mangled in reads
        name = RUSTLS_READ if is_read else RUSTLS_WRITE
        code = _code_for(img, sym.value, sym.size)
        tfuncs.append(TlsFunction(name, sym.value, code.file_offset, sym.size))
        # Reader is a temporary: its first word (&ChunkVecBuffer inside the connection) names the connection.
        regs = {"ssl_ptr": "rdi", "buf": "rsi", "len": "rdx"} if is_read else {"ssl": "rdi", "buf": "rsi", "len": "rdx"}
        plans.append(_rust_plan(name, code, regs))
        notes.append(f"{name}: {mangled}")
    if not plans:
        return None
    return TlsLibrary(key=key, path=display_path, kind="rustls", version="0.22+", linkage="static"
                      if linkage == "static" else "shared", functions=tfuncs, plans=plans, stripped=False, notes=notes)


def _analyze_go(img: ElfImage, key: FileKey, display_path: str, version: str) -> TlsLibrary | None:
    notes: list[str] = []
    stripped = not img.has_section(".symtab")
    abi: Literal["register", "stack"] = "register" if golang.parse_version(version) >= (1, 17) else "stack"
    gofuncs: dict[str, golang.GoFunc] = {}
    table: golang.PcLnTab | None = None
    try:
        table = golang.find_pclntab(img)
        for name in (GO_READ, GO_WRITE):
            fn = table.lookup(name)
            if fn is not None:
                gofuncs[name] = fn
    except GoBinaryError as e:
        notes.append(f"pclntab: {e}")
        if not stripped:
            for name, sym in img.find_functions([GO_READ, GO_WRITE], tables=(".symtab",)).items():
                gofuncs[name] = golang.GoFunc(name, sym.value, sym.value + sym.size)
    if GO_READ not in gofuncs and GO_WRITE not in gofuncs:
        return None  # a Go program without crypto/tls

    def resolve(addr: int) -> str | None:
        if table is not None:
            return table.name_at(addr)
        return img.symbol_at(addr)

    tfuncs: list[TlsFunction] = []
    plans: list[ProbePlan] = []
    for spec in GO_SPECS:
        fn = gofuncs.get(spec.name)
        if fn is None:
            continue
        code = _code_for(img, fn.entry, fn.end - fn.entry)
        tfuncs.append(TlsFunction(spec.name, fn.entry, code.file_offset, fn.end - fn.entry))
        if abi == "stack":
            plans.append(fallback_plan(spec, code, f"{version} uses the stack ABI; register sites do not apply"))
            continue
        try:
            plans.append(plan_go(spec, code, resolve))
        except Exception as e:
            plans.append(fallback_plan(spec, code, f"analysis error: {type(e).__name__}: {e}"))
    offsets: GoConnOffsets | None = None
    try:
        offsets = golang.offsets_from_dwarf(img)
    except Exception as e:
        notes.append(f"DWARF: {type(e).__name__}: {e}")
    if offsets is None:
        offsets, note = golang.offsets_from_table(version)
        if note:
            notes.append(note)
    return TlsLibrary(
        key=key,
        path=display_path,
        kind="go",
        version=version,
        linkage="static",
        functions=tfuncs,
        plans=plans,
        go_abi=abi,
        go_offsets=offsets,
        stripped=stripped,
        notes=notes,
    )
