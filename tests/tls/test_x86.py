"""The emulated/single-stepped classification must match the kernel's rules byte for byte."""

from __future__ import annotations

import pytest

from qtap_async.tls.x86 import classify_emulated, decode


@pytest.mark.parametrize(
    ("hexbytes", "emulated", "what"),
    [
        ("55", True, "push rbp"),
        ("4154", True, "push r12"),
        ("4155", True, "push r13"),
        ("90", True, "nop"),
        ("e800000000", True, "call rel32"),
        ("e900000000", True, "jmp rel32"),
        ("eb00", True, "jmp rel8"),
        ("7e03", True, "jle rel8"),
        ("0f8e00000000", True, "jle rel32"),
        ("f2e900000000", True, "bnd jmp"),
        ("4883ec18", False, "sub rsp, 0x18"),
        ("c3", False, "ret"),
        ("5d", False, "pop rbp"),
        ("f30f1efa", False, "endbr64"),
        ("4889e5", False, "mov rbp, rsp"),
        ("0f1f00", False, "nopl (multi-byte nop is not emulated)"),
        ("6690", False, "xchg ax, ax (0x66 prefix)"),
        ("66e800000000", False, "callw (0x66 prefix)"),
        ("ff5038", False, "call *0x38(%rax)"),
        ("ffe0", False, "jmp *%rax"),
        ("4850", False, "push with REX.W"),
        ("493b6610", False, "cmp rsp, [r14+0x10] (Go stack check)"),
    ],
)
def test_classify(hexbytes: str, emulated: bool, what: str) -> None:
    assert classify_emulated(bytes.fromhex(hexbytes)) is emulated, what


def test_decode_kinds_writes_and_widening() -> None:
    code = bytes.fromhex("4863d24889e1e80b00000085c07e03ff5038c3")
    insns = list(decode(code, 0x1000))
    assert [i.kind for i in insns] == ["other", "other", "call", "other", "jcc", "icall", "ret"]
    assert insns[0].widens_self() == "rdx"  # movslq %edx,%rdx keeps the int argument's value
    assert insns[1].writes == frozenset({"rcx"}) and insns[1].widens_self() is None
    assert insns[2].addr == 0x1006 and insns[2].target == 0x1006 + 5 + 0xB
    assert insns[4].target == insns[4].next + 3
    assert "rax" not in insns[3].writes  # test writes flags only
    assert [i.emulated for i in insns] == [False, False, True, False, True, False, False]


from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from qtap_async.tls.model import ProbePlan  # noqa: E402
from qtap_async.tls.probe_points import Code, FuncSpec, plan_go, plan_sysv  # noqa: E402

ALLOWED = {"push", "call", "jmp", "nop", "pause", "bnd jmp"}


@given(st.binary(min_size=1, max_size=15))
@settings(max_examples=400, deadline=None)
def test_emulated_only_for_allowed_mnemonics(raw: bytes) -> None:
    insns = list(decode(raw, 0x1000))
    if not insns:
        return
    i = insns[0]
    if i.emulated:
        m = i.mnemonic.removeprefix("bnd ")
        assert m in ALLOWED or (m.startswith("j") and i.kind == "jcc"), (raw.hex(), i)


SPEC = FuncSpec("f", ("a", "b", "c"), ("a", "b", "c"), "read", "ret if ret > 0")
GSPEC = FuncSpec("g", ("c", "buf", "len", "cap"), ("c", "buf", "len"), "read", "ret if ret > 0", abi="go")


def _check(plan: ProbePlan) -> None:
    assert plan.sites
    if plan.fast:
        assert all(s.emulated for s in plan.sites)
    else:
        assert plan.reason


@given(st.binary(min_size=1, max_size=96))
@settings(max_examples=300, deadline=None)
def test_analysis_never_raises_on_arbitrary_code(code: bytes) -> None:
    c = Code(0x40000, code, 0x1000)
    if not c.insns:
        return
    _check(plan_sysv(SPEC, c, lambda a: None, lambda a: None, None))
    _check(plan_go(GSPEC, c, lambda a: None))
