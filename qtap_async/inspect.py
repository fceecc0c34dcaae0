"""`qtap inspect`: everything a user needs to know, on one screen, about whether capture works here."""

from __future__ import annotations

import msgspec

from qtap_async.bpf.features import KernelFeatures, detect, explain
from qtap_async.bpf.loader import objects_dir
from qtap_async.capabilities import CapabilityReport
from qtap_async.capabilities import report as capability_report
from qtap_async.errors import QtapError


class ObjectInfo(msgspec.Struct, frozen=True):
    name: str
    programs: list[str]
    maps: list[str]
    error: str = ""


class InspectReport(msgspec.Struct, frozen=True):
    features: KernelFeatures
    objects: list[ObjectInfo]
    tls: list[dict[str, object]]
    capture_possible: bool
    reasons: list[str]
    capabilities: CapabilityReport | None = None


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


def _tls() -> list[dict[str, object]]:
    """Every TLS library in a running process (or in the ld.so cache), with its probe plan: fast or slow."""
    from qtap_async.sources.tls_manager import system_libraries
    from qtap_async.tls import scan_all

    try:
        found = dict(scan_all())
        for lib in system_libraries():
            found.setdefault(lib.key, lib)
    except Exception as exc:  # discovery must never break inspect
        return [{"error": f"TLS discovery failed: {exc}"}]
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
        })
    return out


def gather() -> InspectReport:
    f = detect()
    caps = capability_report()
    # The uid says little (root in a container may lack CAP_BPF): the capabilities decide.
    reasons = [*caps.problems, *(r for r in explain(f) if not r.startswith("not running as root"))]
    return InspectReport(f, _objects(), _tls(), not reasons, reasons, caps)


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
        f"BTF {'yes' if f.btf else 'NO'}  lockdown={f.lockdown}  tracefs={'yes' if f.tracefs else 'no'}"
        f"  bpffs={'yes' if f.bpffs else 'no'}",
    ]
    for fs in f.filesystems:
        if fs.action:
            lines.append(f"  {fs.name}: was missing, {fs.action} at {fs.path}")
        elif not fs.mounted:
            lines.append(f"  {fs.name}: MISSING: {fs.error}")
    lines.append("hooks:")
    for h in f.hooks:
        state = "ok" if h.loads and h.attaches is not False else "NO"
        detail = "load ok" if h.loads else "load fails"
        if h.attaches is not None:
            detail += ", attach ok" if h.attaches else ", attach fails"
        need = "required" if h.required else "optional"
        err = f"  ({h.error})" if h.error and state != "ok" else ""
        lines.append(f"  {h.hook:<15} {state:<3} {need:<9} {detail}{err}")
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
    if r.capture_possible:
        lines.append("capture: WILL WORK (tracepoints + ring buffer load and attach; uprobes load)")
    else:
        lines.append("capture: WILL NOT WORK:")
        lines.extend(f"  - {why}" for why in r.reasons)
    return "\n".join(lines)
