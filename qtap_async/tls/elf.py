"""Just enough ELF for probe analysis: symbols by name, PLT names, vaddr <-> file offset, code bytes.

pyelftools parses headers and sections; symbol tables are scanned raw (struct.iter_unpack) because
pyelftools builds a Python object per symbol and an executable like node has ~200k of them.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from typing import BinaryIO

from elftools.common.exceptions import ELFError
from elftools.elf.elffile import ELFFile

from qtap_async.errors import QtapError

_SYM = struct.Struct("<IBBHQQ")  # Elf64_Sym: name, info, other, shndx, value, size
_RELA = struct.Struct("<QQq")  # Elf64_Rela: offset, info, addend
STT_FUNC = 2
STT_GNU_IFUNC = 10


_SHDR = struct.Struct("<IIQQQQIIQQ")  # Elf64_Shdr: name, type, flags, addr, offset, size, link, info, align, entsize
_PHDR = struct.Struct("<IIQQQQQQ")  # Elf64_Phdr: type, flags, offset, vaddr, paddr, filesz, memsz, align


class RawSection:
    """One section header, read with struct: pyelftools builds (and for GNU hash tables fully parses) every
    section of the file to find one by name, which costs over a second on node."""

    __slots__ = ("_f", "addr", "entsize", "link", "name", "offset", "size", "type")

    def __init__(self, f: BinaryIO, name: str, fields: tuple[int, ...]) -> None:
        _n, self.type, _flags, self.addr, self.offset, self.size, self.link, _info, _align, self.entsize = fields
        self.name = name
        self._f = f

    def data(self) -> bytes:
        if self.type == 8:
            return b""
        self._f.seek(self.offset)
        return self._f.read(self.size)


class ElfFormatError(QtapError):
    """The file is not an ELF we can analyse (not ELF, not x86-64, truncated)."""


class Symbol:
    __slots__ = ("name", "size", "value")

    def __init__(self, name: str, value: int, size: int) -> None:
        self.name = name
        self.value = value
        self.size = size

    def __repr__(self) -> str:
        return f"Symbol({self.name!r}, {self.value:#x}, {self.size})"


class ElfImage:
    """An opened ELF file. Keeps the file object open; use as a context manager or call close()."""

    def __init__(self, fobj: BinaryIO, path: str = "") -> None:
        self.path = path
        self._f = fobj
        try:
            self.elf = ELFFile(fobj)
        except (ELFError, OSError, ValueError) as e:
            raise ElfFormatError(f"{path}: not an ELF file: {e}") from e
        if self.elf.get_machine_arch() != "x64" or self.elf.elfclass != 64:
            raise ElfFormatError(f"{path}: not an x86-64 ELF ({self.elf.get_machine_arch()})")
        self._loads = self._read_loads()
        self._plt: dict[int, str] | None = None
        self._funcs: dict[str, list[Symbol]] = {}
        self._sections, self._by_name = self._read_sections()

    def _read_loads(self) -> list[tuple[int, int, int, bool]]:
        """(vaddr, offset, filesz, executable) of each PT_LOAD, read raw (pyelftools' segment iterator builds
        the dynamic segment, which parses sections)."""
        h = self.elf.header
        off, num, entsize = h["e_phoff"], h["e_phnum"], h["e_phentsize"]
        if not num:
            return []
        if entsize != _PHDR.size:
            raise ElfFormatError(f"{self.path}: unexpected program header size {entsize}")
        self._f.seek(off)
        raw = self._f.read(num * entsize)
        if len(raw) < num * entsize:
            raise ElfFormatError(f"{self.path}: truncated program header table")
        return [(vaddr, offset, filesz, bool(flags & 1))
                for ptype, flags, offset, vaddr, _pa, filesz, _mem, _al in _PHDR.iter_unpack(raw) if ptype == 1]

    def _read_sections(self) -> tuple[list[RawSection], dict[str, RawSection]]:
        h = self.elf.header
        off, num, entsize, stridx = h["e_shoff"], h["e_shnum"], h["e_shentsize"], h["e_shstrndx"]
        if not off or not num or entsize != _SHDR.size:
            return [], {}
        self._f.seek(off)
        raw = self._f.read(num * entsize)
        if len(raw) < num * entsize:
            raise ElfFormatError(f"{self.path}: truncated section header table")
        fields = list(_SHDR.iter_unpack(raw))
        names = b""
        if stridx < num:
            st = fields[stridx]
            self._f.seek(st[4])
            names = self._f.read(st[5])
        secs: list[RawSection] = []
        by_name: dict[str, RawSection] = {}
        for fl in fields:
            end = names.find(b"\0", fl[0])
            name = names[fl[0] : end if end >= 0 else len(names)].decode("utf-8", "replace")
            sec = RawSection(self._f, name, fl)
            secs.append(sec)
            by_name.setdefault(name, sec)
        return secs, by_name

    def section(self, name: str) -> RawSection | None:
        return self._by_name.get(name)

    def sections_index(self, sec: RawSection) -> int:
        return self._sections.index(sec)

    def section_at(self, index: int) -> RawSection:
        if not 0 <= index < len(self._sections):
            raise ElfFormatError(f"{self.path}: section index {index} out of range")
        return self._sections[index]

    @classmethod
    def open(cls, path: str) -> ElfImage:
        # OSError (vanished, permission) propagates as is: that is a problem to report, not a non-ELF.
        f = open(path, "rb")  # noqa: SIM115 - owned by the image, closed by close()
        try:
            return cls(f, path)
        except Exception:
            f.close()
            raise

    def close(self) -> None:
        self._f.close()

    def __enter__(self) -> ElfImage:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- sections -------------------------------------------------------------------------------
    def section_data(self, name: str) -> bytes | None:
        sec = self.section(name)
        if sec is None or sec.type == 8:
            return None
        data: bytes = sec.data()
        return data

    def section_addr(self, name: str) -> int | None:
        sec = self.section(name)
        return None if sec is None else sec.addr

    def has_section(self, name: str) -> bool:
        return self.section(name) is not None

    # -- addresses -------------------------------------------------------------------------------
    def vaddr_to_offset(self, vaddr: int) -> int:
        for pv, po, fsz, _x in self._loads:
            if pv <= vaddr < pv + fsz:
                return vaddr - pv + po
        raise ElfFormatError(f"{self.path}: address {vaddr:#x} is in no loaded segment")

    def offset_to_vaddr(self, offset: int) -> int:
        for pv, po, fsz, _x in self._loads:
            if po <= offset < po + fsz:
                return offset - po + pv
        raise ElfFormatError(f"{self.path}: file offset {offset:#x} is in no loaded segment")

    def read_vaddr(self, vaddr: int, size: int) -> bytes:
        off = self.vaddr_to_offset(vaddr)
        self._f.seek(off)
        return self._f.read(size)

    def read_offset(self, offset: int, size: int) -> bytes:
        self._f.seek(offset)
        return self._f.read(size)

    def loaded_data(self) -> Iterable[tuple[int, bytes]]:
        """(vaddr, bytes) of each non-executable loaded segment (where Go keeps buildinfo and pclntab)."""
        for pv, po, fsz, x in self._loads:
            if not x:
                yield pv, self.read_offset(po, fsz)

    # -- symbols ---------------------------------------------------------------------------------
    def find_functions(
        self, names: Iterable[str], tables: tuple[str, ...] = (".dynsym", ".symtab")
    ) -> dict[str, Symbol]:
        """Defined function symbols among ``names`` (first table that defines a name wins).

        Versioned dynsym names match without their version (the table holds the bare name)."""
        wanted = {n for n in names}
        found: dict[str, Symbol] = {}
        for table in tables:
            missing = wanted - found.keys()
            if not missing:
                break
            for sym in self._scan_table(table, missing):
                found.setdefault(sym.name, sym)
        return found

    def _scan_table(self, table: str, names: set[str]) -> list[Symbol]:
        sec = self.section(table)
        if sec is None or sec.type == 8 or sec.entsize != _SYM.size:
            return []
        strtab = self.section_at(sec.link).data()
        # Find the string-table offsets of the wanted names first: bytes.find is C speed, and the
        # symbol scan then only compares integers.
        offsets: dict[int, str] = {}
        for name in names:
            needle = name.encode() + b"\0"
            start = 0
            while True:
                i = strtab.find(needle, start)
                if i < 0:
                    break
                if i == 0 or strtab[i - 1] == 0:
                    offsets[i] = name
                start = i + 1
        if not offsets:
            return []
        out: list[Symbol] = []
        for st_name, info, _other, shndx, value, size in _SYM.iter_unpack(sec.data()):
            if st_name in offsets and shndx != 0 and (info & 0xF) in (STT_FUNC, STT_GNU_IFUNC) and value:
                out.append(Symbol(offsets[st_name], value, size))
        return out

    def has_symbol_prefix(self, prefix: str, table: str = ".dynsym") -> bool:
        sec = self.section(table)
        if sec is None:
            return False
        strtab = self.section_at(sec.link).data()
        return (b"\0" + prefix.encode()) in strtab

    def symbol_at(self, vaddr: int) -> str | None:
        """Name of the function symbol starting exactly at ``vaddr`` (dynsym, then symtab), or a PLT name."""
        plt = self.plt_names()
        if vaddr in plt:
            return plt[vaddr] + "@plt"
        for table in (".dynsym", ".symtab"):
            name = self._addr_lookup(table, vaddr)
            if name:
                return name
        return None

    _tables: dict[str, tuple[bytes, bytes]]

    def _table(self, table: str) -> tuple[bytes, bytes]:
        """(symbol table bytes, its string table) or two empty strings."""
        if not hasattr(self, "_tables"):
            self._tables = {}
        got = self._tables.get(table)
        if got is None:
            sec = self.section(table)
            got = (b"", b"")
            if sec is not None and sec.type != 8 and sec.entsize == _SYM.size:
                got = (sec.data(), self.section_at(sec.link).data())
            self._tables[table] = got
        return got

    def _addr_lookup(self, table: str, vaddr: int) -> str | None:
        """The first function symbol of ``table`` whose value is ``vaddr``. Found by searching the packed
        value in the raw table (C speed) instead of decoding every symbol: node has ~200k of them."""
        syms, strtab = self._table(table)
        if not syms or vaddr <= 0:
            return None
        needle = struct.pack("<Q", vaddr)
        pos = syms.find(needle)
        while pos >= 0:
            if pos % _SYM.size == 8:  # st_value sits at offset 8 of each 24-byte entry
                st_name, info, _o, shndx, _v, _sz = _SYM.unpack_from(syms, pos - 8)
                if shndx != 0 and (info & 0xF) in (STT_FUNC, STT_GNU_IFUNC):
                    end = strtab.find(b"\0", st_name)
                    return strtab[st_name:end].decode("utf-8", "replace")
            pos = syms.find(needle, pos + 1)
        return None

    def plt_names(self) -> dict[int, str]:
        """PLT stub address -> imported symbol name, from .rela.plt and the stubs' `jmp *GOT(%rip)`."""
        if self._plt is not None:
            return self._plt
        self._plt = {}
        rela = self.section(".rela.plt")
        dynsym = self.section(".dynsym")
        if rela is None or dynsym is None:
            return self._plt
        syms = dynsym.data()
        strtab = self.section_at(dynsym.link).data()
        got: dict[int, str] = {}
        for r_off, r_info, _add in _RELA.iter_unpack(rela.data()):
            idx = r_info >> 32
            if not idx:
                continue
            st_name = _SYM.unpack_from(syms, idx * _SYM.size)[0]
            end = strtab.find(b"\0", st_name)
            got[r_off] = strtab[st_name:end].decode("utf-8", "replace")
        from qtap_async.tls.x86 import plt_stub_targets

        for secname in (".plt.sec", ".plt"):
            sec = self.section(secname)
            if sec is None:
                continue
            for stub, slot in plt_stub_targets(sec.data(), sec.addr, sec.entsize or 16):
                if slot in got:
                    self._plt.setdefault(stub, got[slot])
        return self._plt

    def function_starts(self) -> list[int]:
        """Sorted function start addresses from .eh_frame_hdr's binary-search table (empty if absent or
        encoded other than the usual datarel|sdata4)."""
        if hasattr(self, "_starts"):
            return self._starts
        self._starts: list[int] = []
        hdr = self.section_data(".eh_frame_hdr")
        base = self.section_addr(".eh_frame_hdr")
        if hdr is None or base is None or len(hdr) < 12 or hdr[0] != 1 or hdr[2] != 0x03 or hdr[3] != 0x3B:
            return self._starts
        count = struct.unpack_from("<I", hdr, 8)[0]
        table = hdr[12 : 12 + 8 * count]
        self._starts = sorted(base + loc for loc, _fde in struct.iter_unpack("<ii", table))
        return self._starts

    def function_extent(self, addr: int) -> int | None:
        """Size from ``addr`` to the next function start known to .eh_frame_hdr, if ``addr`` starts one."""
        import bisect

        starts = self.function_starts()
        i = bisect.bisect_left(starts, addr)
        if i >= len(starts) or starts[i] != addr or i + 1 >= len(starts):
            return None
        return starts[i + 1] - addr

    def rodata_contains(self, needle: bytes) -> int:
        """Offset of ``needle`` in .rodata, or -1."""
        data = self.section_data(".rodata")
        return -1 if data is None else data.find(needle)
