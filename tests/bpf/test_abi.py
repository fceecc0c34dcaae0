"""The Python mirror of qtap.h against the C compiler's layout of the real header."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from qtap_async.bpf import abi

SRC = Path(__file__).resolve().parents[2] / "bpf" / "src"


def _c_layout(tmp_path: Path) -> dict[str, int]:
    cc = shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if cc is None:
        pytest.fail("no C compiler to check the ABI with")
    lines = ['#include <stdio.h>', '#include <stddef.h>', '#include <linux/types.h>', '#include "qtap.h"',
             "int main(void) {"]
    for struct, fields in abi.LAYOUT.items():
        for f in fields:
            if f == "__size__":
                lines.append(f'printf("{struct}.__size__=%zu\\n", sizeof(struct {struct}));')
            else:
                lines.append(f'printf("{struct}.{f}=%zu\\n", offsetof(struct {struct}, {f}));')
    for name in abi.CONSTANTS:
        lines.append(f'printf("{name}=%lld\\n", (long long)({name}));')
    lines.append("return 0; }")
    src = tmp_path / "layout.c"
    src.write_text("\n".join(lines))
    exe = tmp_path / "layout"
    subprocess.run([cc, "-I", str(SRC), str(src), "-o", str(exe)], check=True)
    out = subprocess.run([str(exe)], check=True, capture_output=True, text=True).stdout
    return {k: int(v) for k, v in (line.split("=") for line in out.split())}


def test_python_layout_matches_qtap_h(tmp_path: Path) -> None:
    c = _c_layout(tmp_path)
    for struct, fields in abi.LAYOUT.items():
        for f, off in fields.items():
            assert c[f"{struct}.{f}"] == off, f"{struct}.{f}: C says {c[f'{struct}.{f}']}, abi.py says {off}"
    for name, value in abi.CONSTANTS.items():
        assert c[name] == value, name


def test_enums_match_header() -> None:
    text = (SRC / "qtap.h").read_text()
    for enum_cls, prefix in ((abi.RecType, "QTAP_REC_"), (abi.Source, "QTAP_SRC_"), (abi.Role, "QTAP_ROLE_"),
                             (abi.Counter, "QTAP_CNT_")):
        for member in enum_cls:
            needle = f"{prefix}{member.name} = {int(member)}"
            assert needle in text, needle


def test_prog_info_layout_matches_linux_bpf_h(tmp_path: Path) -> None:
    from qtap_async.bpf import object as bpf_object

    src = tmp_path / "info.c"
    src.write_text('#include <stdio.h>\n#include <stddef.h>\n#include <linux/bpf.h>\nint main(void) {'
                   'printf("%zu %zu", offsetof(struct bpf_prog_info, recursion_misses), sizeof(struct bpf_prog_info));'
                   "return 0; }\n")
    cc = shutil.which("cc") or shutil.which("gcc") or "cc"
    subprocess.run([cc, str(src), "-o", str(tmp_path / "info")], check=True)
    off, size = map(int, subprocess.run([str(tmp_path / "info")], check=True, capture_output=True,
                                        text=True).stdout.split())
    assert (off, size) == (bpf_object._PROG_INFO_RECURSION_MISSES, bpf_object._PROG_INFO_SIZE)
