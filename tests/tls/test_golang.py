"""Go binaries: version, function table on stripped binaries, *tls.Conn -> fd offsets."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from elftools.elf.elffile import ELFFile

from qtap_async.tls import golang
from qtap_async.tls.elf import ElfImage

WANT = ("crypto/tls.(*Conn).Read", "crypto/tls.(*Conn).Write")


def _go_version() -> str:
    go = shutil.which("go") or "/usr/local/go/bin/go"
    out = subprocess.run(
        [go, "env", "GOVERSION"], capture_output=True, text=True, check=True, env=dict(os.environ, GOTOOLCHAIN="local")
    ).stdout.strip()
    return out


def _symtab(path: Path) -> dict[str, tuple[int, int]]:
    with open(path, "rb") as f:
        sec = ELFFile(f).get_section_by_name(".symtab")
        assert sec is not None
        return {s.name: (s["st_value"], s["st_size"]) for s in sec.iter_symbols() if s.name in WANT}


def test_version_from_buildinfo(go_binaries: dict[str, Path]) -> None:
    want = _go_version()
    for path in go_binaries.values():
        with ElfImage.open(str(path)) as img:
            assert golang.go_version(img) == want


def test_pclntab_matches_symtab_and_works_stripped(go_binaries: dict[str, Path]) -> None:
    syms = _symtab(go_binaries["plain"])
    assert set(syms) == set(WANT)
    with ElfImage.open(str(go_binaries["plain"])) as img:
        funcs = golang.find_pclntab(img).functions()
    for name, (addr, size) in syms.items():
        assert funcs[name].entry == addr
        assert funcs[name].end - funcs[name].entry >= size
    with ElfImage.open(str(go_binaries["stripped"])) as img:
        assert not img.has_section(".symtab")
        sfuncs = golang.find_pclntab(img).functions()
        for name in WANT:
            f = sfuncs[name]
            # Go functions open with the stack check against g (r14): cmp ...(%r14)
            code = img.read_vaddr(f.entry, 16)
            assert b"\x66\x10" in code[:10] or b"\x4d\x3b\x66" in code[:10], code.hex()


def test_pclntab_found_without_section_headers(go_binaries: dict[str, Path], tmp_path: Path) -> None:
    """Section headers zeroed (as sstrip does): buildinfo and pclntab are found in the segments."""
    data = bytearray(go_binaries["stripped"].read_bytes())
    # e_shoff = 0, e_shnum = 0, e_shstrndx = 0
    data[0x28:0x30] = b"\0" * 8
    data[0x3C:0x40] = b"\0" * 4
    p = tmp_path / "noshdr"
    p.write_bytes(bytes(data))
    with ElfImage.open(str(go_binaries["stripped"])) as ref:
        want = {n: ref_f.entry for n, ref_f in golang.find_pclntab(ref).functions().items() if n in WANT}
    with ElfImage.open(str(p)) as img:
        assert golang.go_version(img) == _go_version()
        funcs = golang.find_pclntab(img).functions()
        assert {n: funcs[n].entry for n in WANT} == want


def test_offsets_dwarf_agree_with_table(go_binaries: dict[str, Path]) -> None:
    with ElfImage.open(str(go_binaries["plain"])) as img:
        dw = golang.offsets_from_dwarf(img)
    assert dw is not None and dw.source == "dwarf"
    with ElfImage.open(str(go_binaries["stripped"])) as img:
        assert golang.offsets_from_dwarf(img) is None
    tab, note = golang.offsets_from_table(_go_version())
    assert tab is not None and note == ""
    strip = {"source"}
    import msgspec

    assert {k: v for k, v in msgspec.structs.asdict(dw).items() if k not in strip} == {
        k: v for k, v in msgspec.structs.asdict(tab).items() if k not in strip
    }


def test_offsets_table_bounds() -> None:
    assert golang.offsets_from_table("go1.16.15")[0] is None
    offs, note = golang.offsets_from_table("go1.99.0")
    assert offs is not None and "newer" in note
    assert golang.offsets_from_table("go1.21.3") == (golang.GO_OFFSETS_TABLE[0][2], "")


def test_dwarf_fast_path_agrees_with_full_walk(go_binaries: dict[str, Path]) -> None:
    with ElfImage.open(str(go_binaries["plain"])) as img:
        dwarf = img.elf.get_dwarf_info()
        fast = golang._offsets_fast(dwarf)
        assert len(fast) == 5 and fast == golang._offsets_slow(dwarf)


def test_pclntab_lazy_lookup_matches_full_table(go_binaries: dict[str, Path]) -> None:
    with ElfImage.open(str(go_binaries["stripped"])) as img:
        table = golang.find_pclntab(img)
        full = table.functions()
        for name in (*WANT, "runtime.memmove", "main.main"):
            assert table.lookup(name) == full[name]
            assert table.name_at(full[name].entry) == name
        assert table.lookup("crypto/tls.(*Conn).NoSuchMethod") is None
        assert table.name_at(full["main.main"].entry + 1) is None
