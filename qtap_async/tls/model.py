"""Data types of TLS library discovery and probe-point analysis.

Everything here is a frozen msgspec Struct so `qtap inspect` can encode it to JSON as is and the attach
glue can hash and compare plans.
"""

from __future__ import annotations

from typing import Literal

import msgspec

LibraryKind = Literal["openssl", "boringssl", "gnutls", "go", "rustls"]
"""`openssl` covers shared libssl (1.1, 3.x) and OpenSSL linked statically into an executable."""

SiteRole = Literal["entry", "return", "uretprobe", "go_ret"]
"""Where a probe site sits and what it may read.

- ``entry``: a plain uprobe; the registers named in ``ProbeSite.regs`` hold the arguments.
- ``return``: a plain uprobe after the I/O call; ``regs["ret"]`` holds that call's return value.
  It is reached only by paths that passed the plan's ``entry`` site first, once per entry hit.
- ``uretprobe``: a kernel return probe attached at ``ProbeSite.offset`` (a function's first instruction).
  Its cost follows the instruction there (``mnemonic``/``emulated``). ``regs["ret"]`` is the return value.
- ``go_ret``: a plain uprobe on one RET instruction of a Go function (uretprobes crash Go programs);
  a plan lists one such site per RET.
"""

ReturnMeaning = Literal["function", "callee", "none"]
"""What ``regs["ret"]`` at the plan's return sites is: the probed function's own return value, the
return value of the internal call the entry site sits on (see ``ProbePlan.callee``), or nothing (no
return site: the data is complete at entry)."""


class FileKey(msgspec.Struct, frozen=True, gc=False, order=True):
    """Identity of a mapped file: the attach unit is the file, not the process."""

    dev: int
    ino: int


class ProbeSite(msgspec.Struct, frozen=True, gc=False):
    """One uprobe location in a file."""

    offset: int
    """File offset to attach the uprobe at (what perf_event_open/libbpf take), not a virtual address."""
    vaddr: int
    """Virtual address in the ELF (link-time), for reading disassembly."""
    mnemonic: str
    op_str: str
    emulated: bool
    """True when the kernel emulates the instruction (cheap, ~0.45 us); False: single-stepped (~14 us)."""
    role: SiteRole
    regs: dict[str, str]
    """Argument name -> register holding it at this site (e.g. {"buf": "rsi"}); ``ret`` for return values
    (``eax`` when only the low 32 bits carry it, e.g. an int the function then sign-extends)."""
    sp_delta: int | None = None
    """Return-side sites only: rsp when this site fires (for a uretprobe: after the return) minus rsp when
    the paired entry site fired. Pair by it: a return whose rsp differs belongs to another activation
    (recursion, another caller of a shared callee). None when it cannot be stated (Go moves stacks)."""


class ProbePlan(msgspec.Struct, frozen=True, gc=False):
    """How to capture one TLS function's plaintext cheaply, with the proof summarised in ``reason``."""

    function: str
    func_offset: int
    """File offset of the function's first instruction."""
    sites: list[ProbeSite]
    fast: bool
    """True when every site of the plan is an emulated instruction (or a uretprobe hooked on one)."""
    reason: str
    ret_meaning: ReturnMeaning
    callee: str = ""
    """When ``ret_meaning == "callee"``: the internal function the entry site calls and its contract."""
    candidates: list[ProbeSite] = []
    """Cheaper sites the analysis found but could NOT prove (e.g. Go Read's plaintext memmove). Never part of
    ``sites``; listed so a byte-exact capture test can validate them before anyone uses them."""
    length: str = ""
    """How many plaintext bytes the call moved, in terms of ``regs`` names, e.g. ``ret if ret > 0`` or
    ``*processed_ptr if ret > 0`` (read through the pointer saved at the entry site)."""


class GoConnOffsets(msgspec.Struct, frozen=True, gc=False):
    """Byte offsets to walk from a *tls.Conn to its socket fd.

    fd = *(int64 *)(*(*(conn + conn_iface_data) + tcpconn_fd) + netfd_pfd + pfd_sysfd), where
    ``conn_iface_data`` is the offset of the net.Conn interface's data word inside tls.Conn.
    """

    tls_conn_conn: int
    """Offset of the ``conn net.Conn`` field in crypto/tls.Conn (an interface: itab word, data word)."""
    conn_iface_data: int
    """Offset of the interface's data pointer (a *net.TCPConn for TCP) from the start of tls.Conn."""
    tcpconn_fd: int
    """Offset of ``fd *netFD`` in net.TCPConn (net.TCPConn embeds net.conn, whose only field is fd)."""
    netfd_pfd: int
    """Offset of ``pfd poll.FD`` in net.netFD."""
    pfd_sysfd: int
    """Offset of ``Sysfd int`` in internal/poll.FD."""
    source: Literal["dwarf", "table"]


class TlsFunction(msgspec.Struct, frozen=True, gc=False):
    """One TLS read/write function found in a file."""

    name: str
    vaddr: int
    offset: int
    size: int


class TlsLibrary(msgspec.Struct, frozen=True, gc=False):
    """A file that carries a TLS implementation we can probe, and how."""

    key: FileKey
    path: str
    """Path as the first process seen mapping it names it (inside that process's mount namespace)."""
    kind: LibraryKind
    version: str
    """Library version when it could be read (``3.0.19``, ``go1.26.8``...), else empty."""
    linkage: Literal["shared", "static"]
    functions: list[TlsFunction]
    plans: list[ProbePlan]
    open_path: str = ""
    """Host-side path the file was opened through (``/proc/PID/root/...`` or ``/proc/PID/map_files/...``);
    valid while that process lives. The attach glue can use it to reach files inside containers."""
    pids: list[int] = []
    """Processes seen mapping the file in the scan that produced this value."""
    go_abi: Literal["register", "stack", ""] = ""
    go_offsets: GoConnOffsets | None = None
    stripped: bool = False
    notes: list[str] = []


class ScanProblem(msgspec.Struct, frozen=True, gc=False):
    """Something a scan could not do: reported, never raised."""

    pid: int
    path: str
    error: str


class Attachment(msgspec.Struct, frozen=True, gc=False):
    """One probe to attach: sites of all plans of a file, deduplicated by (offset, kind)."""

    offset: int
    retprobe: bool
    """True: attach as a uretprobe (kernel return probe) at ``offset``; False: a plain uprobe."""
    roles: list[str]
    """``function:role`` of every plan site that shares this probe, e.g. ["SSL_read:uretprobe", ...]."""
    emulated: bool
