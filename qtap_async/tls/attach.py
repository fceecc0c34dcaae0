"""Attach tls.bpf.o's uprobes to the TLS libraries that discovery found, following each probe plan.

Uprobes belong to a file (inode), not a process: one attachment covers every process mapping that file,
including processes started later (a short-lived curl is covered from its first instruction once the
system libssl is attached). System TLS libraries from the ld.so cache are attached at start-up; other
files (Go binaries, statically linked OpenSSL) when a process mapping them is found at start-up or after
its exec. A file's probes are detached when the last process known to use it exits, except for the
system libraries, which stay attached.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field

import msgspec

from qtap_async import ldcache
from qtap_async.bpf import abi
from qtap_async.bpf.link import Link
from qtap_async.bpf.loader import Capture
from qtap_async.bpf.object import BpfObject
from qtap_async.errors import BpfError, QtapError
from qtap_async.tls.model import Attachment, FileKey, ProbePlan, TlsLibrary


def attachments(lib: TlsLibrary) -> list[Attachment]:
    """Every distinct probe of ``lib``'s plans, ordered by offset. Attach each once per file."""
    merged: dict[tuple[int, bool], list[str]] = {}
    emulated: dict[tuple[int, bool], bool] = {}
    for plan in lib.plans:
        for site in plan.sites:
            key = (site.offset, site.role == "uretprobe")
            merged.setdefault(key, []).append(f"{plan.function}:{site.role}")
            emulated[key] = site.emulated
    return [
        Attachment(offset=off, retprobe=ret, roles=merged[(off, ret)], emulated=emulated[(off, ret)])
        for off, ret in sorted(merged)
    ]


log = logging.getLogger("qtap.tls")

COOKIE_LEN_PTR = 1 << 9
COOKIE_OBJ_DEREF = 1 << 10
_SOURCES = {"openssl": abi.Source.OPENSSL, "boringssl": abi.Source.OPENSSL, "gnutls": abi.Source.GNUTLS,
            "rustls": abi.Source.RUSTLS}
_SYSTEM_LIB_PREFIXES = ("libssl.so", "libgnutls.so")


class AttachStatus(msgspec.Struct, frozen=True):
    """What `qtap inspect` and the logs say about one file."""

    path: str
    kind: str
    version: str
    attached: bool
    probes: int
    fast_functions: list[str]
    slow_functions: list[str]
    error: str = ""


@dataclass
class _Attached:
    lib: TlsLibrary
    links: list[Link]
    pids: set[int] = field(default_factory=set)
    system: bool = False
    status: AttachStatus | None = None
    idle_since: float | None = None


def _direction(function: str) -> int:
    low = function.lower()
    if "write" in low or "send" in low:
        return int(abi.Dir.SEND)
    if "read" in low or "recv" in low:
        return int(abi.Dir.RECV)
    raise QtapError(f"cannot tell the direction of TLS function {function}")


def go_cookie(lib: TlsLibrary) -> int:
    o = lib.go_offsets
    if o is None:
        raise QtapError(f"{lib.path}: Go binary without *tls.Conn -> fd offsets (unsupported Go version)")
    parts = (o.conn_iface_data, o.tcpconn_fd, o.netfd_pfd, o.pfd_sysfd)
    if any(p < 0 or p > 0xFFFF for p in parts):
        raise QtapError(f"{lib.path}: Go struct offsets out of range: {parts}")
    return parts[0] | parts[1] << 16 | parts[2] << 32 | parts[3] << 48


def system_tls_libraries() -> list[str]:
    """Paths of the TLS libraries in the ld.so cache (what any new process would load)."""
    paths: list[str] = []
    for name, path in ldcache.loader_entries():
        if (name.startswith(_SYSTEM_LIB_PREFIXES) and os.path.exists(path)
                and os.path.realpath(path) not in {os.path.realpath(p) for p in paths}):
            paths.append(path)
    return paths


_ARG_REGS = ("rdi", "rsi", "rdx", "rcx", "r8", "r9")


def _reg_index(lib: TlsLibrary, plan: ProbePlan, reg: str) -> int:
    if reg not in _ARG_REGS:
        raise QtapError(f"{lib.path} {plan.function}: argument in {reg or 'no register'}, not an argument register")
    return _ARG_REGS.index(reg)


def attach_path(lib: TlsLibrary) -> str:
    """A path the kernel can open for this file now: the plain path when it is the same file (host mount
    namespace), else the /proc/PID/root/... path discovery opened it through (containers)."""
    try:
        st = os.stat(lib.path)
        if (st.st_dev, st.st_ino) == (lib.key.dev, lib.key.ino):
            return lib.path
    except OSError:
        pass
    return lib.open_path or lib.path


def _plan_sites(lib: TlsLibrary, plan: ProbePlan, groups: dict[tuple[str, bool], list[tuple[int, int]]],
                done: set[tuple[int, str]]) -> None:
    def add(prog: str, offset: int, cookie: int, retprobe: bool, key: str) -> None:
        if (offset, key) not in done:
            done.add((offset, key))
            groups.setdefault((prog, retprobe), []).append((offset, cookie))

    direction = _direction(plan.function)
    if lib.kind == "go":
        cookie = go_cookie(lib)
        for site in plan.sites:
            if site.role == "entry":
                prog = "uprobe_go_write_entry" if direction == abi.Dir.SEND else "uprobe_go_read_entry"
            elif site.role == "go_ret" and direction == abi.Dir.RECV:
                prog = "uprobe_go_read_ret"
            else:
                continue
            add(prog, site.offset, cookie, False, prog)
        return
    source = int(_SOURCES[lib.kind])
    for site in plan.sites:
        if site.role == "entry":
            regs = site.regs
            deref = "ssl_ptr" in regs  # the object is *reg (rustls' Reader)
            obj_reg = _reg_index(lib, plan, regs.get("ssl", regs.get("session", regs.get("ssl_ptr", ""))))
            buf_reg = _reg_index(lib, plan, regs.get("buf", regs.get("data", "")))
            cookie = source | direction << 8 | obj_reg << 12 | buf_reg << 16 | (COOKIE_OBJ_DEREF if deref else 0)
            if plan.length.startswith("*"):
                ptr_name = plan.length[1:].split()[0]
                cookie |= COOKIE_LEN_PTR | _reg_index(lib, plan, regs.get(ptr_name, "")) << 20
            add("uprobe_tls_entry", site.offset, cookie, False, f"entry{cookie}")
        elif site.role in ("return", "uretprobe"):
            if site.regs.get("ret", "rax") not in ("rax", "eax"):
                raise QtapError(f"{lib.path} {plan.function}: return value in {site.regs}, not rax")
            retprobe = site.role == "uretprobe"
            # rustls: io::Result<usize> in rax (0 = Ok) and rdx (bytes); C libraries: a count in rax.
            prog = "uprobe_rust_return" if lib.kind == "rustls" else "uprobe_tls_return"
            add(prog, site.offset, 0, retprobe, f"ret{retprobe}{prog}")


def probe_groups(lib: TlsLibrary) -> tuple[dict[tuple[str, bool], list[tuple[int, int]]], int]:
    """Every probe site of `lib`'s plans, grouped per (program, retprobe) as (offset, cookie) pairs, and how
    many distinct sites there are. TlsProbes attaches these; the benchmarks' C reference consumer attaches the
    same list, so both pay for the same probes."""
    done: set[tuple[int, str]] = set()
    groups: dict[tuple[str, bool], list[tuple[int, int]]] = {}
    if not lib.plans:
        raise QtapError(f"{lib.path}: no probe plan for its TLS functions")
    for plan in lib.plans:
        _plan_sites(lib, plan, groups, done)
    return groups, len(done)


class TlsProbes:
    """Owns tls.bpf.o (loaded against the capture's shared maps) and the links of every attached file."""

    def __init__(self, capture: Capture, hold_parent_tgid: int = 0, multi: bool = True) -> None:
        self.capture = capture
        try:
            self.obj = self._load(hold_parent_tgid, multi)
        except BpfError as exc:
            if not multi:
                raise
            log.info("TLS: this kernel refuses uprobe_multi links (%s); classic uprobes", os.strerror(exc.errno))
            self.obj = self._load(hold_parent_tgid, False)
        #: "multi" (one uprobe_multi link per program and file) or "classic" (one perf-event link per probe)
        self.link_mode = "multi" if self.obj.uprobe_multi else "classic"
        log.info("TLS: uprobes attach as %s links", self.link_mode)
        self.files: dict[FileKey, _Attached] = {}
        self.failed: dict[FileKey, AttachStatus] = {}

    def _load(self, hold_parent_tgid: int, multi: bool) -> BpfObject:
        """tls.bpf.o loaded against the capture's maps; with `multi`, for uprobe_multi links (BpfError where
        the kernel refuses them: before 6.6)."""
        obj = BpfObject.open(self.capture.directory / "tls.bpf.o")
        try:
            self.capture.share_maps(obj)
            self.capture.configure(obj)
            if hold_parent_tgid:
                obj.set_rodata(hold_parent_tgid=hold_parent_tgid)
            if multi:
                obj.use_uprobe_multi()
            obj.load()
            if multi:
                # Some kernels load such a program and refuse only its link: try one where it never fires
                # (offset 0 of the object file, which nobody runs).
                obj.program("uprobe_tls_entry").attach_uprobe_multi(str(obj.path), [0], [0])
                obj.detach_all()
        except BaseException:
            obj.close()
            raise
        return obj

    # -- attaching -------------------------------------------------------------------------------
    def _link_groups(self, path: str, groups: dict[tuple[str, bool], list[tuple[int, int]]]) -> list[Link]:
        """Links for every (program, retprobe) group of (offset, cookie) sites: one per group as multi
        links, else one per site."""
        links: list[Link] = []
        try:
            for (prog, retprobe), sites in groups.items():
                p = self.obj.program(prog)
                if self.obj.uprobe_multi:
                    links.append(p.attach_uprobe_multi(path, [o for o, _ in sites], [c for _, c in sites],
                                                       retprobe=retprobe))
                else:
                    links.extend(p.attach_uprobe(path, o, retprobe=retprobe, cookie=c) for o, c in sites)
        except BaseException:
            self.obj.detach(links)
            raise
        return links

    def attach(self, lib: TlsLibrary, pid: int | None = None, system: bool = False) -> AttachStatus:
        """Attach every plan of `lib` (once per file); remember `pid` as a user of it."""
        have = self.files.get(lib.key)
        if have is not None:
            if pid is not None:
                have.pids.add(pid)
                have.idle_since = None
            assert have.status is not None
            return have.status
        if lib.key in self.failed:
            return self.failed[lib.key]
        path = attach_path(lib)
        links: list[Link] = []
        sites = 0
        fast = [p.function for p in lib.plans if p.fast]
        slow = [p.function for p in lib.plans if not p.fast]
        try:
            groups, sites = probe_groups(lib)
            links = self._link_groups(path, groups)
        except QtapError as exc:
            status = AttachStatus(lib.path, lib.kind, lib.version, False, 0, fast, slow, str(exc).splitlines()[0])
            self.failed[lib.key] = status
            log.warning("TLS: not attached to %s: %s", lib.path, exc)
            return status
        status = AttachStatus(lib.path, lib.kind, lib.version, True, sites, fast, slow)
        entry = _Attached(lib, links, {pid} if pid is not None else set(), system, status)
        self.files[lib.key] = entry
        log.info("TLS: attached %d probes to %s (%s %s; fast: %s; slow: %s)", sites, lib.path, lib.kind,
                 lib.version, ",".join(fast) or "-", ",".join(slow) or "-")
        return status

    def process_exited(self, pid: int, now: float) -> None:
        for entry in self.files.values():
            if pid in entry.pids:
                entry.pids.discard(pid)
                if not entry.pids:
                    entry.idle_since = now

    def detach_unused(self, now: float, grace_s: float, keep: int = 0) -> int:
        """Detach files no process has used for `grace_s`, longest idle first, until at most `keep` files stay
        attached (keep=0: every such file). A probe on a file nobody runs costs nothing, and it covers the next
        process from its first instruction, so the manager keeps up to MAX_ATTACHED_FILES."""
        idle = sorted(
            (e.idle_since, key) for key, e in self.files.items()
            if not e.system and not e.pids and e.idle_since is not None and now - e.idle_since >= grace_s
        )
        n = 0
        for _since, key in idle:
            if keep and len(self.files) <= keep:
                break
            entry = self.files.pop(key)
            self.obj.detach(entry.links)
            n += 1
            log.info("TLS: detached from %s (idle, %d files attached)", entry.lib.path, len(self.files))
        return n

    def statuses(self) -> list[AttachStatus]:
        out = [e.status for e in self.files.values() if e.status is not None]
        return out + list(self.failed.values())

    def detach_links(self) -> None:
        """Detach every uprobe (the object stays loaded; close() frees it)."""
        self.obj.detach_all()

    def close(self) -> None:
        self.files.clear()
        self.obj.close()  # detaches every link it made

