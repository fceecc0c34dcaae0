"""Shared test set-up: tests marked `bpf` need root and a BPF-capable kernel; on a machine without
them they FAIL with a clear message (deselect them explicitly with `-m "not bpf"`), never skip."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


@pytest.fixture(autouse=True)
def _require_bpf(request: pytest.FixtureRequest) -> None:
    if request.node.get_closest_marker("bpf") is None:
        return
    if os.geteuid() != 0:
        pytest.fail("this test loads real BPF programs and needs root (deselect with -m 'not bpf')")
    if not Path("/sys/kernel/btf/vmlinux").exists():
        pytest.fail("this test needs kernel BTF (/sys/kernel/btf/vmlinux)")
    if not Path("/sys/kernel/tracing/events").is_dir():
        pytest.fail("tracefs is not mounted at /sys/kernel/tracing (scripts/bootstrap mounts it)")
