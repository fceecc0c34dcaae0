"""`qtap inspect`: everything a user needs to know, on one screen, about whether capture works here."""

from __future__ import annotations

import msgspec

from qtap_async.bpf import socket_path
from qtap_async.bpf.features import KernelFeatures, detect, explain
from qtap_async.bpf.loader import objects_dir
from qtap_async.capabilities import CapabilityReport
from qtap_async.capabilities import report as capability_report
from qtap_async.errors import QtapError
from qtap_async.tls.model import TlsLibrary


class ObjectInfo(msgspec.Struct, frozen=True):
    name: str
    programs: list[str]
    maps: list[str]
    error: str = ""


class SocketPath(msgspec.Struct, frozen=True):
    """Which programs the agent would capture socket I/O with here (qtap_async/bpf/socket_path.py)."""
    path: str  # "sock" or "syscalls"; "" when the setting cannot be met (then `reason` says why)
    reason: str
    programs: str = ""
    not_covered: str = socket_path.NOT_COVERED


def socket_path_report(f: KernelFeatures, setting: str | None = None) -> SocketPath:
    probe = next((h for h in f.hooks if h.hook == "sock_length"), None)
    works = probe is not None and probe.loads and probe.attaches is not False
    try:
        path, why = socket_path.effective(setting, works, probe.error if probe else "not probed")
    except QtapError as exc:
        return SocketPath("", str(exc))
    return SocketPath(path, why, socket_path.describe(path))


class InspectReport(msgspec.Struct, frozen=True):
    features: KernelFeatures
    objects: list[ObjectInfo]
    tls: list[dict[str, object]]
    capture_possible: bool
    reasons: list[str]
    capabilities: CapabilityReport | None = None
    tls_cache: dict[str, object] = {}
    """The agent's on-disk TLS analysis cache: its files stay probed even while no process runs them."""
    jvms: list[dict[str, object]] = []
    """HotSpot JVMs and the state of qtap's Java agent in each (qtap_async/tls/java_inspect.py)."""
    socket_path: SocketPath | None = None
    allocator: str = ""
    """What `qtap run` would allocate Python objects with here (qtap_async/telemetry/allocator.py)."""
    ring_reader: str = ""
    """How the agent would read the ring buffer here (qtap_async/bpf/ringbuf.py)."""


def _objects() -> list[ObjectInfo]:
    from qtap_async.bpf.object import BpfObject

    out = []
    for path in sorted(objects_dir().glob("*.bpf.o")):
        try:
            with BpfObject.open(path) as obj:
                progs = [f"{p.name} ({p.section})" for p in obj.programs.values()]
                out.append(ObjectInfo(path.name, progs, sorted(obj.maps)))
        except QtapError as exc:
            out.append(ObjectInfo(path.name, [], [], str(exc).splitlines()[0]))
    return out


DEFAULT_STATE_DIR = "/var/lib/qtap"


def _cached_libraries(state_dir: str) -> tuple[list[TlsLibrary], dict[str, object]]:
    """TLS files in the agent's analysis cache that still exist unchanged (read only: nothing is created)."""
    import os

    from qtap_async.tls.cache import AnalysisCache

    if not os.path.isdir(os.path.join(state_dir, "tls-analysis")):
        return [], {"state_dir": state_dir, "entries": 0, "note": "no cache yet (the agent creates it)"}
    cache = AnalysisCache(state_dir)
    libs = []
    for e in cache.entries():
        if e.lib is None:
            continue
        try:
            st = os.stat(e.path)
        except OSError:
            continue
        if (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns) == e.key:
            libs.append(e.lib)
    return libs, {"state_dir": state_dir, "entries": len(cache), "tls_files": len(libs)}


def _tls(state_dir: str = DEFAULT_STATE_DIR) -> tuple[list[dict[str, object]], dict[str, object]]:
    """Every TLS library in a running process, in the ld.so cache or in the agent's analysis cache, with its
    probe plan: fast (emulated probe points) or slow (single-stepped) per function."""
    from qtap_async.tls import scan_all
    from qtap_async.tls.manager import system_libraries

    cache_info: dict[str, object] = {}
    try:
        found = dict(scan_all())
        for lib in system_libraries():
            found.setdefault(lib.key, lib)
        cached, cache_info = _cached_libraries(state_dir)
        for lib in cached:
            found.setdefault(lib.key, lib)
    except Exception as exc:  # discovery must never break inspect
        return [{"error": f"TLS discovery failed: {exc}"}], cache_info
    out: list[dict[str, object]] = []
    for lib in sorted(found.values(), key=lambda x: x.path):
        out.append({
            "path": lib.path,
            "kind": lib.kind,
            "version": lib.version,
            "linkage": lib.linkage,
            "pids": len(lib.pids),
            "fast": [p.function for p in lib.plans if p.fast],
            "slow": [p.function for p in lib.plans if not p.fast],
            "attachable": bool(lib.plans) and (lib.kind != "go" or lib.go_offsets is not None),
            "stripped": lib.stripped,
            # Why a recognised library gets no probes (e.g. a stripped BoringSSL whose signatures failed).
            **({"reason": "; ".join(lib.notes)} if not lib.plans and lib.notes else {}),
        })
    return out, cache_info


def gather(state_dir: str = DEFAULT_STATE_DIR) -> InspectReport:
    f = detect()
    caps = capability_report()
    # The uid says little (root in a container may lack CAP_BPF): the capabilities decide.
    reasons = [*caps.problems, *(r for r in explain(f) if not r.startswith("not running as root"))]
    sp = socket_path_report(f)
    if not sp.path:
        reasons.append(sp.reason)
    tls, cache_info = _tls(state_dir)
    from qtap_async.bpf.ringbuf import planned_reader
    from qtap_async.telemetry import allocator
    from qtap_async.tls import java_inspect

    alloc = allocator.planned()
    if alloc.startswith(("INVALID", "NONE")):  # `qtap run` would refuse to start
        reasons.append(f"allocator: {alloc}")
    return InspectReport(f, _objects(), tls, not reasons, reasons, caps, cache_info, java_inspect.describe_all(),
                         sp, alloc, planned_reader())


def render(r: InspectReport) -> str:
    f = r.features
    lines = [
        f"kernel {f.kernel} ({f.arch})  libbpf {f.libbpf}",
    ]
    if r.capabilities is not None:
        held = r.capabilities.held
        lines.append("capabilities: " + "  ".join(f"{name}={'yes' if ok else 'NO'}" for name, ok in held.items()))
        lines.extend(f"  warning: {w}" for w in r.capabilities.warnings)
    lines += [
        f"BTF {'yes' if f.btf else 'NO'}  lockdown={f.lockdown}  lsm={f.lsm or 'unknown'}"
        f"  tracefs={'yes' if f.tracefs else 'no'}  bpffs={'yes' if f.bpffs else 'no'}",
    ]
    for fs in f.filesystems:
        if fs.action:
            lines.append(f"  {fs.name}: was missing, {fs.action} at {fs.path}")
        elif not fs.mounted:
            lines.append(f"  {fs.name}: MISSING: {fs.error}")
    lines.append("hooks:")
    for h in f.hooks:
        state = "ok" if h.loads and h.attaches is not False else "NO"
        detail = "load ok" if h.loads else "load fails, attach not tried"
        if h.attaches is not None:
            detail += ", attach ok" if h.attaches else ", attach fails"
        need = "required" if h.required else "optional"
        err = f"  ({h.error})" if h.error and state != "ok" else ""
        lines.append(f"  {h.hook:<15} {state:<3} {need:<9} {detail}{err}")
    if r.socket_path is not None:
        sp = r.socket_path
        if sp.path:
            lines.append(f"socket I/O path: {sp.path}: {sp.programs} ({sp.reason})")
            lines.append(f"  not covered: {sp.not_covered}")
        else:
            lines.append(f"socket I/O path: NONE: {sp.reason}")
    if r.allocator:
        lines.append(f"allocator (qtap run): {r.allocator}")
    if r.ring_reader:
        lines.append(f"ring buffer reader: {r.ring_reader}")
    lines.append("objects:")
    for o in r.objects:
        if o.error:
            lines.append(f"  {o.name}: ERROR {o.error}")
        else:
            lines.append(f"  {o.name}: {len(o.programs)} programs, maps: {', '.join(o.maps)}")
    if r.tls:
        lines.append("TLS libraries (uprobes attach per file; fast = emulated probe points, slow = single-stepped):")
        for t in r.tls:
            if "error" in t:
                lines.append(f"  {t['error']}")
                continue
            fast = ",".join(t.get("fast") or []) or "-"  # type: ignore[arg-type]
            slow = ",".join(t.get("slow") or []) or "-"  # type: ignore[arg-type]
            state = "attachable" if t.get("attachable") else "NOT attachable"
            lines.append(f"  {t['path']} [{t['kind']} {t['version']}, {t['linkage']}, {t['pids']} processes] "
                         f"{state}; fast: {fast}; slow: {slow}")
            if "reason" in t:
                lines.append(f"    reason: {t['reason']}")
    if r.tls_cache:
        c = r.tls_cache
        note = f"; {c['note']}" if "note" in c else ""
        lines.append(f"TLS analysis cache: {c.get('state_dir')}: {c.get('entries', 0)} files analysed, "
                     f"{c.get('tls_files', 0)} with TLS (kept probed by a running agent){note}")
    if r.jvms:
        from qtap_async.tls import java_inspect

        lines.extend(java_inspect.render(r.jvms))
    if r.capture_possible:
        lines.append("capture: WILL WORK (tracepoints + ring buffer load and attach; uprobes load)")
    else:
        lines.append("capture: WILL NOT WORK:")
        lines.extend(f"  - {why}" for why in r.reasons)
    return "\n".join(lines)
