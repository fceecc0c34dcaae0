"""Independent re-verification of probe plans, straight from the file bytes with capstone.

Deliberately shares no code with qtap_async.tls: it re-derives "is this instruction emulated" and
"which registers does this instruction write" on its own, so a bug in the analysis cannot hide itself.
"""

from __future__ import annotations

import capstone  # type: ignore[import-untyped]

from qtap_async.tls.model import ProbePlan, ProbeSite

_MD = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64)
_MD.detail = True

_FAMILY = {
    r: fam
    for fam, names in {
        "rax": "rax eax ax al ah",
        "rbx": "rbx ebx bx bl bh",
        "rcx": "rcx ecx cx cl ch",
        "rdx": "rdx edx dx dl dh",
        "rsi": "rsi esi si sil",
        "rdi": "rdi edi di dil",
        "rsp": "rsp esp sp spl",
        "r8": "r8 r8d r8w r8b",
        "r9": "r9 r9d r9w r9b",
    }.items()
    for r in names.split()
}


def emulated_by_kernel(raw: bytes) -> bool:
    """The kernel's uprobe emulation rules, restated: rel call/jmp/jcc, 1-byte nop, push reg."""
    if raw[:1] == b"\x66":
        return False
    b = raw[1:] if raw[0] == 0xF2 else raw  # bnd prefix on branches
    if len(b) == 5 and b[0] in (0xE8, 0xE9):
        return True
    if len(b) == 2 and (b[0] == 0xEB or 0x70 <= b[0] <= 0x7F):
        return True
    if len(b) == 6 and b[0] == 0x0F and 0x80 <= b[1] <= 0x8F:
        return True
    if raw == b"\x90":
        return True
    return (len(raw) == 1 and 0x50 <= raw[0] <= 0x57) or (len(raw) == 2 and raw[0] == 0x41 and 0x50 <= raw[1] <= 0x57)


def insn_at(path: str, offset: int) -> capstone.CsInsn:
    with open(path, "rb") as f:
        f.seek(offset)
        code = f.read(16)
    return next(_MD.disasm(code, offset))


def written(insn: capstone.CsInsn) -> set[str]:
    _r, w = insn.regs_access()
    return {_FAMILY.get(insn.reg_name(x), insn.reg_name(x)) for x in w}


def self_widening(insn: capstone.CsInsn) -> str | None:
    ops = [o.strip() for o in insn.op_str.split(",")]
    if insn.mnemonic == "movsxd" and len(ops) == 2 and _FAMILY.get(ops[0]) == _FAMILY.get(ops[1]):
        return _FAMILY.get(ops[0])
    return None


def path_to(path: str, start: int, target: int, limit: int = 200) -> list[capstone.CsInsn]:
    """Instructions executed from ``start`` to ``target`` along fall-throughs and in-range jmps."""
    with open(path, "rb") as f:
        f.seek(start)
        code = f.read(max(target - start, 0) + 4096)
    by_addr = {i.address: i for i in _MD.disasm(code, start)}
    out = []
    pc = start
    for _ in range(limit):
        if pc == target:
            return out
        insn = by_addr[pc]
        out.append(insn)
        if insn.mnemonic == "jmp" and insn.op_str.startswith("0x") and start <= int(insn.op_str, 16) <= target:
            pc = int(insn.op_str, 16)
        else:
            pc = insn.address + insn.size
    raise AssertionError(f"{target:#x} not reached from {start:#x}")


def check_site_emulated(path: str, site: ProbeSite) -> None:
    insn = insn_at(path, site.offset)
    assert insn.mnemonic == site.mnemonic, (insn.mnemonic, site)
    allowed = insn.mnemonic in ("push", "call", "jmp", "nop", "bnd jmp") or (
        insn.mnemonic.startswith("j") and insn.mnemonic != "jmp"
    )
    assert allowed and emulated_by_kernel(bytes(insn.bytes)) == site.emulated, site


def check_plan(path: str, plan: ProbePlan) -> None:
    """Every claim of a fast plan, re-checked: sites emulated, argument registers untouched on the way
    to the entry site, rax untouched between the call and the return site."""
    for s in plan.sites:
        insn = insn_at(path, s.offset)
        assert insn.mnemonic == s.mnemonic
        assert emulated_by_kernel(bytes(insn.bytes)) == s.emulated, s
    if not plan.fast:
        return
    entry = next(s for s in plan.sites if s.role == "entry")
    check_site_emulated(path, entry)
    arg_regs = {r for name, r in entry.regs.items() if name != "processed_ptr"}
    arg_regs &= set(_FAMILY.values())
    for insn in path_to(path, plan.func_offset, entry.offset):
        hit = written(insn) & arg_regs
        hit.discard(self_widening(insn) or "")
        assert not hit, f"{plan.function}: {insn.mnemonic} {insn.op_str} at {insn.address:#x} writes {hit}"
        if plan.sites[-1].role == "uretprobe" and plan.sites[-1].offset == entry.offset:
            assert "rsp" not in written(insn), "uretprobe past an rsp change would hijack the wrong slot"
    for s in plan.sites:
        if s.role == "return":
            for insn in path_to(path, entry.offset, s.offset)[1:]:
                assert "rax" not in written(insn), f"{insn.mnemonic} {insn.op_str} writes rax before the site"
