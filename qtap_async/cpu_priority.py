"""The agent's CPU priority against the workloads it traces (``qtap run --cpu-priority``).

The BPF programs run in the traced task and cost the same at any priority; what the agent's priority decides
is who waits when the agent's user space (decoding, parsing, writing) and a workload want the same core.
At ``normal`` the agent's batches (a few ms of work for a few hundred records) sit in front of the workload's
requests on a busy core, which is what moves the workload's p99. ``low`` (nice 19) and ``idle``
(SCHED_IDLE) let a woken workload task run first; the ring buffer holds the records meanwhile. The price is
on a host with no idle CPU: the agent then falls behind, the ring fills and the kernel drops records, each
counted in ``qtap_kernel_drop_ringbuf_total``. Both keep a small share of a contended core even then:
``low`` about 1.5 % against one nice-0 task (weight 15 to 1024), ``idle`` a fifth of that (weight 3).

Nice values and scheduling policies are per thread on Linux and inherited by threads created afterwards,
so this runs before the agent starts any, and also sets every thread that exists already.
"""

from __future__ import annotations

import os
from typing import Final, Literal, cast, get_args

from qtap_async.errors import ConfigError

CpuPriority = Literal["normal", "low", "idle"]
CHOICES: Final[tuple[str, ...]] = get_args(CpuPriority)
LOW_NICE: Final = 19  # nice 10 was measured not to move the workload's p99 (bench notes in docs/deploy.md)


def check(value: str, flag: str = "--cpu-priority") -> CpuPriority:
    """The value as a CpuPriority, or ConfigError naming the flag and the choices."""
    if value in CHOICES:
        return cast(CpuPriority, value)
    raise ConfigError(f"{flag} {value}: expected one of {', '.join(CHOICES)}")


def _threads() -> list[int]:
    try:
        return [int(t) for t in os.listdir("/proc/self/task")]
    except OSError:  # no /proc: this thread only
        return [0]


def apply(priority: CpuPriority) -> str:
    """Set this process's threads to ``priority``; returns what was set, for the start-up log line.

    ``normal`` changes nothing (a priority set from outside, by `nice` or a pod's scheduling, is kept).
    Lowering needs no privilege, so failures are unexpected and raised as OSError.
    """
    if priority == "normal":
        return "normal (unchanged)"
    for tid in _threads():
        if priority == "idle":
            os.sched_setscheduler(tid, os.SCHED_IDLE, os.sched_param(0))
        else:
            os.setpriority(os.PRIO_PROCESS, tid, LOW_NICE)
    return "idle (SCHED_IDLE)" if priority == "idle" else f"low (nice {LOW_NICE})"
