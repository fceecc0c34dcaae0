"""Cheap, provably safe uprobe points for TLS read/write functions (shared/PROBES.md, Recipe).

A uprobe on an instruction the kernel emulates (push, 1-byte nop, call/jmp/jcc rel) costs ~0.45 us; on
anything else it is single-stepped, ~14 us. The analysis here picks emulated sites where that can be
proven correct from the machine code alone, and otherwise falls back to the classic entry uprobe plus
uretprobe (``fast=False``), saying why in ``ProbePlan.reason``. It never guesses:

1. First instruction emulated: probe the entry; a uretprobe hooks the same instruction, so it is cheap.
   More generally (``endbr64; push`` -> entry+4, ``xor; xor; jmp`` -> entry+5): the first emulated
   instruction reached by straight-line code that moves neither rsp nor the arguments (register copies are
   followed): the return address is still at (%rsp), so a uretprobe attached there is right too.
2. Otherwise walk forward from the entry over straight-line code (following in-function jmps) until the
   forwarding call (``call``/tail ``jmp``) that receives the arguments. Every instruction on the way must
   leave the needed argument registers intact (a self-widening ``movslq %edx,%rdx`` keeps the value), and
   every conditional branch must be proven not to leave: its taken side either returns without I/O
   (calls only to known error-reporting/stack-check/no-return functions), rejoins the fall-through with the
   arguments intact, or re-enters the function entry (Go's morestack).
3. Return values: the first emulated instruction after the forwarding call, with rax unwritten in between
   and no jump landing between the call and it; else a uretprobe on the callee hooked where the callee's
   return address is still at (%rsp) on an emulated instruction. A forwarding ``call``'s result is the
   callee's, so its contract must be proven (OpenSSL: the same callee as SSL_read_ex/SSL_write_ex(2),
   whose arguments it receives unchanged); for a tail ``jmp`` the callee's return is the function's own.
4. When no single forwarding point exists (several I/O paths, as in gnutls_record_recv): every path may
   make at most one I/O call or tail jump, after which the function must return that callee's value
   (``cltq`` allowed). Each such instruction becomes an entry site (parameters followed through register
   copies) and each callee gets a uretprobe; ``sp_delta`` pairs them. Else fallback.

Go functions use ABIInternal (arguments in rax, rbx, rcx...), get RET-site probes instead of uretprobes
(uretprobes crash Go programs: the runtime moves stacks), and their entry site skips the stack-check
``jbe``: that branch is hit twice when the stack grows (morestack jumps back to the entry).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

from qtap_async.tls.model import ProbePlan, ProbeSite, ReturnMeaning
from qtap_async.tls.x86 import ARG_REGS, GO_ARG_REGS, Insn, decode

Resolver = Callable[[int], "str | None"]
"""Name of the function at an address (PLT stubs as ``name@plt``), or None."""

# Calls that may sit on an error path without doing TLS I/O. Anything else on a path that skips the
# probe site makes the site unprovable.
NON_IO_CALLS = frozenset(
    {
        "ERR_new",
        "ERR_set_debug",
        "ERR_set_error",
        "ERR_put_error",
        "ERR_raise",
        "ERR_raise_data",
        "_gnutls_log",
        "_gnutls_audit_log",
        "__stack_chk_fail",
        "abort",
        "__assert_fail",
        "runtime.morestack",
        "runtime.morestack_noctxt",
        "runtime.morestack.abi0",
        "runtime.morestack_noctxt.abi0",
    }
)
NO_RETURN_CALLS = frozenset({"__stack_chk_fail", "abort", "__assert_fail"})
_GO_NO_RETURN_PREFIXES = ("runtime.panic", "runtime.throw", "runtime.goPanic")
SYSV_CLOBBERED = frozenset({"rax", "rcx", "rdx", "rsi", "rdi", "r8", "r9", "r10", "r11"})
MAX_WALK = 256
MAX_EXPLORE = 512


def _base_name(name: str | None) -> str:
    if not name:
        return ""
    return name.removesuffix("@plt").split("@", 1)[0]


def _is_non_io(name: str | None) -> bool:
    n = _base_name(name)
    return n in NON_IO_CALLS or n.startswith(_GO_NO_RETURN_PREFIXES)


def _is_no_return(name: str | None) -> bool:
    n = _base_name(name)
    return n in NO_RETURN_CALLS or n.startswith(_GO_NO_RETURN_PREFIXES)


class Code:
    """The decoded instructions of one function (linear sweep over [start, start+size))."""

    def __init__(self, start: int, code: bytes, file_offset: int) -> None:
        self.start = start
        self.end = start + len(code)
        self.file_offset = file_offset
        self.insns = list(decode(code, start))
        self.at = {i.addr: i for i in self.insns}
        self.jump_targets = {i.target for i in self.insns if i.kind in ("jmp", "jcc") and i.target is not None}

    def inside(self, addr: int) -> bool:
        return self.start <= addr < self.end

    def offset_of(self, vaddr: int) -> int:
        return self.file_offset + (vaddr - self.start)

    def rets(self) -> list[Insn]:
        return [i for i in self.insns if i.kind == "ret"]


@dataclass
class EntryFinding:
    """Result of the forward walk from a function's entry."""

    site: Insn | None = None
    kind: Literal["call", "tail", "first", ""] = ""
    callee: int | None = None
    intact: set[str] = field(default_factory=set)
    why_not: str = ""
    steps: list[str] = field(default_factory=list)


@dataclass
class ReturnFinding:
    site: Insn | None = None
    callee_uretprobe: tuple[Code, Insn] | None = None
    """(callee vaddr, callee's first instruction) when the return is taken by a uretprobe on the callee."""
    why_not: str = ""


def _explore(
    code: Code,
    start: int,
    fallthrough: int,
    walked: set[int],
    needs: set[str],
    resolve: Resolver,
    clobbered_by_call: frozenset[str],
) -> tuple[str, str]:
    """Classify a branch's taken side: ("ok"|"reentry"|"unknown", detail)."""
    ends: set[str] = set()
    stack: list[tuple[int, bool]] = [(start, False)]
    seen: set[tuple[int, bool]] = set()
    budget = MAX_EXPLORE
    while stack:
        pc, dirty = stack.pop()
        while True:
            if (pc, dirty) in seen:
                break
            seen.add((pc, dirty))
            budget -= 1
            if budget <= 0:
                return "unknown", f"branch side from {start:#x} too long to prove"
            if pc == fallthrough:
                if dirty:
                    return "unknown", f"path from {start:#x} rejoins at {pc:#x} with arguments overwritten"
                ends.add("rejoin")
                break
            if pc == code.start:
                ends.add("reentry")
                break
            if pc in walked:
                return "unknown", f"path from {start:#x} loops back to {pc:#x} before the probe site"
            if not code.inside(pc):
                return "unknown", f"path from {start:#x} leaves the function at {pc:#x}"
            insn = code.at.get(pc)
            if insn is None:
                return "unknown", f"path from {start:#x} reaches undecoded address {pc:#x}"
            if insn.kind == "ret":
                ends.add("return")
                break
            if insn.kind in ("icall", "ijmp"):
                return "unknown", f"indirect {insn.mnemonic} at {pc:#x} on a path that skips the site"
            if insn.kind == "call":
                assert insn.target is not None
                name = resolve(insn.target)
                if not _is_non_io(name):
                    return "unknown", f"call to {name or hex(insn.target)} at {pc:#x} on a path that skips the site"
                if _is_no_return(name):
                    ends.add("noreturn")
                    break
                dirty = dirty or bool(needs & clobbered_by_call)
                pc = insn.next
                continue
            if insn.kind == "jmp":
                assert insn.target is not None
                if insn.target == code.start:
                    ends.add("reentry")
                    break
                pc = insn.target
                continue
            if insn.kind == "jcc":
                assert insn.target is not None
                stack.append((insn.target, dirty))
                pc = insn.next
                continue
            if needs & insn.writes:
                dirty = True
            pc = insn.next
    return ("reentry" if "reentry" in ends else "ok"), ",".join(sorted(ends))


def find_entry(
    code: Code,
    needs: Sequence[str],
    resolve: Resolver,
    goal: Literal["call", "first"],
    clobbered_by_call: frozenset[str] = SYSV_CLOBBERED,
) -> EntryFinding:
    """Walk forward from the entry (Recipe step 2). ``needs`` are registers that must be intact."""
    f = EntryFinding(intact=set(needs))
    walked: set[int] = set()
    pc = code.start
    for _ in range(MAX_WALK):
        insn = code.at.get(pc)
        if insn is None or not code.inside(pc):
            f.why_not = f"walk reached {pc:#x}, outside the decoded function"
            return f
        walked.add(pc)
        if insn.kind == "call":
            assert insn.target is not None
            name = resolve(insn.target)
            if _is_no_return(name):
                f.why_not = f"no-return call at {pc:#x} on the straight line"
                return f
            if len(f.intact) != len(set(needs)):
                missing = sorted(set(needs) - f.intact)
                f.why_not = f"argument register(s) {', '.join(missing)} overwritten before the call at {pc:#x}"
                return f
            if goal == "first":
                # An emulated call with everything intact is also a fine "first" site.
                f.site, f.kind = insn, "first"
                return f
            f.site, f.kind, f.callee = insn, "call", insn.target
            f.steps.append(f"forwarding call at {pc:#x} to {name or hex(insn.target)}")
            return f
        if insn.kind == "jmp":
            assert insn.target is not None
            if code.inside(insn.target) and insn.target != code.start:
                if goal == "first" and insn.emulated and f.intact == set(needs):
                    f.site, f.kind = insn, "first"
                    return f
                if insn.target in walked:
                    f.why_not = f"loop at {pc:#x} before any usable site"
                    return f
                pc = insn.target
                continue
            if f.intact != set(needs):
                missing = sorted(set(needs) - f.intact)
                f.why_not = f"argument register(s) {', '.join(missing)} overwritten before the tail jump at {pc:#x}"
                return f
            f.site, f.kind, f.callee = insn, ("first" if goal == "first" else "tail"), insn.target
            return f
        if insn.kind == "jcc":
            assert insn.target is not None
            verdict, detail = _explore(code, insn.target, insn.next, walked, set(needs), resolve, clobbered_by_call)
            if verdict == "unknown":
                f.why_not = detail
                return f
            if verdict == "reentry":
                # The branch re-enters the function from its first instruction (morestack): everything up
                # to and including it can run twice for one call, so no site may sit there.
                f.steps.append(f"{insn.mnemonic} at {pc:#x} re-enters the entry ({detail})")
            else:
                f.steps.append(f"{insn.mnemonic} at {pc:#x} leaves only without I/O ({detail})")
                if goal == "first" and f.intact == set(needs):
                    f.site, f.kind = insn, "first"
                    return f
            pc = insn.next
            continue
        if insn.kind in ("ret", "icall", "ijmp"):
            f.why_not = f"{insn.mnemonic} at {pc:#x} before any usable site"
            return f
        if goal == "first" and insn.emulated and f.intact == set(needs):
            f.site, f.kind = insn, "first"
            return f
        widened = insn.widens_self()
        for r in insn.writes:
            if r in f.intact and r != widened:
                f.intact.discard(r)
        if goal == "first" and f.intact != set(needs):
            missing = sorted(set(needs) - f.intact)
            f.why_not = f"argument register(s) {', '.join(missing)} overwritten at {pc:#x} before any emulated site"
            return f
        pc = insn.next
    f.why_not = f"no usable site within {MAX_WALK} instructions"
    return f


def find_unmoved_stack_site(code: Code, needs: Sequence[str], limit: int = 16) -> Insn | None:
    """The first emulated instruction reached by straight-line code that leaves rsp and ``needs`` alone.

    There the arguments are still in their registers and the return address is still at (%rsp), so a
    uretprobe attached at that offset hijacks the right return address (the kernel reads it from sp
    when the probe fires). This is the ``endbr64; push`` -> entry+4 case.
    """
    for insn in code.insns[:limit]:
        if insn.emulated:
            return insn
        if insn.kind != "other" or "rsp" in insn.writes:
            return None
        widened = insn.widens_self()
        if any(r in needs and r != widened for r in insn.writes):
            return None
    return None


def find_early_site(
    code: Code, params: dict[str, str], needs: Sequence[str], limit: int = 16
) -> tuple[Insn, dict[str, str]] | None:
    """Like find_unmoved_stack_site, but parameters may move between registers on the way (``mov %rcx,%r8``
    before ``xor %ecx,%ecx``): returns the site and where each needed parameter is there."""
    regmap = {reg: name for name, reg in params.items()}
    for insn in code.insns[:limit]:
        if insn.emulated:
            held = {n: r for r, n in sorted(regmap.items())}
            if all(n in held for n in needs):
                return insn, {n: held[n] for n in params if n in held}
            return None
        if insn.kind != "other" or "rsp" in insn.writes:
            return None
        copy = _reg_copy(insn)
        if copy is not None:
            dst, src = copy
            regmap = {**regmap, dst: regmap[src]} if src in regmap else {r: n for r, n in regmap.items() if r != dst}
        else:
            widened = insn.widens_self()
            regmap = {r: n for r, n in regmap.items() if r not in insn.writes or r == widened}
    return None


def find_return(code: Code, call: Insn, resolve: Resolver, callee_code: Callable[[int], Code | None]) -> ReturnFinding:
    """Recipe step 3 for a forwarding ``call`` (not a tail jump)."""
    r = ReturnFinding()
    pc = call.next
    why = ""
    for _ in range(64):
        insn = code.at.get(pc)
        if insn is None:
            why = f"no decodable instruction at {pc:#x}"
            break
        if insn.emulated:
            landing = [t for t in code.jump_targets if call.addr < t <= insn.addr]
            if landing:
                why = f"a jump lands at {landing[0]:#x} between the call and {insn.addr:#x}"
                break
            r.site = insn
            return r
        if "rax" in insn.writes:
            why = f"{insn.mnemonic} at {pc:#x} overwrites rax before any emulated instruction"
            break
        if insn.kind in ("ret", "icall", "ijmp", "jmp", "jcc", "call"):
            why = f"{insn.mnemonic} at {pc:#x} before any emulated instruction"
            break
        pc = insn.next
    cu = _callee_uretprobe(call, resolve, callee_code)
    if cu is not None:
        r.callee_uretprobe = cu
        return r
    r.why_not = why + "; and the callee's first instruction is not emulated or the callee is unknown"
    return r


def _callee_uretprobe(
    call: Insn, resolve: Resolver, callee_code: Callable[[int], Code | None]
) -> tuple[Code, Insn] | None:
    """Where a uretprobe on the callee can hook cheaply: its first instruction when emulated, else the first
    emulated instruction reached straight-line with rsp untouched (the return address is still at (%rsp))
    and that no jump in the callee can reach again (it would hijack the return twice). ``callee_code`` must
    then cover the whole callee."""
    assert call.target is not None
    cc = callee_code(call.target)
    if cc is None or not cc.insns:
        return None
    first = cc.insns[0]
    if first.emulated:
        return cc, first
    site = find_unmoved_stack_site(cc, ())
    if site is None or cc.end - cc.start <= 32:  # callee extent unknown: cannot rule out a jump back
        return None
    if any(cc.start <= t <= site.addr for t in cc.jump_targets):
        return None
    return cc, site


@dataclass(frozen=True)
class IoExit:
    """One I/O call (or tail jump) on some path of the function, probed right at that instruction."""

    site: Insn
    regs: tuple[tuple[str, str], ...]
    """(parameter, register) at the site, after following register-to-register copies."""
    callee: int
    tail: bool
    ret_reg: str


def _reg_copy(insn: Insn) -> tuple[str, str] | None:
    """(dst, src) for a full-width register-to-register ``mov``."""
    if insn.mnemonic != "mov":
        return None
    parts = [p.strip() for p in insn.op_str.split(",")]
    if len(parts) != 2 or not all(
        p in (*ARG_REGS, "rax", "rbx", "rbp", "r10", "r11", "r12", "r13", "r14", "r15") for p in parts
    ):
        return None
    return parts[0], parts[1]


def find_io_exits(
    code: Code, params: dict[str, str], needs: Sequence[str], resolve: Resolver, ret_reg: str = "rax"
) -> tuple[list[IoExit], str]:
    """Every path from the entry: at most one I/O call or tail jump, after which the function returns that
    callee's value (a ``cltq`` sign-extension allowed). Error paths without I/O may call only known
    non-I/O functions. Parameter registers are tracked through register copies to each I/O site.

    Returns (exits, "") or ([], why not)."""
    exits: dict[int, IoExit] = {}
    start = {reg: name for name, reg in params.items()}
    # state: pc, reg->param map, pending exit (after an I/O call), ret widened
    stack: list[tuple[int, dict[str, str], IoExit | None]] = [(code.start, start, None)]
    seen: set[tuple[int, tuple[tuple[str, str], ...], int | None]] = set()
    budget = MAX_EXPLORE * 2
    while stack:
        pc, regmap, pending = stack.pop()
        while True:
            key = (pc, tuple(sorted(regmap.items())), pending.site.addr if pending else None)
            if key in seen:
                break
            seen.add(key)
            budget -= 1
            if budget <= 0:
                return [], "too many paths to prove"
            insn = code.at.get(pc)
            if insn is None or not code.inside(pc):
                return [], f"a path reaches {pc:#x}, outside the decoded function"
            if insn.kind == "ret":
                if pending is not None:
                    exits[pending.site.addr] = pending
                break
            if insn.kind in ("icall", "ijmp"):
                return [], f"indirect {insn.mnemonic} at {pc:#x}"
            if (
                insn.kind in ("call", "jmp")
                and insn.target is not None
                and not (insn.kind == "jmp" and code.inside(insn.target))
            ):
                name = resolve(insn.target)
                if insn.kind == "call" and _is_non_io(name):
                    if _is_no_return(name):
                        break
                    if pending is not None:
                        return [], f"call to {name} at {pc:#x} clobbers rax after the I/O call"
                    regmap = {r: n for r, n in regmap.items() if r not in SYSV_CLOBBERED}
                    pc = insn.next
                    continue
                if pending is not None:
                    return [], f"a second call ({name or hex(insn.target)}) at {pc:#x} after the I/O call"
                held = {n: r for r, n in regmap.items()}
                missing = [n for n in needs if n not in held]
                if missing:
                    return [], f"{', '.join(missing)} not in a register at the I/O {insn.mnemonic} at {pc:#x}"
                ex = IoExit(insn, tuple((n, held[n]) for n in needs), insn.target, insn.kind == "jmp", ret_reg)
                if insn.kind == "jmp":
                    exits[insn.addr] = ex
                    break
                pending = ex
                regmap = {r: n for r, n in regmap.items() if r not in SYSV_CLOBBERED}
                pc = insn.next
                continue
            if insn.kind == "jmp":
                assert insn.target is not None
                pc = insn.target
                continue
            if insn.kind == "jcc":
                assert insn.target is not None
                stack.append((insn.target, dict(regmap), pending))
                pc = insn.next
                continue
            if pending is not None and "rax" in insn.writes:
                if insn.mnemonic in ("cdqe", "cltq") or insn.widens_self() == "rax":
                    pending = IoExit(pending.site, pending.regs, pending.callee, False, "eax")
                else:
                    return [], f"{insn.mnemonic} at {pc:#x} changes rax between the I/O call and the return"
            copy = _reg_copy(insn)
            widened = insn.widens_self()
            if copy is not None:
                dst, src = copy
                if src in regmap:
                    regmap = {**regmap, dst: regmap[src]}
                else:
                    regmap = {r: n for r, n in regmap.items() if r != dst}
            else:
                regmap = {r: n for r, n in regmap.items() if r not in insn.writes or r == widened}
            pc = insn.next
    if not exits:
        return [], "no I/O call found on any path"
    return sorted(exits.values(), key=lambda e: e.site.addr), ""


# ------------------------------------------------------------------------------------------------
# Plans


def _site(code: Code, insn: Insn, role: str, regs: dict[str, str], sp_delta: int | None = None) -> ProbeSite:
    return ProbeSite(
        offset=code.offset_of(insn.addr),
        vaddr=insn.addr,
        mnemonic=insn.mnemonic,
        op_str=insn.op_str,
        emulated=insn.emulated,
        role=role,  # type: ignore[arg-type]
        regs=regs,
        sp_delta=sp_delta,
    )


@dataclass(frozen=True)
class FuncSpec:
    """What a target function takes and returns."""

    name: str
    params: tuple[str, ...]
    needs: tuple[str, ...]
    """Parameter names the capture needs at the entry site."""
    direction: Literal["read", "write"]
    length: str
    """Byte count in terms of the function's own parameters/``ret`` when ret_meaning is "function"."""
    abi: Literal["sysv", "go"] = "sysv"
    ret_reg: str = "rax"
    """Register holding the return value: ``eax`` for C ``int`` (its upper half is garbage), ``rax`` for
    ``ssize_t``/Go ``int``."""

    def reg(self, param: str) -> str:
        regs = GO_ARG_REGS if self.abi == "go" else ARG_REGS
        return regs[self.params.index(param)]

    def regs(self) -> dict[str, str]:
        regs = GO_ARG_REGS if self.abi == "go" else ARG_REGS
        return {p: regs[i] for i, p in enumerate(self.params)}


@dataclass(frozen=True)
class CalleeContract:
    """What is proven about a forwarding call's callee: its parameters and how it reports the count."""

    description: str
    params: tuple[str, ...]
    length: str
    ret_reg: str = "eax"


def fallback_plan(spec: FuncSpec, code: Code, reason: str) -> ProbePlan:
    first = code.insns[0]
    sites = [_site(code, first, "entry", spec.regs())]
    if spec.abi == "go":
        sites += [_site(code, r, "go_ret", {"ret": "rax"}) for r in code.rets()]
        meaning: ReturnMeaning = "function"
    else:
        sites.append(_site(code, first, "uretprobe", {"ret": spec.ret_reg}, sp_delta=8))
        meaning = "function"
    return ProbePlan(
        function=spec.name,
        func_offset=code.file_offset,
        sites=sites,
        fast=all(s.emulated for s in sites),
        reason="fallback to entry uprobe + " + ("RET probes" if spec.abi == "go" else "uretprobe") + ": " + reason,
        ret_meaning=meaning,
        length=spec.length,
    )


def plan_sysv(
    spec: FuncSpec,
    code: Code,
    resolve: Resolver,
    callee_code: Callable[[int], Code | None],
    contract: Callable[[EntryFinding], CalleeContract | None] | None = None,
) -> ProbePlan:
    """Plan for a C-ABI function (OpenSSL, BoringSSL, GnuTLS)."""
    if not code.insns:
        return fallback_plan(spec, code, "function could not be decoded")
    first = code.insns[0]
    if first.emulated:
        return ProbePlan(
            function=spec.name,
            func_offset=code.file_offset,
            sites=[
                _site(code, first, "entry", spec.regs()),
                _site(code, first, "uretprobe", {"ret": spec.ret_reg}, sp_delta=8),
            ],
            fast=True,
            reason=f"first instruction `{first.mnemonic} {first.op_str}` is emulated: entry uprobe and uretprobe "
            "both hook it (Recipe 1)",
            ret_meaning="function",
            length=spec.length,
        )
    needs = tuple(spec.reg(p) for p in spec.needs)
    early = find_early_site(code, spec.regs(), spec.needs)
    if early is not None:
        einsn, eregs = early
        skipped = code.insns[: code.insns.index(einsn)]
        moved = "" if eregs == {n: spec.reg(n) for n in spec.needs} else " (followed through register copies)"
        return ProbePlan(
            function=spec.name,
            func_offset=code.file_offset,
            sites=[
                _site(code, einsn, "entry", eregs),
                _site(code, einsn, "uretprobe", {"ret": spec.ret_reg}, sp_delta=8),
            ],
            fast=True,
            reason=f"`{einsn.mnemonic} {einsn.op_str}` at +{einsn.addr - code.start:#x} is the first emulated "
            f"instruction; before it only {', '.join(i.mnemonic for i in skipped)}, which neither branch nor "
            f"touch rsp: the arguments are in registers{moved} and the return address is still at (%rsp), so "
            "entry uprobe and uretprobe both hook it (Recipe 2: endbr64; push -> entry+4)",
            ret_meaning="function",
            length=spec.length,
        )
    needs = tuple(spec.reg(p) for p in spec.needs)
    ent = find_entry(code, needs, resolve, goal="call")
    if ent.site is None:
        multi = plan_io_exits(spec, code, resolve, callee_code)
        if isinstance(multi, ProbePlan):
            return multi
        return fallback_plan(
            spec, code, f"first instruction `{first.mnemonic}` is single-stepped; {ent.why_not}; per-path: {multi}"
        )
    site = ent.site
    assert site.target is not None
    callee_name = resolve(site.target) or hex(site.target)
    if not site.emulated:  # direct call/jmp are always emulated; keep the check for safety
        return fallback_plan(spec, code, f"forwarding {site.mnemonic} at {site.addr:#x} is not emulated")
    proof = "; ".join(ent.steps)
    if ent.kind == "tail":
        cu = _callee_uretprobe(site, resolve, callee_code)
        if cu is None:
            return fallback_plan(
                spec,
                code,
                f"tail jump at {site.addr:#x} to {callee_name}: no in-function return point and the callee's first "
                "instruction is not emulated (or the callee is not in this file)",
            )
        cc, cfirst = cu
        cstart = cc.start
        sites = [
            _site(code, site, "entry", spec.regs()),
            _site(cc, cfirst, "uretprobe", {"ret": spec.ret_reg}, sp_delta=8),
        ]
        return ProbePlan(
            function=spec.name,
            func_offset=code.file_offset,
            sites=sites,
            fast=True,
            reason=f"tail jump at +{site.addr - code.start:#x} to {callee_name} with {', '.join(needs)} intact "
            f"({proof or 'straight line'}); the callee returns straight to our caller, so a uretprobe on its "
            f"emulated `{cfirst.mnemonic} {cfirst.op_str}` (+{cfirst.addr - cstart:#x} into it) yields our return value"
            + (
                "; the PLT binds to this file's own definition unless another object interposes it"
                if callee_name.endswith("@plt")
                else ""
            ),
            ret_meaning="function",
            callee=callee_name,
            length=spec.length,
        )
    # A forwarding call: the return value seen after it is the callee's, so its contract must be known.
    con = contract(ent) if contract is not None else None
    if con is None:
        return fallback_plan(
            spec, code, f"forwarding call at {site.addr:#x} to {callee_name} has no proven contract for its result"
        )
    entry_regs = {p: ARG_REGS[i] for i, p in enumerate(con.params)}
    ret = find_return(code, site, resolve, callee_code)
    if ret.site is not None:
        rsite = _site(code, ret.site, "return", {"ret": con.ret_reg}, sp_delta=0)
        how = (
            f"`{ret.site.mnemonic}` at +{ret.site.addr - code.start:#x} is the first emulated instruction after "
            "the call, rax untouched and no jump lands in between"
        )
    elif ret.callee_uretprobe is not None:
        cc, cfirst = ret.callee_uretprobe
        cstart = cc.start
        rsite = _site(cc, cfirst, "uretprobe", {"ret": con.ret_reg}, sp_delta=0)
        how = (
            f"uretprobe on the callee, hooked on its emulated `{cfirst.mnemonic} {cfirst.op_str}` "
            f"at +{cfirst.addr - cstart:#x}"
        )
    else:
        return fallback_plan(spec, code, f"no provable return point after the call at {site.addr:#x}: {ret.why_not}")
    return ProbePlan(
        function=spec.name,
        func_offset=code.file_offset,
        sites=[_site(code, site, "entry", entry_regs), rsite],
        fast=True,
        reason=f"call at +{site.addr - code.start:#x} to {callee_name} receives {', '.join(needs)} intact "
        f"({proof or 'straight line'}); return: {how}",
        ret_meaning="callee",
        callee=f"{callee_name}: {con.description}",
        length=con.length,
    )


def plan_io_exits(
    spec: FuncSpec, code: Code, resolve: Resolver, callee_code: Callable[[int], Code | None]
) -> ProbePlan | str:
    """Entry probes on every I/O call/tail jump, returns through uretprobes on their callees."""
    exits, why = find_io_exits(code, spec.regs(), spec.needs, resolve, spec.ret_reg)
    if not exits:
        return why
    sites: list[ProbeSite] = []
    rets: dict[int, ProbeSite] = {}
    for ex in exits:
        cu = _callee_uretprobe(ex.site, resolve, callee_code)
        if cu is None:
            name = resolve(ex.callee) or hex(ex.callee)
            return f"the first instruction of {name} (called at {ex.site.addr:#x}) is not emulated"
        cc, cfirst = cu
        cstart = cc.start
        sites.append(_site(code, ex.site, "entry", dict(ex.regs)))
        # sp after the callee returns: call -> back at the call's rsp; tail jmp -> our caller's, +8.
        rsite = _site(cc, cfirst, "uretprobe", {"ret": ex.ret_reg}, sp_delta=8 if ex.tail else 0)
        have = rets.get(rsite.offset)
        if have is not None and have != rsite:
            return f"callee at {cstart:#x} is reached both by call and by tail jump"
        rets[rsite.offset] = rsite
    names = ", ".join(
        f"{e.site.mnemonic} at +{e.site.addr - code.start:#x} to {resolve(e.callee) or hex(e.callee)}" for e in exits
    )
    return ProbePlan(
        function=spec.name,
        func_offset=code.file_offset,
        sites=[*sites, *rets.values()],
        fast=all(x.emulated for x in sites) and all(x.emulated for x in rets.values()),
        reason=f"every path does its I/O through exactly one of: {names}; each is probed as an entry site "
        "(parameters followed through register copies) and returns the function's own value through a "
        "uretprobe on the callee hooked on an emulated instruction; pair entry and return by sp_delta",
        ret_meaning="function",
        length=spec.length,
    )


def _go_copy_candidate(code: Code, resolve: Resolver) -> tuple[list[ProbeSite], str]:
    """The cheaper read point PROBES.md asks to look for: Read copies the plaintext into b with one copy()
    (bytes.Reader.Read inlined), one emulated ``call runtime.memmove`` with dst=rax, src=rbx, n=rcx.

    Checked from the code: exactly one memmove call; its rax loaded, on the straight line before the call,
    from the stack slot where the entry spilled rbx (b.ptr), a slot written nowhere else. NOT proven: that
    it is the only way bytes reach b (that is Go source knowledge), hence a candidate, never a site.
    """
    memmove = ("runtime.memmove", "runtime.memmove.abi0")
    copies = [i for i in code.insns if i.kind == "call" and i.target is not None and resolve(i.target) in memmove]
    if len(copies) != 1:
        return [], ""
    call = copies[0]
    site = [_site(code, call, "entry", {"dst": "rax", "src": "rbx", "n": "rcx"})]
    first_call = next((i for i in code.insns if i.kind == "call"), call)
    spills = [
        i.op_str.split(",")[0].strip()
        for i in code.insns
        if i.addr < first_call.addr and i.mnemonic == "mov" and i.op_str.endswith(", rbx") and "[rsp + " in i.op_str
    ]
    idx = code.insns.index(call)
    load = None
    for prev in reversed(code.insns[max(0, idx - 16) : idx]):
        if prev.kind not in ("other", "jcc") or any(prev.addr < t <= call.addr for t in code.jump_targets):
            break
        if "rax" in prev.writes:
            load = prev
            break
    dst_ok = (
        load is not None
        and load.mnemonic == "mov"
        and len(spills) == 1
        and load.op_str == f"rax, {spills[0]}"
        and sum(1 for i in code.insns if i.op_str.startswith(spills[0] + ",")) == 1
    )
    what = "dst = b.ptr via its entry spill slot (checked)" if dst_ok else "dst = b.ptr NOT shown"
    return site, (
        f"candidate: the single runtime.memmove call at +{call.addr - code.start:#x} (src=rbx, n=rcx; {what}; "
        "that it is the only copy into b is Go source knowledge, unproven)"
    )


def plan_go(spec: FuncSpec, code: Code, resolve: Resolver) -> ProbePlan:
    """Plan for a Go ABIInternal method (crypto/tls.(*Conn).Read/Write)."""
    if not code.insns:
        return fallback_plan(spec, code, "function could not be decoded")
    needs = tuple(spec.reg(p) for p in spec.needs)
    ent = find_entry(code, needs, resolve, goal="first", clobbered_by_call=frozenset(GO_ARG_REGS))
    if ent.site is None:
        return fallback_plan(spec, code, ent.why_not)
    site = ent.site
    proof = "; ".join(ent.steps) or "straight line"
    entry = _site(code, site, "entry", spec.regs())
    if spec.direction == "write":
        return ProbePlan(
            function=spec.name,
            func_offset=code.file_offset,
            sites=[entry],
            fast=True,
            reason=f"`{site.mnemonic} {site.op_str}` at +{site.addr - code.start:#x} is the first emulated "
            f"instruction reached once per call with {', '.join(needs)} intact ({proof}); Write sends all of b "
            "or fails the connection, so the entry carries the data",
            ret_meaning="none",
            length=spec.length,
        )
    rets = code.rets()
    if not rets:
        return fallback_plan(spec, code, "no RET instruction found")
    sites = [entry] + [_site(code, r, "go_ret", {"ret": "rax"}) for r in rets]
    candidates, cand_note = _go_copy_candidate(code, resolve)
    return ProbePlan(
        function=spec.name,
        func_offset=code.file_offset,
        sites=sites,
        fast=all(s.emulated for s in sites),
        reason=f"entry `{site.mnemonic}` at +{site.addr - code.start:#x} is emulated ({proof}); "
        f"{len(rets)} RET site(s) are single-stepped (no uretprobe: it crashes Go programs)"
        + (f"; {cand_note}" if cand_note else ""),
        ret_meaning="function",
        candidates=candidates,
        length=spec.length,
    )
