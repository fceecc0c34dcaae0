"""BPF objects: open a compiled .bpf.o, set its settings, share maps, load, attach.

    with BpfObject.open(path) as obj:
        obj.set_rodata(self_tgid=os.getpid())
        obj.load()
        obj.attach_all()

All state transitions are checked in Python, so a misuse raises instead of handing libbpf a freed pointer.
"""

from __future__ import annotations

import ctypes
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Self

from qtap_async.bpf._libbpf import (
    BTF_KIND_DATASEC,
    BtfVarSecinfo,
    UprobeOpts,
    check_int,
    check_ptr,
    libbpf,
)
from qtap_async.bpf.link import FdLink, Link, close_links
from qtap_async.bpf.uprobe_multi import BPF_TRACE_UPROBE_MULTI, create_link
from qtap_async.errors import AttachError, BpfError, BpfLoadError

_INT_FORMATS = {1: "<B", 2: "<H", 4: "<I", 8: "<Q"}


@dataclass
class BpfMap:
    """A map of an object; `fd` is valid after load."""

    obj: BpfObject
    ptr: int
    name: str

    @property
    def fd(self) -> int:
        self.obj._require_loaded(f"map {self.name}")
        return check_int(libbpf().bpf_map__fd(self.ptr), f"map {self.name}", "no fd")

    @property
    def max_entries(self) -> int:
        return int(libbpf().bpf_map__max_entries(self.ptr))

    @property
    def key_size(self) -> int:
        return int(libbpf().bpf_map__key_size(self.ptr))

    @property
    def value_size(self) -> int:
        return int(libbpf().bpf_map__value_size(self.ptr))

    @property
    def type(self) -> int:
        return int(libbpf().bpf_map__type(self.ptr))

    def set_max_entries(self, n: int) -> None:
        self.obj._require_opened(f"map {self.name}")
        check_int(libbpf().bpf_map__set_max_entries(self.ptr, n), f"map {self.name}", f"max_entries={n}")

    def reuse_fd(self, fd: int) -> None:
        """Make this object use an existing map (shared between objects) instead of creating one."""
        self.obj._require_opened(f"map {self.name}")
        check_int(libbpf().bpf_map__reuse_fd(self.ptr, fd), f"map {self.name}", "reuse_fd")

    # Syscall-level access (after load).
    def lookup(self, key: bytes) -> bytes | None:
        value = ctypes.create_string_buffer(self.value_size * self._percpu_factor())
        ret = libbpf().bpf_map_lookup_elem(self.fd, key, value)
        if ret < 0:
            if ctypes.get_errno() == 2 or -ret == 2:  # ENOENT
                return None
            raise BpfError(f"map {self.name}", -ret, "lookup")
        return value.raw

    def update(self, key: bytes, value: bytes, flags: int = 0) -> None:
        check_int(libbpf().bpf_map_update_elem(self.fd, key, value, flags), f"map {self.name}", "update")

    def delete(self, key: bytes) -> bool:
        ret = libbpf().bpf_map_delete_elem(self.fd, key)
        if ret < 0 and -ret != 2:
            raise BpfError(f"map {self.name}", -ret, "delete")
        return bool(ret == 0)

    def keys(self) -> list[bytes]:
        out: list[bytes] = []
        size = self.key_size
        nxt = ctypes.create_string_buffer(size)
        prev: bytes | None = None
        while True:
            ret = libbpf().bpf_map_get_next_key(self.fd, prev, nxt)
            if ret < 0:
                break
            prev = nxt.raw
            out.append(prev)
        return out

    def _percpu_factor(self) -> int:
        # Per-CPU maps return one (8-byte aligned) value per possible CPU.
        if self.type in (5, 6, 10):  # PERCPU_HASH, PERCPU_ARRAY, LRU_PERCPU_HASH
            return possible_cpus()
        return 1

    def percpu_u64(self, index: int) -> list[int]:
        """The per-CPU u64 values at `index` of a per-CPU array of u64."""
        raw = self.lookup(struct.pack("<I", index))
        if raw is None:
            return []
        return list(struct.unpack(f"<{len(raw) // 8}Q", raw))


# struct bpf_prog_info (uapi linux/bpf.h): its size and where recursion_misses is (checked against the C
# compiler in tests/bpf/test_abi.py).
_PROG_INFO_SIZE = 232
_PROG_INFO_RECURSION_MISSES = 208


@dataclass
class BpfProgram:
    obj: BpfObject
    ptr: int
    name: str
    section: str

    def recursion_misses(self) -> int:
        """Times the kernel skipped this program because it (or, for classic tracepoints and kprobes, any
        such program) was already running on that CPU: events the program never saw."""
        self.obj._require_loaded(f"program {self.name}")
        info = ctypes.create_string_buffer(_PROG_INFO_SIZE)
        size = ctypes.c_uint32(_PROG_INFO_SIZE)
        fd = libbpf().bpf_program__fd(self.ptr)
        check_int(libbpf().bpf_obj_get_info_by_fd(fd, info, ctypes.byref(size)), f"program {self.name}", "info")
        if size.value < _PROG_INFO_RECURSION_MISSES + 8:  # a kernel older than the field
            return 0
        return int.from_bytes(info.raw[_PROG_INFO_RECURSION_MISSES : _PROG_INFO_RECURSION_MISSES + 8], "little")

    @property
    def fd(self) -> int:
        self.obj._require_loaded(f"program {self.name}")
        return int(libbpf().bpf_program__fd(self.ptr))

    def set_autoload(self, enabled: bool) -> None:
        self.obj._require_opened(f"program {self.name}")
        check_int(libbpf().bpf_program__set_autoload(self.ptr, enabled), f"program {self.name}", "autoload")

    @property
    def autoload(self) -> bool:
        return bool(libbpf().bpf_program__autoload(self.ptr))

    def retarget(self, prog_type: int, attach_type: int, target: str) -> None:
        """Before load: make this program another program type / attach type on another kernel function
        (libbpf resolves ``target`` in the kernel's BTF; for BPF_LSM_MAC it is the hook name without the
        ``bpf_lsm_`` prefix). ``qtap inspect`` probes fexit and LSM with the fentry probe's code this way."""
        self.obj._require_opened(f"program {self.name}")
        lib = libbpf()
        what = f"program {self.name}"
        check_int(lib.bpf_program__set_type(self.ptr, prog_type), what, f"set type {prog_type}")
        check_int(lib.bpf_program__set_expected_attach_type(self.ptr, attach_type), what,
                  f"set attach type {attach_type}")
        check_int(lib.bpf_program__set_attach_target(self.ptr, 0, target.encode()), what, f"set target {target}")

    def attach(self) -> Link:
        """Attach by section name (tracepoint/..., raw_tracepoint/..., tp_btf/...)."""
        self.obj._require_loaded(f"program {self.name}")
        with libbpf().capture_log() as log:
            ptr = libbpf().bpf_program__attach(self.ptr)
        check_ptr(ptr, f"program {self.name}", f"attach to {self.section}", "\n".join(log), AttachError)
        link = Link(ptr, f"{self.name} -> {self.section}")
        self.obj._links.append(link)
        return link

    def attach_uprobe(
        self, binary: str, offset: int, *, pid: int = -1, retprobe: bool = False, cookie: int = 0
    ) -> Link:
        """Attach at a file offset of `binary` (all processes mapping it when pid == -1); `cookie` is what
        the program reads with bpf_get_attach_cookie()."""
        self.obj._require_loaded(f"program {self.name}")
        if self.obj.uprobe_multi:  # loaded for multi links only: one offset is a multi link of one
            return self.attach_uprobe_multi(binary, [offset], [cookie], pid=pid, retprobe=retprobe)
        opts = UprobeOpts(sz=ctypes.sizeof(UprobeOpts), bpf_cookie=cookie, retprobe=retprobe)
        with libbpf().capture_log() as log:
            ptr = libbpf().bpf_program__attach_uprobe_opts(self.ptr, pid, binary.encode(), offset, ctypes.byref(opts))
        kind = "uretprobe" if retprobe else "uprobe"
        check_ptr(ptr, f"program {self.name}", f"{kind} {binary}+{offset:#x}", "\n".join(log), AttachError)
        link = Link(ptr, f"{self.name} -> {kind}:{binary}+{offset:#x}")
        self.obj._links.append(link)
        return link

    def attach_uprobe_multi(self, binary: str, offsets: list[int], cookies: list[int], *, pid: int = -1,
                            retprobe: bool = False) -> Link:
        """One link at every offset of `binary` (cookies[i] for offsets[i]); needs `use_uprobe_multi()`."""
        self.obj._require_loaded(f"program {self.name}")
        what = f"program {self.name}"
        if not self.obj.uprobe_multi:
            raise AttachError(what, 22, "the object was not loaded for uprobe_multi links")
        fd = create_link(self.fd, binary, offsets, cookies, retprobe=retprobe,
                         pid=pid, what=what)
        kind = "uretprobe" if retprobe else "uprobe"
        link = FdLink(fd, f"{self.name} -> {kind}.multi:{binary} ({len(offsets)} offsets)")
        self.obj._links.append(link)
        return link


_possible_cpus: int | None = None


def possible_cpus() -> int:
    """Number of possible CPUs (what per-CPU maps are sized by), from /sys."""
    global _possible_cpus
    if _possible_cpus is None:
        text = Path("/sys/devices/system/cpu/possible").read_text().strip()
        n = 0
        for part in text.split(","):
            lo, _, hi = part.partition("-")
            n += (int(hi) if hi else int(lo)) - int(lo) + 1
        _possible_cpus = n
    return _possible_cpus


class BpfObject:
    """One .bpf.o: opened, optionally configured, loaded, and closed (detaching its links)."""

    def __init__(self, ptr: int, path: Path) -> None:
        self._ptr: int | None = ptr
        self.path = path
        self.loaded = False
        self.uprobe_multi = False  # uprobe programs loaded for uprobe_multi links (use_uprobe_multi)
        self._links: list[Link] = []
        lib = libbpf()
        self.maps: dict[str, BpfMap] = {}
        m = lib.bpf_object__next_map(ptr, None)
        while m:
            name = lib.bpf_map__name(m).decode()
            self.maps[name] = BpfMap(self, m, name)
            m = lib.bpf_object__next_map(ptr, m)
        self.programs: dict[str, BpfProgram] = {}
        p = lib.bpf_object__next_program(ptr, None)
        while p:
            name = lib.bpf_program__name(p).decode()
            self.programs[name] = BpfProgram(self, p, name, lib.bpf_program__section_name(p).decode())
            p = lib.bpf_object__next_program(ptr, p)

    @classmethod
    def open(cls, path: str | os.PathLike[str]) -> Self:
        p = Path(path)
        if not p.is_file():
            raise BpfError(f"object {p}", 2, "file not found")
        lib = libbpf()
        with lib.capture_log() as log:
            ptr = lib.bpf_object__open_file(str(p).encode(), None)
        check_ptr(ptr, f"object {p.name}", "open (not a valid BPF ELF object?)", "\n".join(log), BpfLoadError)
        return cls(ptr, p)

    @property
    def name(self) -> str:
        return self.path.name

    def _require_opened(self, what: str) -> int:
        if self._ptr is None:
            raise BpfError(f"{what} of {self.name}", 9, "object is closed")  # EBADF
        if self.loaded:
            raise BpfError(f"{what} of {self.name}", 16, "object is already loaded")  # EBUSY
        return self._ptr

    def _require_loaded(self, what: str) -> int:
        if self._ptr is None:
            raise BpfError(f"{what} of {self.name}", 9, "object is closed")
        if not self.loaded:
            raise BpfError(f"{what} of {self.name}", 22, "object is not loaded yet")
        return self._ptr

    def map(self, name: str) -> BpfMap:
        try:
            return self.maps[name]
        except KeyError:
            raise BpfError(f"map {name} of {self.name}", 2, "no such map") from None

    def program(self, name: str) -> BpfProgram:
        try:
            return self.programs[name]
        except KeyError:
            raise BpfError(f"program {name} of {self.name}", 2, "no such program") from None

    def rodata_vars(self) -> dict[str, tuple[int, int]]:
        """Settings (`const volatile` globals) of the object: name -> (offset, size) in .rodata."""
        ptr = self._ptr
        if ptr is None:
            raise BpfError(f"object {self.name}", 9, "object is closed")
        lib = libbpf()
        btf = lib.bpf_object__btf(ptr)
        if not btf:
            return {}
        sec_id = lib.btf__find_by_name_kind(btf, b".rodata", BTF_KIND_DATASEC)
        if sec_id < 0:
            return {}
        sec = lib.btf__type_by_id(btf, sec_id)
        vlen = sec.contents.info & 0xFFFF
        infos = ctypes.cast(
            ctypes.addressof(sec.contents) + ctypes.sizeof(sec.contents), ctypes.POINTER(BtfVarSecinfo)
        )
        out: dict[str, tuple[int, int]] = {}
        for i in range(vlen):
            info = infos[i]
            var = lib.btf__type_by_id(btf, info.type)
            name = lib.btf__name_by_offset(btf, var.contents.name_off).decode()
            out[name] = (int(info.offset), int(info.size))
        return out

    def set_rodata(self, **values: int) -> None:
        """Write integer settings into .rodata before load; unknown names are an error."""
        self._require_opened("rodata")
        variables = self.rodata_vars()
        rodata = next((m for n, m in self.maps.items() if n.endswith(".rodata")), None)
        if rodata is None:
            raise BpfError(f"object {self.name}", 2, "has no .rodata section (no settings)")
        size = ctypes.c_size_t()
        base = libbpf().bpf_map__initial_value(rodata.ptr, ctypes.byref(size))
        check_ptr(base, f"map {rodata.name}", "initial value")
        for name, value in values.items():
            if name not in variables:
                raise BpfError(f"setting {name} of {self.name}", 2, f"unknown; known: {sorted(variables)}")
            off, width = variables[name]
            if off + width > size.value or width not in _INT_FORMATS:
                raise BpfError(f"setting {name} of {self.name}", 22, f"unsupported size {width}")
            packed = struct.pack(_INT_FORMATS[width], value)
            ctypes.memmove(base + off, packed, width)

    def use_uprobe_multi(self) -> None:
        """Before load: make every uprobe program take uprobe_multi links (Linux >= 6.6), which attach and
        detach many offsets at once; load() then fails on an older kernel (reopen and load without)."""
        self._require_opened("uprobe_multi")
        lib = libbpf()
        for prog in self.programs.values():
            if prog.section.startswith(("uprobe", "uretprobe")):
                check_int(lib.bpf_program__set_expected_attach_type(prog.ptr, BPF_TRACE_UPROBE_MULTI),
                          f"program {prog.name}", "set attach type uprobe_multi")
        self.uprobe_multi = True

    def load(self) -> None:
        ptr = self._require_opened("load")
        lib = libbpf()
        with lib.capture_log() as log:
            ret = lib.bpf_object__load(ptr)
        if ret < 0:
            err = -ret
            hint = _eperm_hint() if err == 1 else ""
            raise BpfLoadError(f"object {self.name}", err, hint or "load failed", _tail("\n".join(log)))
        self.loaded = True

    def attach_all(self) -> list[Link]:
        """Attach every autoloaded program by its section (tracepoints); uprobes are attached explicitly."""
        links = []
        for prog in self.programs.values():
            if prog.autoload and not prog.section.startswith(("uprobe", "uretprobe")):
                links.append(prog.attach())
        return links

    def detach_all(self) -> None:
        self.detach(list(self._links))

    def detach(self, links: list[Link]) -> None:
        """Close these links of this object and forget them (an agent that attaches and detaches files for
        days must not keep every closed link)."""
        close_links(links)
        gone = {id(link) for link in links}
        self._links = [link for link in self._links if id(link) not in gone]

    @property
    def links(self) -> list[Link]:
        return list(self._links)

    def close(self) -> None:
        self.detach_all()
        ptr, self._ptr = self._ptr, None
        if ptr:
            libbpf().bpf_object__close(ptr)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _eperm_hint() -> str:
    """Why a load got EPERM, from the capabilities this process holds (not its uid): without them that is
    the reason; with them the kernel itself refuses the program (lockdown, a security module's policy or
    its configuration), and saying "needs root" would send the user the wrong way."""
    from qtap_async.capabilities import report

    caps = report()
    if not caps.bpf:
        missing = " and ".join(c for c in ("CAP_BPF", "CAP_PERFMON") if not caps.held[c])
        return f"missing {missing} (or CAP_SYS_ADMIN)"
    return ("refused by the kernel although CAP_BPF and CAP_PERFMON are held: this kernel does not allow this "
            "program type (lockdown, a security module's policy or the kernel configuration)")


def _tail(log: str, limit: int = 12000) -> str:
    # Verifier logs can be megabytes; the end says why it failed.
    return log if len(log) <= limit else "...\n" + log[-limit:]
