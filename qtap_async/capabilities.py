"""The Linux capabilities capture depends on, read from /proc/self/status (not the uid).

Being uid 0 says little: a container or `capsh --drop` can leave root without CAP_BPF, and a
non-root binary with file capabilities can load BPF. What matters is the effective set:

- CAP_BPF + CAP_PERFMON load tracing programs and attach tracepoints/uprobes (CAP_SYS_ADMIN covers
  both on kernels before 5.8 and still does today);
- CAP_SYS_PTRACE lets the agent read /proc/PID/root, /proc/PID/exe and /proc/PID/maps of other users'
  processes and of containers, which TLS library discovery needs.
"""

from __future__ import annotations

from pathlib import Path

import msgspec

__all__ = ["CAPABILITIES", "CapabilityReport", "effective_capabilities", "report"]

#: Capability numbers from linux/capability.h (stable kernel ABI).
CAPABILITIES: dict[str, int] = {
    "CAP_SYS_PTRACE": 19,
    "CAP_SYS_ADMIN": 21,
    "CAP_PERFMON": 38,
    "CAP_BPF": 39,
}


class CapabilityReport(msgspec.Struct, frozen=True):
    """Which of the capabilities that matter the process holds, and what follows from it."""

    held: dict[str, bool]
    bpf: bool  # programs can be loaded and attached
    proc_access: bool  # /proc/PID/root of any process is readable
    problems: list[str]  # reasons capture will not work
    warnings: list[str]  # what works only partly


def effective_capabilities(pid: int | str = "self") -> int:
    """The effective capability mask of a process (0 when /proc cannot be read)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("CapEff:"):
                return int(line.split()[1], 16)
    except (OSError, ValueError, IndexError):
        pass
    return 0


def report(mask: int | None = None) -> CapabilityReport:
    """What the effective set (``mask``, default: this process) allows."""
    eff = effective_capabilities() if mask is None else mask
    held = {name: bool(eff >> bit & 1) for name, bit in CAPABILITIES.items()}
    admin = held["CAP_SYS_ADMIN"]
    bpf = admin or (held["CAP_BPF"] and held["CAP_PERFMON"])
    problems: list[str] = []
    warnings: list[str] = []
    if not bpf:
        missing = [c for c in ("CAP_BPF", "CAP_PERFMON") if not held[c]]
        problems.append(
            f"missing {' and '.join(missing)} (or CAP_SYS_ADMIN): BPF programs cannot be loaded or attached; "
            "run as root with full capabilities (docker/podman: --privileged or --cap-add BPF,PERFMON,SYS_ADMIN)"
        )
    if not held["CAP_SYS_PTRACE"]:
        warnings.append(
            "missing CAP_SYS_PTRACE: /proc/PID/root of other users' processes and of containers is not readable, "
            "so TLS libraries there are not found"
        )
    return CapabilityReport(held, bpf, held["CAP_SYS_PTRACE"], problems, warnings)
