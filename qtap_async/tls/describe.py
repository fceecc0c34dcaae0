"""Human-readable and JSON-ready views of discovered TLS libraries, for `qtap inspect`."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import msgspec

from qtap_async.tls.model import FileKey, TlsLibrary


def _libs(libraries: Mapping[FileKey, TlsLibrary] | Iterable[TlsLibrary] | None) -> list[TlsLibrary]:
    if libraries is None:
        from qtap_async.tls.discover import scan_all

        libraries = scan_all()
    if isinstance(libraries, Mapping):
        return sorted(libraries.values(), key=lambda lib: lib.path)
    return sorted(libraries, key=lambda lib: lib.path)


def describe_data(
    libraries: Mapping[FileKey, TlsLibrary] | Iterable[TlsLibrary] | None = None,
) -> list[dict[str, Any]]:
    """Plain dicts/lists (msgspec.to_builtins) of each library; scans every process when None."""
    out: list[dict[str, Any]] = msgspec.to_builtins(_libs(libraries))
    return out


def describe(
    libraries: Mapping[FileKey, TlsLibrary] | Iterable[TlsLibrary] | None = None,
) -> list[dict[str, Any]]:
    """What `qtap inspect` shows, one dict per file: path, kind, version, functions found, which are on
    the fast (emulated) path and which are not, every probe site and each plan's reason. Scans every
    process when ``libraries`` is None."""
    out: list[dict[str, Any]] = []
    for lib in _libs(libraries):
        out.append(
            {
                "path": lib.path,
                "kind": lib.kind,
                "version": lib.version,
                "linkage": lib.linkage,
                "pids": lib.pids,
                "functions": [f.name for f in lib.functions],
                "fast": [p.function for p in lib.plans if p.fast],
                "slow": [p.function for p in lib.plans if not p.fast],
                "sites": [
                    f"{p.function} {s.role} off={s.offset:#x} {s.mnemonic} "
                    f"{'emulated' if s.emulated else 'single-step'}"
                    for p in lib.plans
                    for s in p.sites
                ],
                "reasons": {p.function: p.reason for p in lib.plans},
                **({"notes": lib.notes} if lib.notes else {}),
            }
        )
    return out


def describe_text(libraries: Mapping[FileKey, TlsLibrary] | Iterable[TlsLibrary] | None = None) -> str:
    """Text report: per file its path, kind and version, functions found, and each probe site with
    fast/slow and the reason. Scans every process when ``libraries`` is None."""
    lines: list[str] = []
    for lib in _libs(libraries):
        ver = f" {lib.version}" if lib.version else ""
        extra = " stripped" if lib.stripped else ""
        lines.append(f"{lib.path}  [{lib.kind}{ver}, {lib.linkage}{extra}]  dev:ino={lib.key.dev}:{lib.key.ino}")
        if lib.pids:
            shown = ", ".join(str(p) for p in lib.pids[:8]) + (" ..." if len(lib.pids) > 8 else "")
            lines.append(f"  pids: {shown}")
        lines.append("  functions: " + ", ".join(f"{f.name}@{f.offset:#x}" for f in lib.functions))
        if lib.go_offsets is not None:
            o = lib.go_offsets
            lines.append(
                f"  go {lib.go_abi} ABI; *tls.Conn -> fd offsets ({o.source}): conn data +{o.conn_iface_data}, "
                f"TCPConn.fd +{o.tcpconn_fd}, netFD.pfd +{o.netfd_pfd}, FD.Sysfd +{o.pfd_sysfd}"
            )
        for plan in lib.plans:
            lines.append(f"  {plan.function}: {'FAST' if plan.fast else 'SLOW'}  ({plan.reason})")
            for s in plan.sites:
                regs = ", ".join(f"{k}={v}" for k, v in s.regs.items())
                cost = "emulated" if s.emulated else "single-step"
                sp = f"  sp_delta={s.sp_delta:+d}" if s.sp_delta is not None else ""
                lines.append(
                    f"    {s.role:<9} off={s.offset:#x}  {s.mnemonic} {s.op_str}".rstrip() + f"  [{cost}]  {regs}{sp}"
                )
            for s in plan.candidates:
                lines.append(f"    candidate off={s.offset:#x}  {s.mnemonic} {s.op_str} (unproven, not used)")
            if plan.length:
                lines.append(f"    bytes: {plan.length}")
        for note in lib.notes:
            lines.append(f"  note: {note}")
    if not lines:
        lines.append("no TLS libraries found")
    return "\n".join(lines)
