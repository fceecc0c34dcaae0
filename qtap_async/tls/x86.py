"""x86-64 instruction facts the probe analysis needs, on top of capstone.

Which instructions the kernel emulates for a uprobe (arch/x86/kernel/uprobes.c, branch_setup_xol_ops and
push_setup_xol_ops) is decided from the raw bytes, exactly as the kernel decides it:
- ``call rel32`` (e8), ``jmp rel8/rel32`` (eb, e9), ``jcc rel8`` (70-7f), ``jcc rel32`` (0f 80-8f),
- ``nop`` (90, optionally ``f3 90``): multi-byte ``0f 1f`` nops are NOT emulated,
- ``push %reg`` (50-57, or 41 50-57 for r8-r15),
and never with a 0x66 operand-size prefix. Everything else (mov, sub, pop, ret, endbr64, indirect calls)
is single-stepped out of line, which costs ~30x more on these machines (shared/PROBES.md).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache

import capstone  # type: ignore[import-untyped]
from capstone import x86_const

_LEGACY_PREFIXES = frozenset({0xF0, 0xF2, 0xF3, 0x2E, 0x36, 0x3E, 0x26, 0x64, 0x65, 0x66, 0x67})

# 64-bit parent of every general-purpose register name capstone prints.
_PARENT: dict[str, str] = {}
for _full, _names in {
    "rax": ("rax", "eax", "ax", "al", "ah"),
    "rbx": ("rbx", "ebx", "bx", "bl", "bh"),
    "rcx": ("rcx", "ecx", "cx", "cl", "ch"),
    "rdx": ("rdx", "edx", "dx", "dl", "dh"),
    "rsi": ("rsi", "esi", "si", "sil"),
    "rdi": ("rdi", "edi", "di", "dil"),
    "rbp": ("rbp", "ebp", "bp", "bpl"),
    "rsp": ("rsp", "esp", "sp", "spl"),
    **{f"r{n}": (f"r{n}", f"r{n}d", f"r{n}w", f"r{n}b") for n in range(8, 16)},
}.items():
    for _n in _names:
        _PARENT[_n] = _full

ARG_REGS = ("rdi", "rsi", "rdx", "rcx", "r8", "r9")
"""System V AMD64 integer argument registers, in order."""
GO_ARG_REGS = ("rax", "rbx", "rcx", "rdi", "rsi", "r8", "r9", "r10", "r11")
"""Go ABIInternal (Go >= 1.17) integer argument and result registers, in order."""


def parent_reg(name: str) -> str:
    return _PARENT.get(name, name)


def classify_emulated(code: bytes) -> bool:
    """True when the kernel emulates a uprobe on this instruction (see the module docstring)."""
    i = 0
    prefixes: list[int] = []
    while i < len(code) and code[i] in _LEGACY_PREFIXES:
        prefixes.append(code[i])
        i += 1
    if 0x66 in prefixes:
        return False
    rex = 0
    if i < len(code) and 0x40 <= code[i] <= 0x4F:
        rex = code[i]
        i += 1
    if i >= len(code):
        return False
    op = code[i]
    rest = len(code) - i
    if 0x50 <= op <= 0x57:
        return not prefixes and rest == 1 and rex in (0, 0x41)
    if rex:
        return False
    if op == 0x90:
        return rest == 1 and all(p == 0xF3 for p in prefixes)
    # Branches: a bnd (f2) prefix is accepted by the kernel; other prefixes make it refuse or
    # single-step, so stay conservative.
    if any(p != 0xF2 for p in prefixes):
        return False
    if op in (0xE8, 0xE9):
        return rest == 5
    if op == 0xEB or 0x70 <= op <= 0x7F:
        return rest == 2
    if op == 0x0F and rest == 6:
        return 0x80 <= code[i + 1] <= 0x8F
    return False


@dataclass(frozen=True, slots=True)
class Insn:
    addr: int
    size: int
    mnemonic: str
    op_str: str
    raw: bytes
    kind: str
    """call | jmp | jcc | ret | icall (indirect call) | ijmp (indirect jump) | other"""
    target: int | None
    """Branch target for direct call/jmp/jcc."""
    writes: frozenset[str]
    """64-bit parents of the general-purpose registers the instruction writes (calls: see clobbers)."""
    reads: frozenset[str]
    emulated: bool

    @property
    def next(self) -> int:
        return self.addr + self.size

    def widens_self(self) -> str | None:
        """If the instruction only widens a register from its own low half (``movslq %edx,%rdx``,
        ``mov %edx,%edx``), the register: the argument value it carries is unchanged."""
        m = self.mnemonic
        if m not in ("movsxd", "mov", "cdqe"):
            return None
        if m == "cdqe":
            return "rax"
        parts = [p.strip() for p in self.op_str.split(",")]
        if len(parts) != 2 or parts[0] not in _PARENT or parts[1] not in _PARENT:
            return None
        if parent_reg(parts[0]) != parent_reg(parts[1]):
            return None
        if m == "movsxd" or parts[0] == parts[1]:
            return parent_reg(parts[0])
        return None


@lru_cache(maxsize=1)
def _cs() -> capstone.Cs:
    md = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64)
    md.detail = True
    return md


def _kind(insn: capstone.CsInsn) -> tuple[str, int | None]:
    groups = set(insn.groups)
    target: int | None = None
    ops = insn.operands
    if ops and ops[0].type == x86_const.X86_OP_IMM:
        target = int(ops[0].imm)
    if capstone.CS_GRP_RET in groups or insn.mnemonic.startswith("ret"):
        return "ret", None
    if capstone.CS_GRP_CALL in groups:
        return ("call", target) if target is not None else ("icall", None)
    if capstone.CS_GRP_JUMP in groups:
        if insn.mnemonic in ("jmp", "bnd jmp", "notrack jmp"):
            return ("jmp", target) if target is not None else ("ijmp", None)
        return ("jcc", target) if target is not None else ("ijmp", None)
    return "other", None


def decode(code: bytes, addr: int) -> Iterator[Insn]:
    """Linear-sweep decode; stops at the first undecodable byte."""
    md = _cs()
    for ci in md.disasm(code, addr):
        kind, target = _kind(ci)
        try:
            r, w = ci.regs_access()
        except capstone.CsError:
            r, w = [], []
        writes = frozenset(parent_reg(ci.reg_name(x)) for x in w)
        reads = frozenset(parent_reg(ci.reg_name(x)) for x in r)
        raw = bytes(ci.bytes)
        yield Insn(
            ci.address, ci.size, ci.mnemonic, ci.op_str, raw, kind, target, writes, reads, classify_emulated(raw)
        )


def plt_stub_targets(code: bytes, base: int, entsize: int) -> Iterator[tuple[int, int]]:
    """(stub address, GOT slot address) for each PLT stub that jumps through ``*slot(%rip)``."""
    md = _cs()
    for off in range(0, len(code) - entsize + 1, entsize):
        for ci in md.disasm(code[off : off + entsize], base + off):
            if ci.mnemonic in ("jmp", "bnd jmp", "notrack jmp") and ci.operands:
                op = ci.operands[0]
                if op.type == x86_const.X86_OP_MEM and op.mem.base == x86_const.X86_REG_RIP:
                    yield base + off, ci.address + ci.size + op.mem.disp
                    break
