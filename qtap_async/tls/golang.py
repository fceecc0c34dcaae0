"""Go binaries: build info (version), function table from .gopclntab (works on stripped binaries), and
the struct offsets that lead from a *tls.Conn to its socket fd.
"""

from __future__ import annotations

import bisect
import re
import struct
from dataclasses import dataclass

from elftools.dwarf.die import DIE
from elftools.dwarf.dwarfinfo import DWARFInfo

from qtap_async.errors import GoBinaryError
from qtap_async.tls.elf import ElfImage
from qtap_async.tls.model import GoConnOffsets

BUILDINFO_MAGIC = b"\xff Go buildinf:"
# pclntab header magics by layout (src/debug/gosym/pclntab.go).
PCLN_GO12 = 0xFFFFFFFB
PCLN_GO116 = 0xFFFFFFFA
PCLN_GO118 = 0xFFFFFFF0
PCLN_GO120 = 0xFFFFFFF1


def _uvarint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(data):
            raise GoBinaryError("truncated varint")
        b = data[pos]
        pos += 1
        value |= (b & 0x7F) << shift
        if b < 0x80:
            return value, pos
        shift += 7
        if shift > 63:
            raise GoBinaryError("varint too long")


def _find_buildinfo(img: ElfImage) -> tuple[int, bytes] | None:
    """(vaddr, data from the header on) of the build info blob."""
    data = img.section_data(".go.buildinfo")
    addr = img.section_addr(".go.buildinfo")
    if data is not None and addr is not None and data.startswith(BUILDINFO_MAGIC):
        return addr, data
    if img.has_section(".text"):
        # Section headers present: Go's linker always names the blob's section (even with -s -w), so a
        # file with sections but without .go.buildinfo is not Go; do not read its data segments.
        return None
    # Section headers stripped: the blob sits 16-byte aligned in a writable data segment.
    for vaddr, seg in img.loaded_data():
        i = seg.find(BUILDINFO_MAGIC)
        while i >= 0:
            if (vaddr + i) % 16 == 0:
                return vaddr + i, seg[i : i + 64 * 1024]
            i = seg.find(BUILDINFO_MAGIC, i + 1)
    return None


def go_version(img: ElfImage) -> str | None:
    """The Go toolchain version ("go1.26.8") from the build info, or None when not a Go binary."""
    found = _find_buildinfo(img)
    if found is None:
        return None
    _addr, data = found
    ptr_size, flags = data[14], data[15]
    if flags & 0x2:  # Go 1.18+: inline varint-prefixed strings after the 32-byte header
        n, pos = _uvarint(data, 32)
        return data[pos : pos + n].decode("utf-8", "replace")
    # Go < 1.18: pointers to Go string headers (ptr, len); little-endian x86-64 only here.
    if ptr_size != 8:
        raise GoBinaryError(f"unsupported pointer size {ptr_size}")
    (vptr,) = struct.unpack_from("<Q", data, 16)
    sptr, slen = struct.unpack("<QQ", img.read_vaddr(vptr, 16))
    return img.read_vaddr(sptr, slen).decode("utf-8", "replace")


def parse_version(v: str) -> tuple[int, int]:
    m = re.match(r"go(\d+)\.(\d+)", v)
    if not m:
        return (0, 0)
    return int(m.group(1)), int(m.group(2))


@dataclass(frozen=True)
class GoFunc:
    name: str
    entry: int
    end: int


class PcLnTab:
    """The function table of a Go >= 1.18 binary (pclntab header magic 0xfffffff0 / 0xfffffff1).

    Layout (runtime/symtab.go, pcHeader): magic u32, pad u8 u8, minLC u8, ptrSize u8, nfunc, nfiles,
    textStart, funcnameOffset, cuOffset, filetabOffset, pctabOffset, pclnOffset (uintptr each). The
    functab at pclnOffset holds nfunc+1 pairs (entryOff u32, funcOff u32), entryOff relative to textStart;
    the _func at pclnOffset+funcOff starts with entryOff u32, nameOff i32 (into funcnametab).
    """

    def __init__(self, data: bytes, text_fallback: int | None) -> None:
        if len(data) < 64:
            raise GoBinaryError("pclntab too short")
        magic = struct.unpack_from("<I", data)[0]
        if magic not in (PCLN_GO118, PCLN_GO120):
            raise GoBinaryError(f"pclntab magic {magic:#x} is not a Go 1.18+ layout")
        if data[4] or data[5] or data[7] != 8:
            raise GoBinaryError("unexpected pclntab header")
        nfunc, _nfiles, text, nameoff, _cu, _file, _pct, pclnoff = struct.unpack_from("<8Q", data, 8)
        if text == 0 and text_fallback is not None:
            # PIE binaries keep textStart as a dynamic relocation: the .text address is the value.
            text = text_fallback
        self.text = text
        self._data = data
        self._names = memoryview(data)[nameoff:]
        self._ftab = pclnoff
        self.nfunc = nfunc
        self._by_name: dict[str, GoFunc] | None = None
        self._entries: list[int] | None = None
        self._nameoffs: list[int] | None = None
        self._names_bytes: bytes | None = None

    def _name(self, off: int) -> str:
        end = bytes(self._names[off : off + 512]).find(b"\0")
        return bytes(self._names[off : off + end]).decode("utf-8", "replace")

    def _index(self) -> tuple[list[int], list[int]]:
        """(entry addresses, name offsets) of every function, in address order; names decoded lazily."""
        if self._entries is None:
            d, base = self._data, self._ftab
            pairs = list(struct.iter_unpack("<II", d[base : base + 8 * (self.nfunc + 1)]))
            self._entries = [self.text + e for e, _f in pairs]
            self._nameoffs = [struct.unpack_from("<i", d, base + f + 4)[0] for _e, f in pairs[: self.nfunc]]
        assert self._nameoffs is not None
        return self._entries, self._nameoffs

    def lookup(self, name: str) -> GoFunc | None:
        """The function named ``name`` without decoding every name: find it in funcnametab first."""
        entries, nameoffs = self._index()
        needle = name.encode() + b"\0"
        names = self._names.tobytes() if self._names_bytes is None else self._names_bytes
        self._names_bytes = names
        i = names.find(needle)
        while i >= 0:
            if i == 0 or names[i - 1] == 0:
                try:
                    k = nameoffs.index(i)
                except ValueError:
                    k = -1
                if k >= 0:
                    return GoFunc(name, entries[k], entries[k + 1])
            i = names.find(needle, i + 1)
        return None

    def name_at(self, addr: int) -> str | None:
        """Name of the function whose entry is exactly ``addr``."""
        entries, nameoffs = self._index()
        k = bisect.bisect_left(entries, addr)
        if k < self.nfunc and entries[k] == addr:
            return self._name(nameoffs[k])
        return None

    def functions(self) -> dict[str, GoFunc]:
        """Every function by name (decodes all names: tests and tools, not the hot path)."""
        if self._by_name is not None:
            return self._by_name
        entries, nameoffs = self._index()
        out: dict[str, GoFunc] = {}
        for k in range(self.nfunc):
            name = self._name(nameoffs[k])
            out.setdefault(name, GoFunc(name, entries[k], entries[k + 1]))
        self._by_name = out
        return out


def _moduledata_text(img: ElfImage, pcln_vaddr: int, funcname_off: int) -> int | None:
    """runtime.text from the moduledata that points at this pclntab.

    moduledata (runtime/symtab.go, Go 1.18+) starts with pcHeader *pcHeader, then the slices funcnametab,
    cutab, filetab, pctab, pclntable, ftab (3 words each), findfunctab, minpc, maxpc, text: text is word
    22. pcHeader.textStart is often 0 in the file (set by relocation), so this is the reliable source.
    """
    head = struct.pack("<QQ", pcln_vaddr, pcln_vaddr + funcname_off)
    for _vaddr, seg in img.loaded_data():
        i = seg.find(head)
        while i >= 0:
            if i % 8 == 0 and i + 23 * 8 <= len(seg):
                text: int = struct.unpack_from("<Q", seg, i + 22 * 8)[0]
                minpc: int = struct.unpack_from("<Q", seg, i + 20 * 8)[0]
                if text and minpc >= text:
                    return text
            i = seg.find(head, i + 1)
    return None


def find_pclntab(img: ElfImage) -> PcLnTab:
    data = img.section_data(".gopclntab")
    vaddr = img.section_addr(".gopclntab")
    if data is None or vaddr is None:
        # Section headers stripped: search the read-only segments for the header.
        for seg_vaddr, seg in img.loaded_data():
            for magic in (PCLN_GO120, PCLN_GO118):
                i = seg.find(struct.pack("<I", magic) + b"\x00\x00\x01\x08")
                if i >= 0:
                    data, vaddr = seg[i:], seg_vaddr + i
                    break
            if data is not None:
                break
    if data is None or vaddr is None:
        raise GoBinaryError("no .gopclntab found")
    text = None
    if len(data) >= 40 and struct.unpack_from("<Q", data, 24)[0] == 0:
        text = _moduledata_text(img, vaddr, struct.unpack_from("<Q", data, 32)[0])
        if text is None:
            text = img.section_addr(".text")
    return PcLnTab(data, text)


# ---------------------------------------------------------------------------------------------------
# *tls.Conn -> fd

GO_OFFSETS_TABLE: list[tuple[tuple[int, int], tuple[int, int], GoConnOffsets]] = [
    (
        (1, 17),
        (1, 26),
        GoConnOffsets(tls_conn_conn=0, conn_iface_data=8, tcpconn_fd=0, netfd_pfd=0, pfd_sysfd=16, source="table"),
    ),
]
"""Offsets by Go version range (inclusive), for binaries without DWARF.

Covers go1.17 through go1.26 (the register-ABI releases qtap can probe): crypto/tls.Conn has had
``conn net.Conn`` as its first field throughout, net.TCPConn embeds net.conn whose only field is
``fd *netFD``, net.netFD starts with ``pfd poll.FD``, and poll.FD starts with ``fdmu fdMutex`` (uint64 +
2 x uint32 = 16 bytes) followed by ``Sysfd int``. Checked against DWARF of a go1.26 build by the tests;
other releases from the Go sources. Newer releases fall back to the newest entry with a note.
"""

_DWARF_WANT = {
    "crypto/tls.Conn": "conn",
    "net.TCPConn": "conn",
    "net.conn": "fd",
    "net.netFD": "pfd",
    "internal/poll.FD": "Sysfd",
}


def _member_offset(die: DIE, member: str) -> int | None:
    for child in die.iter_children():
        cn = child.attributes.get("DW_AT_name")
        if child.tag == "DW_TAG_member" and cn is not None and cn.value.decode("utf-8", "replace") == member:
            loc = child.attributes.get("DW_AT_data_member_location")
            if loc is not None and isinstance(loc.value, int):
                return loc.value
    return None


def _struct_die_at(dwarf: DWARFInfo, offset: int, name: bytes) -> DIE | None:
    try:
        die = dwarf.get_DIE_from_refaddr(offset)
    except Exception:  # not a DIE boundary: the caller tries the next candidate
        return None
    tn = die.attributes.get("DW_AT_name")
    if die.tag == "DW_TAG_structure_type" and tn is not None and tn.value == name:
        return die
    return None


def _offsets_fast(dwarf: DWARFInfo) -> dict[str, int]:
    """Go writes type names inline (DW_FORM_string) right after the DIE's abbreviation code: find each
    name in .debug_info and parse just that DIE and its members (~10x faster than walking every DIE)."""
    sec = dwarf.debug_info_sec
    if sec is None:
        return {}
    stream = sec.stream
    stream.seek(0)
    data: bytes = stream.read()
    found: dict[str, int] = {}
    for tname, member in _DWARF_WANT.items():
        needle = tname.encode() + b"\0"
        i = data.find(needle)
        while i >= 0 and tname not in found:
            for back in (1, 2):  # ULEB128 abbreviation code of 1 or 2 bytes
                die = _struct_die_at(dwarf, i - back, tname.encode())
                if die is not None:
                    off = _member_offset(die, member)
                    if off is not None:
                        found[tname] = off
                    break
            i = data.find(needle, i + 1)
    return found


def _offsets_slow(dwarf: DWARFInfo) -> dict[str, int]:
    found: dict[str, int] = {}
    for cu in dwarf.iter_CUs():
        # Go puts type DIEs in the "runtime" compile units; skip the others' (much larger) DIE trees.
        top = cu.get_top_DIE()
        name = top.attributes.get("DW_AT_name")
        if name is None or name.value != b"runtime":
            continue
        for die in top.iter_children():
            tn = die.attributes.get("DW_AT_name")
            if die.tag != "DW_TAG_structure_type" or tn is None:
                continue
            tname = tn.value.decode("utf-8", "replace")
            member = _DWARF_WANT.get(tname)
            if member is not None and tname not in found:
                off = _member_offset(die, member)
                if off is not None:
                    found[tname] = off
            if len(found) == len(_DWARF_WANT):
                return found
    return found


def offsets_from_dwarf(img: ElfImage) -> GoConnOffsets | None:
    """Member offsets from .debug_info, or None without DWARF (or without all five types)."""
    if not img.elf.has_dwarf_info() or not (img.has_section(".debug_info") or img.has_section(".zdebug_info")):
        return None
    dwarf = img.elf.get_dwarf_info()
    found = _offsets_fast(dwarf)
    if len(found) != len(_DWARF_WANT):
        found = _offsets_slow(dwarf)
    if len(found) != len(_DWARF_WANT):
        return None
    return GoConnOffsets(
        tls_conn_conn=found["crypto/tls.Conn"],
        conn_iface_data=found["crypto/tls.Conn"] + 8,
        tcpconn_fd=found["net.TCPConn"] + found["net.conn"],
        netfd_pfd=found["net.netFD"],
        pfd_sysfd=found["internal/poll.FD"],
        source="dwarf",
    )


def offsets_from_table(version: str) -> tuple[GoConnOffsets | None, str]:
    v = parse_version(version)
    for lo, hi, offs in GO_OFFSETS_TABLE:
        if lo <= v <= hi:
            return offs, ""
    newest = GO_OFFSETS_TABLE[-1]
    if v > newest[1]:
        return newest[2], f"{version} is newer than the offsets table (go1.17-go1.26): using go1.26 offsets"
    return None, f"{version} is older than go1.17 (stack ABI): no offsets"
