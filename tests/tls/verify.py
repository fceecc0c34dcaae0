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


_CALLER_SAVED = {"rax", "rcx", "rdx", "rsi", "rdi", "r8", "r9", "r10", "r11"}
_BRANCH = ("call", "jmp", "ret")


def _target(insn: capstone.CsInsn) -> int | None:
    try:
        return int(insn.op_str, 16)
    except ValueError:
        return None


def params_at(path: str, start: int, size: int, target: int, initial: dict[str, str]) -> list[dict[str, str]]:
    """For every path from ``start`` to ``target`` inside [start, start+size): which register holds which
    parameter on arrival (following reg-to-reg movs; any other write loses the register; calls clobber
    the caller-saved ones). One dict per distinct arrival state."""
    with open(path, "rb") as f:
        f.seek(start)
        code = f.read(size + 16)
    by_addr = {i.address: i for i in _MD.disasm(code, start)}
    arrivals: list[dict[str, str]] = []
    stack = [(start, dict(initial))]
    seen: set[tuple[int, tuple[tuple[str, str], ...]]] = set()
    while stack:
        pc, regs = stack.pop()
        while start <= pc < start + size:
            key = (pc, tuple(sorted(regs.items())))
            if key in seen:
                break
            seen.add(key)
            if pc == target:
                arrivals.append(regs)
                break
            insn = by_addr[pc]
            m = insn.mnemonic
            if m == "ret" or m.startswith("ud") or m == "hlt":
                break
            tgt = _target(insn)
            if m == "jmp":
                if tgt is None or tgt == start:  # a jump back to the entry is a new activation (morestack)
                    break
                pc = tgt
                continue
            if m.startswith("j"):
                if tgt is not None:
                    stack.append((tgt, dict(regs)))
                pc = insn.address + insn.size
                continue
            if m == "call":
                regs = {r: n for r, n in regs.items() if r not in _CALLER_SAVED}
                pc = insn.address + insn.size
                continue
            ops = [o.strip() for o in insn.op_str.split(",")]
            if m == "mov" and len(ops) == 2 and ops[0] in _FAMILY and ops[1] in _FAMILY and ops[0] == _FAMILY[ops[0]]:
                if ops[1] in regs:
                    regs = {**regs, ops[0]: regs[ops[1]]}
                else:
                    regs = {r: n for r, n in regs.items() if r != ops[0]}
            else:
                keep = self_widening(insn)
                regs = {r: n for r, n in regs.items() if r not in written(insn) or r == keep}
            pc = insn.address + insn.size
    return arrivals


def check_plan(path: str, plan: ProbePlan, params: dict[str, str], func_size: int) -> None:
    """Every claim of a fast plan, re-checked from the bytes: every site emulated as claimed; on every
    path from the function's entry to each entry site the claimed registers hold the claimed parameters;
    rax untouched between a call and its in-function return site; uretprobes hooked before rsp moves."""
    initial = {reg: name for name, reg in params.items()}
    for s in plan.sites:
        insn = insn_at(path, s.offset)
        assert insn.mnemonic == s.mnemonic
        assert emulated_by_kernel(bytes(insn.bytes)) == s.emulated, s
    if not plan.fast:
        return
    entries = [s for s in plan.sites if s.role == "entry"]
    assert entries
    for entry in entries:
        check_site_emulated(path, entry)
        arrivals = params_at(path, plan.func_offset, func_size, entry.offset, initial)
        assert arrivals, f"{plan.function}: entry site {entry.offset:#x} unreachable"
        claimed = {n: r for n, r in entry.regs.items() if n in params}
        for regs in arrivals:
            held = {n: r for r, n in regs.items()}
            for name, reg in claimed.items():
                assert regs.get(reg) == name, (
                    f"{plan.function}: {reg} does not hold {name} at {entry.offset:#x} ({held})"
                )
    for s in plan.sites:
        if s.role == "return":
            for insn in path_to(path, entries[0].offset, s.offset)[1:]:
                assert "rax" not in written(insn), f"{insn.mnemonic} {insn.op_str} writes rax before the site"
        if s.role == "uretprobe":
            check_site_emulated(path, s)
            assert s.sp_delta in (0, 8)
            if plan.func_offset <= s.offset < plan.func_offset + func_size:
                # a uretprobe inside the function itself: the return address must still be at (%rsp)
                assert s.sp_delta == 8
                for insn in path_to(path, plan.func_offset, s.offset):
                    assert "rsp" not in written(insn), f"{insn.mnemonic} moves rsp before the uretprobe"
